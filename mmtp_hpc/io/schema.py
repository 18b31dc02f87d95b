"""The HDF5 schema: every group, dataset and attribute name, the schema version and units.

No other module spells an HDF5 name as a string literal; they import it from here,
so a rename or a version bump happens in one place (CONVENTIONS item 6).

Every file written by mmtp_hpc carries, on its root group::

    mmtp_schema    = "mmtp_hpc"         (marks the file as ours)
    schema_version = SCHEMA_VERSION     (int; readers refuse any other)
    kind           = "trainingset" | "potential" | ...
    created_by     = "mmtp_hpc <version>"

and every dataset with a physical dimension carries a ``units`` attribute.

Layout of a training set (kind ``trainingset``), ragged storage::

    /                       attrs: species_names (JSON list or "null"), settings (JSON)
    /configurations/        one row per configuration, appendable along axis 0
        n_atoms (C,) int64      atom_offset (C,) int64  -> rows of /atoms
        cell (C,3,3) Å          pbc (C,3) bool
        energy (C,) eV          virial (C,3,3) eV (PlusStress, positive under compression)
        features (C,) str       JSON object {key: value-string | [value-strings]}
        provenance (C,) str     free text: where the configuration came from
        has_<label> (C,) bool   presence mask for each optional label below
    /atoms/                 concatenated per-atom arrays, appendable along axis 0
        positions (N,3) Å   types (N,) int64   ids (N,) int64
        magmoms (N,) μB     forces (N,3) eV/Å  site_energies (N,) eV
        magnetic_gradient (N,) eV/μB (+∂E/∂m)  nbh_grades (N,) 1   ghost (N,) bool
    Absent float labels are stored as NaN and masked off by ``has_<label>``.

Layout of a potential (kind ``potential``)::

    /potential/             attrs: scalar fields of MTPPotential (``version`` is stored
                            as ``mlip_version``), species_names / extra as JSON
        alpha_index_basic, alpha_index_times, alpha_moment_mapping (int64)
        radial_coeffs, species_coeffs, moment_coeffs, mag_min, mag_max (float64, optional)
        active_set (uint8, optional)  attrs: active_set_type ("bytes" or module.Class)
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from mmtp_hpc import __version__
from mmtp_hpc.errors import InputError

SCHEMA_VERSION = 1

# ----------------------------------------------------------------- root header
SCHEMA_TAG_ATTR = "mmtp_schema"
SCHEMA_TAG = "mmtp_hpc"
SCHEMA_VERSION_ATTR = "schema_version"
KIND_ATTR = "kind"
CREATED_BY_ATTR = "created_by"
UNITS_ATTR = "units"
SETTINGS_ATTR = "settings"

KIND_TRAININGSET = "trainingset"
KIND_POTENTIAL = "potential"

# ----------------------------------------------------------------- units
UNITS: dict[str, str] = {
    "cell": "Å",
    "positions": "Å",
    "energy": "eV",
    "virial": "eV",
    "forces": "eV/Å",
    "site_energies": "eV",
    "magmoms": "μB",
    "magnetic_gradient": "eV/μB",
    "nbh_grades": "1",
    "min_dist": "Å",
    "max_dist": "Å",
    "mag_min": "μB",
    "mag_max": "μB",
    "radial_coeffs": "eV",
    "species_coeffs": "eV",
    "moment_coeffs": "eV",
}


class TrainingSet:
    """Names in a training-set file (kind ``trainingset``)."""

    CONFIGS = "configurations"
    ATOMS = "atoms"
    SPECIES_ATTR = "species_names"

    # per configuration
    N_ATOMS = "n_atoms"
    ATOM_OFFSET = "atom_offset"
    CELL = "cell"
    PBC = "pbc"
    ENERGY = "energy"
    VIRIAL = "virial"
    FEATURES = "features"
    PROVENANCE = "provenance"

    # per atom
    POSITIONS = "positions"
    TYPES = "types"
    IDS = "ids"
    MAGMOMS = "magmoms"
    FORCES = "forces"
    SITE_ENERGIES = "site_energies"
    MAGNETIC_GRADIENT = "magnetic_gradient"
    NBH_GRADES = "nbh_grades"
    GHOST = "ghost"

    # optional labels: (name, per_atom, trailing shape); each has a has_<name> mask
    OPTIONAL_LABELS: tuple[tuple[str, bool, tuple[int, ...]], ...] = (
        ("energy", False, ()),
        ("virial", False, (3, 3)),
        ("magmoms", True, ()),
        ("forces", True, (3,)),
        ("site_energies", True, ()),
        ("magnetic_gradient", True, ()),
        ("nbh_grades", True, ()),
        ("ghost", True, ()),
    )

    @staticmethod
    def mask(label: str) -> str:
        """Name of the presence mask of an optional label."""
        return f"has_{label}"


class Potential:
    """Names in a potential file (kind ``potential``)."""

    GROUP = "potential"
    # MTPPotential fields stored as attributes; ``version`` would be ambiguous next to
    # schema_version, so it is renamed on disk.
    SCALAR_ATTRS = ("species_count", "min_dist", "max_dist", "radial_basis_size",
                    "radial_funcs_count", "alpha_moments_count", "scaling", "magnetic",
                    "mag_basis_size", "symmetric", "potential_name", "potential_tag",
                    "radial_basis_type", "magnetic_basis_type")
    MLIP_VERSION_ATTR = "mlip_version"
    SPECIES_NAMES_ATTR = "species_names"   # JSON list or "null"
    EXTRA_ATTR = "extra"                   # JSON object
    INT_ARRAYS = ("alpha_index_basic", "alpha_index_times", "alpha_moment_mapping")
    FLOAT_ARRAYS = ("radial_coeffs", "species_coeffs", "moment_coeffs", "mag_min", "mag_max")
    ACTIVE_SET = "active_set"
    ACTIVE_SET_TYPE_ATTR = "active_set_type"
    ACTIVE_SET_RAW = "bytes"               # the active set was given as raw bytes

    @staticmethod
    def units_attr(name: str) -> str:
        """Attribute holding the units of the scalar attribute ``name`` (e.g. min_dist)."""
        return f"{name}_{UNITS_ATTR}"


# ----------------------------------------------------------------- helpers
def write_header(root: Any, kind: str, settings: dict | None = None, version: int = SCHEMA_VERSION) -> None:
    """Stamp the root group of an open h5py file with the schema header."""
    root.attrs[SCHEMA_TAG_ATTR] = SCHEMA_TAG
    root.attrs[SCHEMA_VERSION_ATTR] = int(version)
    root.attrs[KIND_ATTR] = kind
    root.attrs[CREATED_BY_ATTR] = f"mmtp_hpc {__version__}"
    if settings is not None:
        root.attrs[SETTINGS_ATTR] = json.dumps(settings, default=_json_default)


def check_header(root: Any, kind: str, path: str, versions: tuple[int, ...] = (SCHEMA_VERSION,)) -> int:
    """Raise InputError unless ``root`` is an mmtp_hpc file of ``kind`` and one of the schema
    ``versions``; return the file's version."""
    tag = _attr_str(root.attrs.get(SCHEMA_TAG_ATTR))
    if tag != SCHEMA_TAG:
        raise InputError(f"not an mmtp_hpc HDF5 file (root attribute {SCHEMA_TAG_ATTR!r} "
                         f"is {tag!r}, expected {SCHEMA_TAG!r})", path=path)
    version = root.attrs.get(SCHEMA_VERSION_ATTR)
    if version is None or int(version) not in versions:
        raise InputError(f"schema version {version} is not supported by this mmtp_hpc "
                         f"(it reads version {', '.join(map(str, versions))})", path=path,
                         field=SCHEMA_VERSION_ATTR)
    found = _attr_str(root.attrs.get(KIND_ATTR))
    if found != kind:
        raise InputError(f"file holds a {found!r}, expected a {kind!r}", path=path, field=KIND_ATTR)
    return int(version)


