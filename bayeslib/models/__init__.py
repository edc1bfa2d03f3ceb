"""The seed's models, each with a simulator that draws data from known true parameters."""

from .linear import LinearRegression
from .two_groups import Best, BestStudentT

__all__ = ["Best", "BestStudentT", "LinearRegression"]
