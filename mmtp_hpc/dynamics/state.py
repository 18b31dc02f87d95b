"""The MD state: everything that evolves in time, and the last potential evaluation.

:class:`MDState` holds positions, velocities, moments, the cell, the step counter and
the named variables of thermostat and barostat; together with :class:`Evaluation` (the
forces, virial, ∂E/∂m and site energies at the current positions) it is what a
checkpoint stores for a bit-identical continuation. Random numbers have no state of
their own (counter-based, :mod:`mmtp_hpc.dynamics.rng`): the seed and ``step`` are it.

Shapes and units: ``positions`` (N, 3) Å, *unwrapped* (atoms are never folded back into
the cell, so displacements and diffusion are continuous); ``velocities`` (N, 3) Å/fs;
``masses`` (N,) amu; ``magmoms`` (N,) μB (zeros for a non-magnetic potential);
``cell`` (3, 3) Å, rows are lattice vectors; ``time_fs`` fs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from mmtp_hpc.dynamics.units import GPA_PER_EV_A3, KB_EV_PER_K, MVV2E
from mmtp_hpc.system.atoms import RankAtoms
from mmtp_hpc.system.configuration import Configuration


@dataclass
class Evaluation:
    """The potential at one state: energy (eV), site_energies (N,) eV, forces (N, 3) eV/Å,
    virial (3, 3) eV (PlusStress −∂E/∂ε, positive under compression), magnetic_gradient
    (N,) eV/μB (+∂E/∂m). ``basic``: where asked for (Monte Carlo), the basic moments of every
    centre of the force field's list (``MTPEngine.metropolis_cache`` layout) with the list
    generation they belong to, for the sweep that follows to start from; it hands them over
    (one owner: it changes them in place), with ``entry_moments``: the moments of the list's
    entries (owned atoms and ghosts) the evaluation used."""

    energy: float
    site_energies: np.ndarray
    forces: np.ndarray
    virial: np.ndarray
    magnetic_gradient: np.ndarray
    basic: tuple[int, np.ndarray] | None = None
    entry_moments: np.ndarray | None = None

    def copy(self) -> Evaluation:
        return Evaluation(float(self.energy), self.site_energies.copy(), self.forces.copy(),
                          self.virial.copy(), self.magnetic_gradient.copy())


@dataclass
class MDState(RankAtoms):
    positions: np.ndarray
    velocities: np.ndarray
    masses: np.ndarray
    types: np.ndarray
    ids: np.ndarray
    magmoms: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    species: list[str]
    step: int = 0
    time_fs: float = 0.0
    thermostat: dict[str, np.ndarray] = field(default_factory=dict)
    barostat: dict[str, np.ndarray] = field(default_factory=dict)
    heat: float = 0.0
    """Energy (eV) taken out of the system by thermostat and barostat so far; the conserved
    quantity of the stochastic thermostats is E_pot + E_kin + heat."""
    comm: Any = field(default=None, repr=False, compare=False)
    """Under MPI domain decomposition the arrays hold this rank's atoms only and the sums
    below (kinetic energy, ...) are over all ranks; None = all atoms here."""

    # the per-atom arrays that travel with a migrating atom (see mmtp_hpc.system.atoms.AtomSet,
    # of which this is the MD extension: the same arrays plus velocities and masses)
    ATOM_FIELDS: ClassVar[dict[str, int]] = {"positions": 3, "velocities": 3, "masses": 1, "types": 1,
                                             "ids": 1, "magmoms": 1}

    def __post_init__(self) -> None:
        n = len(self.positions)
        self.positions = np.array(self.positions, dtype=np.float64).reshape(n, 3)
        self.velocities = np.array(self.velocities, dtype=np.float64).reshape(n, 3)
        self.masses = np.array(self.masses, dtype=np.float64).reshape(n)
        self.types = np.array(self.types, dtype=np.int64).reshape(n)
        self.ids = np.array(self.ids, dtype=np.int64).reshape(n)
        self.magmoms = np.array(self.magmoms, dtype=np.float64).reshape(n)
        self.cell = np.array(self.cell, dtype=np.float64).reshape(3, 3)
        self.pbc = np.array(self.pbc, dtype=bool).reshape(3)
        self.species = [str(s) for s in self.species]
        self.n_global = n
        """Number of atoms over all ranks (= n_atoms without domain decomposition)."""

    def global_sum(self, value: np.ndarray | float) -> np.ndarray | float:
        """Σ over ranks of a float or float64 array (itself without domain decomposition)."""
        if not self.distributed:
            return value
        from mmtp_hpc.parallel.comm import allreduce_sum
        out = allreduce_sum(self.comm, np.atleast_1d(np.asarray(value, dtype=np.float64)))
        return float(out[0]) if np.ndim(value) == 0 else out.reshape(np.shape(value))

    def kinetic_energy(self) -> float:
        """E_kin (eV), over all ranks."""
        return float(self.global_sum(
            0.5 * MVV2E * float(np.einsum("i,ij,ij->", self.masses, self.velocities, self.velocities))))

    def kinetic_tensor(self) -> np.ndarray:
        """Σ m v_a v_b (eV), the kinetic part of the pressure tensor times V (over all ranks)."""
        return self.global_sum(MVV2E * np.einsum("i,ia,ib->ab", self.masses, self.velocities, self.velocities))

    def temperature(self, dof: int) -> float:
        """Kinetic temperature (K) for ``dof`` degrees of freedom."""
        return 2.0 * self.kinetic_energy() / (max(dof, 1) * KB_EV_PER_K)

    def pressure_tensor(self, virial: np.ndarray) -> np.ndarray:
        """Instantaneous pressure tensor (GPa, positive under compression): (Σ m v v + virial)/V."""
        return (self.kinetic_tensor() + virial) / self.volume * GPA_PER_EV_A3

    def configuration(self, evaluation: Evaluation | None = None) -> Configuration:
        """A :class:`Configuration` of the current state (labels from ``evaluation`` if given)."""
        cfg = Configuration(cell=self.cell.copy(), positions=self.positions.copy(), types=self.types.copy(),
                            pbc=self.pbc.copy(), magmoms=self.magmoms.copy(), ids=self.ids.copy())
        if evaluation is not None:
            cfg.energy = evaluation.energy
            cfg.forces = evaluation.forces.copy()
            cfg.site_energies = evaluation.site_energies.copy()
            cfg.virial = evaluation.virial.copy() if self.pbc.all() else None
            cfg.magnetic_gradient = evaluation.magnetic_gradient.copy()
        return cfg

    def copy(self) -> MDState:
        out = MDState(self.positions.copy(), self.velocities.copy(), self.masses.copy(), self.types.copy(),
                       self.ids.copy(), self.magmoms.copy(), self.cell.copy(), self.pbc.copy(),
                       list(self.species), self.step, self.time_fs,
                       {k: np.array(v, copy=True) for k, v in self.thermostat.items()},
                       {k: np.array(v, copy=True) for k, v in self.barostat.items()}, self.heat, self.comm)
        out.n_global = self.n_global
        return out
