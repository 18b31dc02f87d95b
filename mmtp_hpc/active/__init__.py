"""Active learning: extrapolation grades from a potential's active set (MaxVol), selection."""

from mmtp_hpc.active.grades import ActiveSet, GradeResult

__all__ = ["ActiveSet", "GradeResult"]
