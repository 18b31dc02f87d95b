"""The compiled MTP kernels, in the variant that suits this CPU.

Two builds of the same Cython source exist on x86-64: ``_kernels`` (portable, SSE2) and
``_kernels_avx2`` (AVX2 + FMA: the column-blocked products run four doubles wide with fused
multiply-adds, ≈ 1.4× faster). The AVX2 build is used when the CPU has AVX2 and FMA, so one
installation works on login and compute nodes of different generations. The environment
variable ``MMTP_KERNELS`` overrides the choice: ``auto`` (default), ``portable`` or ``avx2``.
Results of the two variants agree to rounding (≈ 1e-15 relative); within one run every rank
and every thread of a node uses the same variant.
"""

from __future__ import annotations

import os
from types import ModuleType

from mmtp_hpc.errors import InputError
from mmtp_hpc.potentials.mtp import _kernels as _portable

CHOICES = ("auto", "portable", "avx2")


def _avx2_module() -> ModuleType | None:
    try:
        from mmtp_hpc.potentials.mtp import _kernels_avx2
    except ImportError:
        return None
    return _kernels_avx2


def select(choice: str | None = None) -> tuple[ModuleType, str]:
    """(module, name) for ``choice`` (default: ``MMTP_KERNELS`` or ``auto``)."""
    raw = os.environ.get("MMTP_KERNELS", "auto") if choice is None else choice
    choice = raw.strip().lower()
    if choice not in CHOICES:
        raise InputError(f"{raw!r} is not a kernel variant; expected one of {', '.join(CHOICES)}",
                         field="environment variable MMTP_KERNELS")
    if choice == "portable":
        return _portable, "portable"
    avx2 = _avx2_module()
    supported = _portable.cpu_has_avx2_fma()
    if choice == "avx2":
        if avx2 is None:
            raise InputError("avx2 requested, but this installation has no AVX2 build "
                             "(it is built on x86-64 only; reinstall to build it)",
                             field="environment variable MMTP_KERNELS")
        if not supported:
            raise InputError("avx2 requested, but this CPU does not support AVX2 and FMA",
                             field="environment variable MMTP_KERNELS")
        return avx2, "avx2"
    if avx2 is not None and supported:
        return avx2, "avx2"
    return _portable, "portable"


kernels, variant = select()
