"""Compatibility: the extrapolation grades live beside the potential, in
:mod:`mmtp_hpc.potentials.mtp.grades` (MD computes grades without importing ``active/``)."""

from mmtp_hpc.potentials.mtp.grades import ActiveSet, GradeResult

__all__ = ["ActiveSet", "GradeResult"]
