"""Active learning: MaxVol selection, the oracles that label (analytic, ASE, DFT commands), the
learning loop and the validation of a potential against direct DFT. Extrapolation grades live
beside the potential (:mod:`mmtp_hpc.potentials.mtp.grades`) and are re-exported here."""

from mmtp_hpc.potentials.mtp.grades import ActiveSet, GradeResult

__all__ = ["ActiveSet", "GradeResult"]
