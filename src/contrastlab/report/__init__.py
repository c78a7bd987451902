"""Static HTML run reports (curves, embedding map, retrieval grid)."""
from . import report as _report
from .report import *  # noqa: F401,F403  (the names in report.__all__)

__all__ = list(_report.__all__)
