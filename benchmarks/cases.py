"""The seed's two data sets, shared as NumPy arrays by every library in a benchmark."""

import numpy as np

CASES = ("best", "linear")


def best_data(seed=0):
    """Two groups of 20: group 1 ~ Normal(0.3, 1), group 2 ~ Normal(0, 1)."""
    rng = np.random.default_rng(seed)
    return {"y1": rng.standard_normal(20) + 0.3, "y2": rng.standard_normal(20)}


def linear_data(seed=0):
    """N = 200, X = [1, U(0, 1), U(0, 1)], y = X @ [2, 1, -3] + Normal(0, 1)."""
    rng = np.random.default_rng(seed)
    X = np.ones((200, 3))
    X[:, 1:] = rng.random((200, 2))
    return {"X": X, "y": X @ np.array([2.0, 1.0, -3.0]) + rng.standard_normal(200)}


def data(case, seed=0):
    return {"best": best_data, "linear": linear_data}[case](seed)
