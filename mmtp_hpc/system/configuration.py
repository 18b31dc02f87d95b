"""The `Configuration`: one atomic structure with optional moments and labels.

Shapes and units (CONVENTIONS item 5):

- ``cell`` (3, 3) Å, rows are lattice vectors; ``pbc`` (3,) bool. A direction
  that is not periodic keeps a cell row (used only for direct coordinates).
- ``positions`` (N, 3) Å Cartesian; ``types`` (N,) int, 0-based potential types;
  ``ids`` (N,) int as read from a file (1-based in MLIP-3 files).
- ``magmoms`` (N,) μB collinear moments or ``None`` (non-magnetic data).

Labels (all optional, ``None`` when absent):

- ``energy`` eV; ``forces`` (N, 3) eV/Å; ``site_energies`` (N,) eV;
- ``virial`` (3, 3) eV, MLIP-3's *PlusStress* ``S_ab = −∂E/∂ε_ab`` (positive
  under compression). ASE's stress in GPa is a different quantity, see
  :func:`virial_to_stress_gpa`; the two are never mixed.
- ``magnetic_gradient`` (N,) eV/μB, **+∂E/∂m** (MLIP-3's ``en_der_mx``).
- ``nbh_grades`` (N,) extrapolation grades per neighbourhood; ``grade``
  (configuration grade) lives in ``features['MV_grade']`` as MLIP-3 writes it.
- ``features``: ordered ``{key: value-string}`` kept verbatim from ``Feature``
  lines (a key may occur once; repeated keys keep a list of values).
- ``ghost`` (N,) bool or ``None``: MLIP-3's ``ghost`` column (atoms that are
  only neighbours, e.g. in clusters cut out of a large configuration).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from mmtp_hpc.system.atoms import CellAtoms

EV_PER_A3_TO_GPA = 160.21766208


def virial_to_stress_gpa(virial: np.ndarray, volume: float) -> np.ndarray:
    """ASE-sign stress (GPa, negative under compression) from a PlusStress virial (eV)."""
    return -np.asarray(virial) / volume * EV_PER_A3_TO_GPA


def stress_gpa_to_virial(stress: np.ndarray, volume: float) -> np.ndarray:
    """Inverse of :func:`virial_to_stress_gpa`."""
    return -np.asarray(stress) * volume / EV_PER_A3_TO_GPA


@dataclass
class Configuration(CellAtoms):
    cell: np.ndarray
    positions: np.ndarray
    types: np.ndarray
    pbc: np.ndarray = field(default_factory=lambda: np.ones(3, dtype=bool))
    magmoms: np.ndarray | None = None
    ids: np.ndarray | None = None
    energy: float | None = None
    forces: np.ndarray | None = None
    virial: np.ndarray | None = None
    site_energies: np.ndarray | None = None
    magnetic_gradient: np.ndarray | None = None
    nbh_grades: np.ndarray | None = None
    features: dict = field(default_factory=dict)
    ghost: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.cell = np.array(self.cell, dtype=np.float64).reshape(3, 3)
        self.positions = np.array(self.positions, dtype=np.float64).reshape(-1, 3)
        n = len(self.positions)
        self.types = np.array(self.types, dtype=np.int64).reshape(n)
        self.pbc = np.array(self.pbc, dtype=bool).reshape(3)
        if self.ids is None:
            self.ids = np.arange(1, n + 1, dtype=np.int64)
        else:
            self.ids = np.array(self.ids, dtype=np.int64).reshape(n)
        if self.magmoms is not None:
            self.magmoms = np.array(self.magmoms, dtype=np.float64).reshape(n)
        for name, shape in (("forces", (n, 3)), ("site_energies", (n,)),
                            ("magnetic_gradient", (n,)), ("nbh_grades", (n,)),
                            ("virial", (3, 3))):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, np.array(value, dtype=np.float64).reshape(shape))
        if self.energy is not None:
            self.energy = float(self.energy)
        if self.ghost is not None:
            self.ghost = np.array(self.ghost, dtype=bool).reshape(n)

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self.positions)

    @property
    def is_magnetic(self) -> bool:
        return self.magmoms is not None

    @property
    def stress_gpa(self) -> np.ndarray | None:
        """ASE-sign stress in GPa from the virial label, or None."""
        if self.virial is None:
            return None
        return virial_to_stress_gpa(self.virial, self.volume)

    def copy(self) -> "Configuration":
        return copy.deepcopy(self)

    def clear_labels(self) -> None:
        """Drop computed labels (energy, forces, virial, site energies, ∂E/∂m, grades)."""
        self.energy = None
        self.forces = None
        self.virial = None
        self.site_energies = None
        self.magnetic_gradient = None
        self.nbh_grades = None

    def labels_present(self) -> list[str]:
        names = []
        for name in ("energy", "forces", "virial", "site_energies", "magnetic_gradient",
                     "nbh_grades"):
            if getattr(self, name) is not None:
                names.append(name)
        if self.magmoms is not None:
            names.insert(0, "magmoms")
        return names

    def __eq__(self, other: object) -> bool:  # exact comparison, used by round-trip tests
        if not isinstance(other, Configuration):
            return NotImplemented
        for name in ("cell", "positions", "types", "pbc", "ids", "magmoms", "forces",
                     "virial", "site_energies", "magnetic_gradient", "nbh_grades", "ghost"):
            a, b = getattr(self, name), getattr(other, name)
            if (a is None) != (b is None):
                return False
            if a is not None and not np.array_equal(a, b):
                return False
        return self.energy == other.energy and self.features == other.features