def set_units(dataset: Any, name: str) -> None:
    """Attach the ``units`` attribute for a quantity listed in :data:`UNITS`."""
    if name in UNITS:
        dataset.attrs[UNITS_ATTR] = UNITS[name]


def read_settings(root: Any) -> dict:
    raw = root.attrs.get(SETTINGS_ATTR)
    return {} if raw is None else json.loads(_attr_str(raw))


def _attr_str(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode()
    return None if value is None else str(value)


def _json_default(obj: Any) -> Any:
    # Settings may hold NumPy scalars/arrays or paths; store what they print as.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


# =================================================================== MD: trajectory and checkpoint
# (owned by the MD driver, mmtp_hpc.dynamics; readers: mmtp_hpc.io.trajectory, .checkpoint)

KIND_TRAJECTORY = "trajectory"
KIND_CHECKPOINT = "checkpoint"

MD_UNITS: dict[str, str] = {
    "velocities": "Å/fs",
    "masses": "amu",
    "time": "fs",
    "step": "1",
    "potential_energy": "eV",
    "kinetic_energy": "eV",
    "conserved_energy": "eV",
    "temperature": "K",
    "pressure": "GPa",
    "volume": "Å³",
    "moment_mean": "μB",
    "moment_abs_mean": "μB",
    "magnetization": "μB",
    "grade": "1",
    "heat": "eV",
    "build_positions": "Å",
    "build_cell": "Å",
}
UNITS.update(MD_UNITS)


class Trajectory:
    """Names in a trajectory file (kind ``trajectory``), appendable along the frame axis::

        /                   attrs: header, settings (JSON), species_names (JSON), n_atoms
        types (N,) int64    ids (N,) int64    masses (N,) amu    pbc (3,) bool
        /frames/            one row per frame, maxshape (None, …), chunked, gzip
            step (F,) int64             time (F,) fs              cell (F,3,3) Å
            potential_energy, kinetic_energy, conserved_energy (F,) eV
            temperature (F,) K          pressure (F,) GPa         volume (F,) Å³
            moment_mean, moment_abs_mean (F,) μB   magnetization (F,) μB (|Σ m_i|)
            grade (F,) 1 (last computed extrapolation grade, NaN if none yet)
            per atom, as chosen in [output] store:
            positions (F,N,3) Å   velocities (F,N,3) Å/fs   magmoms (F,N) μB
            forces (F,N,3) eV/Å   site_energies (F,N) eV    magnetic_gradient (F,N) eV/μB
            nbh_grades (F,N) 1
    """

    SPECIES_ATTR = "species_names"
    N_ATOMS_ATTR = "n_atoms"
    TYPES = "types"
    IDS = "ids"
    MASSES = "masses"
    PBC = "pbc"
    FRAMES = "frames"
    STEP = "step"
    TIME = "time"
    CELL = "cell"
    SCALARS = ("potential_energy", "kinetic_energy", "conserved_energy", "temperature", "pressure",
               "volume", "moment_mean", "moment_abs_mean", "magnetization", "grade")
    # per-atom quantities: name -> trailing shape after (frames, atoms)
    PER_ATOM: dict[str, tuple[int, ...]] = {
        "positions": (3,), "velocities": (3,), "magmoms": (), "forces": (3,),
        "site_energies": (), "magnetic_gradient": (), "nbh_grades": (),
    }


class Checkpoint:
    """Names in a checkpoint (kind ``checkpoint``); everything for a bit-identical restart::

        /                   attrs: header, settings (JSON), step, time (fs), seed, heat (eV),
                            species_names (JSON), potential (path), potential_sha256,
                            stop_reason ("" unless the run stopped early)
        /state/             positions (N,3) Å unwrapped, velocities (N,3) Å/fs, masses (N,) amu,
                            types, ids (N,) int64, magmoms (N,) μB, cell (3,3) Å, pbc (3,) bool
        /evaluation/        energy eV (attr), site_energies (N,), forces (N,3), virial (3,3) eV,
                            magnetic_gradient (N,) — the potential at the stored state
        /neighbors/         build_positions (N,3) Å, build_cell (3,3) Å: the neighbour list's
                            build inputs, so the restart rebuilds the identical list
        /thermostat/, /barostat/   one dataset per named variable (e.g. nhc_xi, nhc_v)
        /observers/         attrs: counters of the observers (frames written, saved configurations, …)
    """

    STEP_ATTR = "step"
    TIME_ATTR = "time"
    SEED_ATTR = "seed"
    HEAT_ATTR = "heat"
    SPECIES_ATTR = "species_names"
    POTENTIAL_ATTR = "potential"
    POTENTIAL_SHA_ATTR = "potential_sha256"
    STOP_REASON_ATTR = "stop_reason"
    STATE = "state"
    STATE_ARRAYS = ("positions", "velocities", "masses", "types", "ids", "magmoms", "cell", "pbc")
    EVALUATION = "evaluation"
    ENERGY_ATTR = "energy"
    EVALUATION_ARRAYS = ("site_energies", "forces", "virial", "magnetic_gradient")
    NEIGHBORS = "neighbors"
    BUILD_POSITIONS = "build_positions"
    BUILD_CELL = "build_cell"
    THERMOSTAT = "thermostat"
    BAROSTAT = "barostat"
    OBSERVERS = "observers"


# =================================================================== MD trajectory, H5MD 1.1 layout
# Trajectories are written in the H5MD 1.1 layout (https://www.nongnu.org/h5md/h5md.html),
# with our root header (kind "trajectory", schema_version TRAJECTORY_SCHEMA_VERSION) on top;
# files of the first layout (Trajectory above, schema_version 1) are still read and
# ``mmtp convert`` turns them into this one.

TRAJECTORY_SCHEMA_VERSION = 2
"""schema_version of H5MD trajectories; version 1 is the first (``/frames``) layout."""
LEGACY_TRAJECTORY_SCHEMA_VERSION = 1


class H5MD:
    """Names in an H5MD 1.1 trajectory (kind ``trajectory``, schema_version 2)::

        /                       attrs: our header, settings (JSON), species_names (JSON), n_atoms
        /h5md                   attrs: version = [1, 1]
            author              attrs: name
            creator             attrs: name = "mmtp_hpc", version
        /particles/all/         the one particle group (N atoms, F frames)
            box                 attrs: dimension = 3, boundary = ["periodic" | "none"] × 3
                edges/          time-dependent element {value (F,3,3) Å, step, time}: rows =
                                cell vectors (H5MD's triclinic form). Always time-dependent,
                                also at fixed cell: MDAnalysis (2.11) reads no other form
            species (N,) int64  potential type (0-based); attr species_names (JSON)
            id (N,) int64       atom id          mass (N,) amu
            position/           {value (F,N,3) Å (unwrapped), step (F,), time (F,) fs}
            velocity/           {value (F,N,3) Å/fs, ...}
            force/              {value (F,N,3) eV/Å, ...}
            magnetic_moment/    {value (F,N) μB, ...}
            site_energy/        {value (F,N) eV, ...}
            magnetic_gradient/  {value (F,N) eV/μB (+∂E/∂m), ...}
            nbh_grade/          {value (F,N) 1, ...}
        /observables/<name>/    {value (F,), step, time}: potential_energy, kinetic_energy,
                                conserved_energy (eV), temperature (K), pressure (GPa), volume
                                (Å³), moment_mean, moment_abs_mean, magnetization (μB), grade (1)

    Every ``step`` (int64) and ``time`` (float64, fs) of the file is one pair of datasets
    (``particles/all/position/step|time`` when positions are stored, else the first
    element's), hard-linked into every other element: all elements are sampled together.
    Units are H5MD ``unit`` attributes on ``value`` (and on ``time``, fixed datasets),
    spelled the H5MD way (ASCII, powers as ``-1``): :data:`H5MD_UNITS`.
    """

    VERSION = (1, 1)
    ROOT = "h5md"
    VERSION_ATTR = "version"
    AUTHOR = "author"
    CREATOR = "creator"
    NAME_ATTR = "name"
    CREATOR_NAME = "mmtp_hpc"
    CREATOR_VERSION_ATTR = "version"

    PARTICLES = "particles"
    GROUP = "all"
    OBSERVABLES = "observables"

    BOX = "box"
    DIMENSION_ATTR = "dimension"
    BOUNDARY_ATTR = "boundary"
    PERIODIC = "periodic"
    NONPERIODIC = "none"
    EDGES = "edges"

    SPECIES = "species"
    SPECIES_NAMES_ATTR = "species_names"
    ID = "id"
    MASS = "mass"

    VALUE = "value"
    STEP = "step"
    TIME = "time"
    UNIT_ATTR = "unit"

    SPECIES_ATTR = "species_names"      # root attributes, as in the first layout
    N_ATOMS_ATTR = "n_atoms"

    # our per-atom quantity name (Trajectory.PER_ATOM, [output] store) -> H5MD element name
    ELEMENTS: dict[str, str] = {
        "positions": "position", "velocities": "velocity", "forces": "force",
        "magmoms": "magnetic_moment", "site_energies": "site_energy",
        "magnetic_gradient": "magnetic_gradient", "nbh_grades": "nbh_grade",
    }
    OBSERVABLE_NAMES = Trajectory.SCALARS

    @classmethod
    def particle_path(cls, *parts: str) -> str:
        return "/".join((cls.PARTICLES, cls.GROUP, *parts))

    @classmethod
    def element_path(cls, name: str) -> str:
        """Group of the time-dependent element of our quantity ``name`` (a per-atom quantity,
        an observable, or ``cell`` for the box edges)."""
        if name in cls.ELEMENTS:
            return cls.particle_path(cls.ELEMENTS[name])
        if name == Trajectory.CELL:
            return cls.particle_path(cls.BOX, cls.EDGES)
        return f"{cls.OBSERVABLES}/{name}"


H5MD_UNITS: dict[str, str] = {
    "positions": "Angstrom", "cell": "Angstrom", "velocities": "Angstrom fs-1",
    "forces": "eV Angstrom-1", "magmoms": "muB", "site_energies": "eV",
    "magnetic_gradient": "eV muB-1", "nbh_grades": "1", "masses": "amu", "time": "fs",
    "potential_energy": "eV", "kinetic_energy": "eV", "conserved_energy": "eV",
    "temperature": "K", "pressure": "GPa", "volume": "Angstrom3", "moment_mean": "muB",
    "moment_abs_mean": "muB", "magnetization": "muB", "grade": "1",
}
"""H5MD ``unit`` strings of the trajectory quantities (the same units as :data:`UNITS`)."""


# --------------------------------------------------------------------------- reading guard
_H5_NOISE = ("Unable to synchronously ", "Can't synchronously ")


def describe_h5_error(exc: BaseException) -> str:
    """A low-level HDF5/h5py failure in words (without h5py's 'synchronously' jargon)."""
    text = str(exc).strip().strip('"') or type(exc).__name__
    for noise in _H5_NOISE:
        text = text.replace(noise, "")
    return text


@contextlib.contextmanager
def reading(path: Any, what: str) -> Iterator[None]:
    """Turn every low-level failure of reading a damaged or foreign HDF5 file (truncated,
    flipped bytes, missing or reshaped datasets, wrong dtypes, bad JSON) into one InputError
    that names the file and what it should have been; our own InputErrors pass unchanged."""
    try:
        yield
    except (InputError, FileNotFoundError):
        raise
    except (OSError, KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError,
            OverflowError, MemoryError) as exc:
        raise InputError(f"damaged or incomplete {what} file ({describe_h5_error(exc)})",
                         path=str(path)) from None


def open_checked(path: Any, kind: str, groups: tuple[str, ...] = ()) -> Any:
    """Open an mmtp_hpc HDF5 file of ``kind`` for reading: it must exist, be HDF5, carry our
    header with a known version and hold ``groups``; otherwise a clear InputError."""
    import os

    import h5py

    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"not an HDF5 file, or a damaged one ({describe_h5_error(exc)})", path=str(path)) from None
    try:
        with reading(path, kind):
            check_header(f, kind, str(path))
            for name in groups:
                if name not in f:
                    raise InputError(f"missing group /{name}", path=str(path), field=name)
    except BaseException:
        f.close()
        raise
    return f
