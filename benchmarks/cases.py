"""The data sets shared as NumPy arrays by every library in a benchmark: the seed's two, a
data-heavy regression (issue 13), and two hard posteriors (strong correlations, scales far
apart) from issue 17."""

import numpy as np

CASES = ("best", "linear", "regression")
HARD_CASES = ("kidiq", "trend")


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


def regression_data(seed=0, rows=5000, predictors=24, correlation=0.9):
    """The seed's linear model on a data set of real volume: N = 5000 rows of 24 predictors
    correlated 0.9 with each other (one common factor), y = X @ beta + Normal(0, 1) with
    beta ~ Normal(0, 1): each gradient multiplies a 5000 x 24 matrix, and the coefficients
    correlate a posteriori."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal((rows, 1))
    noise = rng.standard_normal((rows, predictors))
    X = np.sqrt(correlation) * common + np.sqrt(1.0 - correlation) * noise
    beta = rng.standard_normal(predictors)
    return {"X": X, "y": X @ beta + rng.standard_normal(rows)}


def kidiq_data(seed=0):
    """Shaped like the kidiq data: N = 434, mom_hs ~ Bernoulli(0.79), mom_iq ~ Normal(100, 15),
    X = [1, mom_hs, mom_iq, mom_hs * mom_iq] (uncentred, with the interaction),
    kid_score = X @ [-11.5, 51.3, 0.97, -0.48] + Normal(0, 18): posterior sds of the
    coefficients from 0.12 to 14, correlations down to -0.99."""
    rng = np.random.default_rng(seed)
    n = 434
    mom_hs = (rng.random(n) < 0.79).astype(np.float64)
    mom_iq = 100.0 + 15.0 * rng.standard_normal(n)
    X = np.column_stack([np.ones(n), mom_hs, mom_iq, mom_hs * mom_iq])
    return {"X": X, "y": X @ np.array([-11.5, 51.3, 0.97, -0.48]) + 18.0 * rng.standard_normal(n)}


def trend_data(seed=0):
    """A temperature's linear trend over the calendar years 1952-2013 (uncentred):
    y = 9 + 0.02 * (year - 1982.5) + Normal(0, 1): the intercept and slope correlate at
    -0.99996, with posterior sds near 13 and 0.006."""
    rng = np.random.default_rng(seed)
    year = np.arange(1952, 2014, dtype=np.float64)
    return {"year": year, "y": 9.0 + 0.02 * (year - 1982.5) + rng.standard_normal(year.size)}


def data(case, seed=0):
    fns = {
        "best": best_data,
        "linear": linear_data,
        "regression": regression_data,
        "kidiq": kidiq_data,
        "trend": trend_data,
    }
    return fns[case](seed)
