"""The atoms a force field evaluates: positions, types, ids and moments in a cell.

:class:`AtomSet` is what :class:`~mmtp_hpc.dynamics.forcefield.ForceField` and its MPI
layout :class:`~mmtp_hpc.dynamics.domain.DomainForceField` need, and nothing more: a single
point (``mpirun mmtp efs``) uses it directly; the MD state
(:class:`~mmtp_hpc.dynamics.state.MDState`) carries the same arrays plus velocities and
masses. Under MPI domain decomposition the arrays hold this rank's atoms only (``comm`` is
set, ``n_global`` counts all ranks' atoms). ``ATOM_FIELDS`` names the per-atom arrays that
travel with an atom when it migrates to another rank, with their widths.

Shapes and units: ``positions`` (N, 3) Å, ``types`` (N,), ``ids`` (N,) global atom numbers,
``magmoms`` (N,) μB, ``cell`` (3, 3) Å (rows are lattice vectors), ``pbc`` (3,).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np


class CellAtoms:
    """What every set of atoms in a cell answers (Configuration, AtomSet, MDState)."""

    @property
    def n_atoms(self) -> int:
        return len(self.positions)

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.cell)))


class RankAtoms(CellAtoms):
    """A set of atoms that may be this rank's part of a domain-decomposed cell (``comm``)."""

    @property
    def distributed(self) -> bool:
        return self.comm is not None and self.comm.Get_size() > 1


@dataclass
class AtomSet(RankAtoms):
    positions: np.ndarray
    types: np.ndarray
    ids: np.ndarray
    magmoms: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    comm: Any = field(default=None, repr=False, compare=False)

    ATOM_FIELDS: ClassVar[dict[str, int]] = {"positions": 3, "types": 1, "ids": 1, "magmoms": 1}

    def __post_init__(self) -> None:
        n = len(self.positions)
        self.positions = np.array(self.positions, dtype=np.float64).reshape(n, 3)
        self.types = np.array(self.types, dtype=np.int64).reshape(n)
        self.ids = np.array(self.ids, dtype=np.int64).reshape(n)
        self.magmoms = np.array(self.magmoms, dtype=np.float64).reshape(n)
        self.cell = np.array(self.cell, dtype=np.float64).reshape(3, 3)
        self.pbc = np.array(self.pbc, dtype=bool).reshape(3)
        self.n_global = n
        """Number of atoms over all ranks (= n_atoms without domain decomposition)."""

    @classmethod
    def from_configuration(cls, cfg: Any, magmoms: np.ndarray | None = None) -> AtomSet:
        """The atoms of a :class:`~mmtp_hpc.system.configuration.Configuration` (ids 0…N−1)."""
        n = len(cfg)
        mag = cfg.magmoms if magmoms is None else magmoms
        return cls(positions=cfg.positions, types=cfg.types, ids=np.arange(n),
                   magmoms=np.zeros(n) if mag is None else mag, cell=cfg.cell, pbc=cfg.pbc)
