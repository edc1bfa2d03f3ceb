"""Benchmarks: bayeslib's samplers against the libraries users would otherwise use.

`python -m benchmarks --quick` (or `--full`); see `python -m benchmarks --help`.
"""
