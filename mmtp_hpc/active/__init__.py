"""Active learning: extrapolation grades from a potential's active set (MaxVol), selection."""

from mmtp_hpc.potentials.mtp.grades import ActiveSet, GradeResult

__all__ = ["ActiveSet", "GradeResult"]
