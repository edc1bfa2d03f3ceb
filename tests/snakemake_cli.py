"""Run this repository's Snakefile from tests as a user does: through Snakemake's CLI."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def snakemake_command(workdir, config, *args):
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(config),
        "--cores",
        "2",
        *args,
    ]


def run_snakemake(workdir, config, *args, env=None, timeout=600):
    """(returncode, stdout + stderr) of snakemake on `workdir` with `config`."""
    done = subprocess.run(
        snakemake_command(workdir, config, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    return done.returncode, done.stdout + done.stderr
