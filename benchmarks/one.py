"""Run one contender once, in this fresh process, and write its draws and timings.

`python -m benchmarks.one RUNNER CASE CHAINS WARMUP DRAWS SEED DEVICE THREADS OUT.npz`
"""

import json
import os
import resource
import sys
import time


def main(argv):
    name, case, chains, warmup, draws, seed, device, threads, out = argv
    threads = int(threads)
    # Every library gets the same number of cores.
    os.environ["XLA_FLAGS"] = (
        f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'} "
        f"intra_op_parallelism_threads={threads}"
    )
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from .runners import RUNNERS

    started = time.perf_counter()
    draws_ = RUNNERS[name](case, int(chains), int(warmup), int(draws), int(seed), device)
    wall = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    np.savez(out, **draws_)
    with open(out + ".json", "w") as f:
        json.dump({"wall": wall, "peak_mib": peak_mib}, f)


if __name__ == "__main__":
    main(sys.argv[1:])
