"""Test-wide settings."""

import os

import matplotlib
import pytest
import torch

from bayeslib import compiling

# Each pytest-xdist worker takes one core: the models here are small, and intra-op threads
# that wait on a busy core make a 200 x 3 matmul take milliseconds instead of microseconds.
torch.set_num_threads(1)
matplotlib.use("Agg")


@pytest.fixture(autouse=True, scope="session")
def compiled_cache(tmp_path_factory):
    """Compiled libraries (`bayeslib.compiling`) go to one directory for the whole session,
    shared by pytest-xdist's workers, not to the user's cache."""
    root = tmp_path_factory.getbasetemp()
    shared = (root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root) / "compiled-cache"
    os.environ[compiling.CACHE_ENV] = str(shared)
    return shared
