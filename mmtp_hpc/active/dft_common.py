"""Checks shared by the DFT input writers (VASP, ABINIT)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mmtp_hpc.errors import InputError
from mmtp_hpc.system.configuration import Configuration


class SCFNotConverged(InputError):
    """The DFT code stopped its electronic SCF cycle before its tolerance: the numbers are not a
    ground state. The command oracle retries such runs with the ``[oracle] retry`` settings."""


class DFTCodeError(InputError):
    """The DFT code reported an error of its own (named in the message, e.g. ABINIT's
    ``--- !ERROR`` block); retrying with the same input would fail the same way."""


def constrained_inputs(cfg: Configuration, species: Sequence[str], target_moments: np.ndarray | None,
                       code: str) -> tuple[np.ndarray, list[int], list[str]]:
    """(target moments (n,), types present in ascending order, their chemical symbols) for a
    constrained-moment calculation of ``cfg`` by ``code``; clear errors for a non-periodic cell,
    missing moments or a type without a symbol."""
    if not cfg.pbc.all():
        raise InputError(f"{code} needs a periodic cell in all three directions", field="pbc")
    m = cfg.magmoms if target_moments is None else np.asarray(target_moments, dtype=float)
    if m is None:
        raise InputError("the configuration has no target magnetic moments", field="magmoms")
    m = np.asarray(m, dtype=float).reshape(len(cfg))
    present = sorted(set(cfg.types.tolist()))
    if present and present[-1] >= len(species):
        raise InputError(f"atom type {present[-1]} has no chemical symbol (species {list(species)})",
                         field="species")
    return m, present, [species[t] for t in present]
