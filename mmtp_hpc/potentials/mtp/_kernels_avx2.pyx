# cython: language_level=3
"""The MTP kernels of :mod:`mmtp_hpc.potentials.mtp._kernels`, compiled with AVX2 + FMA
(x86-64 only; :mod:`mmtp_hpc.potentials.mtp.kernels` uses it where the CPU has both)."""

include "_kernels_body.pxi"
