"""Test-wide settings."""

import matplotlib
import torch

# Each pytest-xdist worker takes one core: the models here are small, and intra-op threads
# that wait on a busy core make a 200 x 3 matmul take milliseconds instead of microseconds.
torch.set_num_threads(1)
matplotlib.use("Agg")
