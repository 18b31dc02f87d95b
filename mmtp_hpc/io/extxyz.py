"""Convert between ASE ``Atoms`` and ``Configuration``; read and write extended XYZ.

Reading goes through ``ase.io.read`` (extended XYZ or any format ASE knows); extended
XYZ is *written* here rather than by ASE, because ASE prints per-atom floats with 8
decimals and a round trip must be bit-exact. Floats are written as ``repr`` (shortest
exact decimal); the files are plain extended XYZ that ASE and other tools read.

Species: a ``Configuration`` has 0-based ``types``; files have chemical symbols. The
map is a list ``species`` (type t is ``species[t]``). On reading, the default is the
order of first appearance over the whole file; :func:`read_extxyz_with_species`
returns the list it used. Writing needs the list.

Labels and their extended-XYZ names:

==================== ========================================= ==========================
Configuration        written as                                read from
==================== ========================================= ==========================
energy (eV)          ``energy=``                               calculator ``energy``
virial (eV)          ``virial=`` (9 numbers) and, when the     info ``virial`` × ``virial_sign``,
                     cell has a volume, ``stress=`` (ASE sign,  else ``−stress·V`` from the
                     eV/Å³, = −virial/V)                        calculator's ``stress``
forces (eV/Å)        ``forces:R:3``                            calculator ``forces``, else
                                                               array ``force`` (libAtoms)
site_energies (eV)   ``energies:R:1``                          calculator ``energies``
magmoms (μB)         ``initial_magmoms:R:1``                   see ``magmom_source``
magnetic_gradient    ``magnetic_gradient:R:1`` (+∂E/∂m)        array ``magnetic_gradient``
nbh_grades, ghost    ``nbh_grades:R:1``, ``ghost:L:1``          arrays of those names
ids                  ``id:I:1`` unless they are 1..N           array ``id``
features             ``mmtp_features`` (JSON list of            that key, plus every other
                     [key, value] pairs, verbatim)             info entry as text
==================== ========================================= ==========================

``virial`` sign: the usual extended-XYZ convention (libAtoms/QUIP, GAP data sets) is
``virial = −stress·V``, positive under compression, which is exactly our PlusStress;
that is ``virial_sign=+1`` (the default). A data set that stores the opposite sign is
read with ``virial_sign=-1``. The fe_gap22 README says its virials follow the opposite
convention ("contracted cells have negative pressure"); this module does not decide
for the caller, who passes ``virial_sign`` explicitly.

``magmom_source``: ``"auto"`` takes the calculator's ``magmoms`` (the moments a
calculation actually reached, which is what its labels belong to) and falls back to the
``initial_magmoms`` array; ``"magmoms"`` or ``"initial_magmoms"`` force one of them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from mmtp_hpc.errors import InputError
from mmtp_hpc.io.atomic import atomic_path
from mmtp_hpc.system.configuration import Configuration

FEATURES_KEY = "mmtp_features"
MAGMOM_SOURCES = ("auto", "magmoms", "initial_magmoms")
# info entries that are labels or file structure, never features
_NOT_FEATURES = {"virial", "stress", "energy", "free_energy", "pbc", "Lattice", "Properties",
                 FEATURES_KEY}
_VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


# ===================================================================== species
def species_order(atoms_list: Iterable[Any]) -> list[str]:
    """Chemical symbols in order of first appearance over all frames."""
    seen: dict[str, None] = {}
    for atoms in atoms_list:
        for symbol in atoms.get_chemical_symbols():
            seen.setdefault(symbol, None)
    return list(seen)


def _type_map(species: Sequence[str]) -> dict[str, int]:
    species = list(species)
    if len(set(species)) != len(species):
        raise InputError(f"species list has repeated symbols: {species}", field="species")
    return {symbol: t for t, symbol in enumerate(species)}


# ===================================================================== Atoms <-> Configuration
def atoms_to_configuration(atoms: Any, species: Sequence[str], virial_sign: int = +1,
                           magmom_source: str = "auto", where: str | None = None) -> Configuration:
    """A ``Configuration`` from an ASE ``Atoms`` (labels from its calculator/arrays/info).

    ``species[t]`` is the symbol of type t; every symbol in ``atoms`` must be in it.
    ``where`` names the source (file and frame) in error messages.
    """
    if virial_sign not in (1, -1):
        raise InputError(f"must be +1 or -1, got {virial_sign!r}", field="virial_sign")
    if magmom_source not in MAGMOM_SOURCES:
        raise InputError(f"must be one of {MAGMOM_SOURCES}, got {magmom_source!r}",
                         field="magmom_source")
    type_of = _type_map(species)
    symbols = atoms.get_chemical_symbols()
    missing = sorted(set(symbols) - set(type_of))
    if missing:
        raise InputError(f"symbols {missing} are not in the species list {list(species)}",
                         path=where, field="species")
    n = len(atoms)
    types = np.fromiter((type_of[s] for s in symbols), dtype=np.int64, count=n)
    results: dict = dict(atoms.calc.results) if atoms.calc is not None else {}
    arrays, info = atoms.arrays, atoms.info
    cell = np.array(atoms.cell.array, dtype=np.float64)

    def finite(name: str, value: Any) -> np.ndarray:
        value = np.asarray(value, dtype=np.float64)
        if not np.all(np.isfinite(value)):
            raise InputError("contains NaN or inf", path=where, field=name)
        return value

    energy = results.get("energy")
    if energy is not None:
        energy = float(finite("energy", energy))

    virial = None
    if "virial" in info:
        virial = virial_sign * finite("virial", np.reshape(info["virial"], (3, 3)))
    elif results.get("stress") is not None:
        stress = finite("stress", results["stress"])
        if stress.shape == (6,):
            full = np.empty((3, 3))
            for value, (a, b) in zip(stress, _VOIGT, strict=True):
                full[a, b] = full[b, a] = value
            stress = full
        volume = abs(float(np.linalg.det(cell)))
        if volume == 0.0:
            raise InputError("stress given but the cell has no volume", path=where, field="stress")
        virial = -stress.reshape(3, 3) * volume

    magmoms = None
    if magmom_source in ("auto", "magmoms"):
        magmoms = results.get("magmoms", arrays.get("magmoms"))
    if magmoms is None and magmom_source in ("auto", "initial_magmoms"):
        magmoms = arrays.get("initial_magmoms")
    if magmoms is not None:
        magmoms = finite("magmoms", magmoms)
        if magmoms.ndim != 1:
            raise InputError("non-collinear (vector) moments are not supported", path=where,
                             field="magmoms")

    def per_atom(name: str, value: Any) -> np.ndarray | None:
        return None if value is None else finite(name, value)

    forces = results.get("forces")
    if forces is None:
        # libAtoms/GAP data sets (fe_gap22 among them) spell it "force", which ASE
        # leaves as a plain array.
        forces = arrays.get("forces", arrays.get("force"))
    ghost = arrays.get("ghost")
    ids = arrays.get("id")
    return Configuration(
        cell=cell, positions=finite("positions", atoms.positions), types=types,
        pbc=np.array(atoms.pbc, dtype=bool),
        ids=None if ids is None else np.asarray(ids, dtype=np.int64),
        magmoms=magmoms, energy=energy,
        forces=per_atom("forces", forces), virial=virial,
        site_energies=per_atom("energies", results.get("energies")),
        magnetic_gradient=per_atom("magnetic_gradient", arrays.get("magnetic_gradient")),
        nbh_grades=per_atom("nbh_grades", arrays.get("nbh_grades")),
        features=_features_from_info(info, where),
        ghost=None if ghost is None else np.asarray(ghost, dtype=bool))


def _features_from_info(info: dict, where: str | None) -> dict:
    features: dict = {}
    if FEATURES_KEY in info:
        pairs = info[FEATURES_KEY]
        if isinstance(pairs, str):
            pairs = json.loads(pairs)
        try:
            for key, value in pairs:
                _add_feature(features, str(key), str(value))
        except (TypeError, ValueError):
            raise InputError("expected a list of [key, value] pairs", path=where,
                             field=FEATURES_KEY) from None
    # Other metadata (config_type, ... from foreign files) is kept as text features, one line
    # each; library objects (e.g. the Spacegroup ASE's cif reader puts in info) are not data.
    for key, value in info.items():
        if key not in _NOT_FEATURES and key not in features:
            if not isinstance(value, (str, bytes, int, float, bool, np.generic, np.ndarray, list, tuple,
                                      dict)):
                continue
            features[str(key)] = " ".join(_as_text(value).split("\n"))
    return features


def _as_text(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "T" if value else "F"
    if isinstance(value, np.ndarray):
        return " ".join(_as_text(v) for v in value.ravel().tolist())
    if isinstance(value, (list, tuple)):
        return " ".join(_as_text(v) for v in value)
    return str(value)


def _add_feature(features: dict, key: str, value: str) -> None:
    if key not in features:
        features[key] = value
    elif isinstance(features[key], list):
        features[key].append(value)
    else:
        features[key] = [features[key], value]


def _feature_pairs(features: dict) -> list[list[str]]:
    return [[key, str(v)] for key, value in features.items()
            for v in (value if isinstance(value, list) else [value])]


def configuration_to_atoms(cfg: Configuration, species: Sequence[str]) -> Any:
    """An ASE ``Atoms`` with a SinglePointCalculator holding the labels.

    The virial is kept exactly in ``info['virial']`` and also given to the
    calculator as ASE stress (−virial/V, eV/Å³) when the cell has a volume.
    """
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    symbols = _symbols(cfg, species)
    atoms = Atoms(symbols=symbols, positions=cfg.positions.copy(), cell=cfg.cell.copy(),
                  pbc=cfg.pbc.copy())
    if cfg.magmoms is not None:
        atoms.set_initial_magnetic_moments(cfg.magmoms.copy())
    for name, value in (("magnetic_gradient", cfg.magnetic_gradient),
                        ("nbh_grades", cfg.nbh_grades), ("ghost", cfg.ghost)):
        if value is not None:
            atoms.new_array(name, value.copy())
    if not np.array_equal(cfg.ids, np.arange(1, len(cfg) + 1)):
        atoms.new_array("id", cfg.ids.copy())
    if cfg.features:
        atoms.info[FEATURES_KEY] = _feature_pairs(cfg.features)
    results: dict = {}
    if cfg.energy is not None:
        results["energy"] = cfg.energy
    if cfg.forces is not None:
        results["forces"] = cfg.forces.copy()
    if cfg.site_energies is not None:
        results["energies"] = cfg.site_energies.copy()
    if cfg.virial is not None:
        atoms.info["virial"] = cfg.virial.copy()
        if cfg.volume > 0:
            results["stress"] = np.array([-cfg.virial[a, b] / cfg.volume for a, b in _VOIGT])
    if results:
        atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def _symbols(cfg: Configuration, species: Sequence[str] | None) -> list[str]:
    if species is None:
        raise InputError("writing chemical symbols needs a species list (type t -> species[t])",
                         field="species")
    _type_map(species)
    species = list(species)
    if len(cfg) and int(cfg.types.max()) >= len(species):
        raise InputError(f"configuration has type {int(cfg.types.max())} but the species list "
                         f"{species} has only {len(species)} entries", field="species")
    return [species[t] for t in cfg.types.tolist()]


# ===================================================================== reading
def read_ase(path: str | os.PathLike, species: Sequence[str] | None = None,
             format: str | None = None, virial_sign: int = +1,
             magmom_source: str = "auto") -> tuple[list[Configuration], list[str]]:
    """Every frame of any file ASE can read, and the species list used for the types."""
    from ase.io import read

    try:
        frames = read(path, index=":", format=format, parallel=False)  # every rank reads for itself
    except FileNotFoundError:
        raise
    except Exception as exc:  # ASE raises many types for malformed input
        raise InputError(f"ASE could not read it ({type(exc).__name__}: {exc})",
                         path=str(path)) from exc
    if not isinstance(frames, list):
        frames = [frames]
    if species is None:
        species = species_order(frames)
    configs = [atoms_to_configuration(atoms, species, virial_sign=virial_sign,
                                      magmom_source=magmom_source,
                                      where=f"{path} (frame {i})")
               for i, atoms in enumerate(frames)]
    return configs, list(species)


def read_extxyz_with_species(path: str | os.PathLike, species: Sequence[str] | None = None,
                             virial_sign: int = +1,
                             magmom_source: str = "auto") -> tuple[list[Configuration], list[str]]:
    """All frames of an extended XYZ file and the species list (type t = species[t])."""
    return read_ase(path, species=species, format="extxyz", virial_sign=virial_sign,
                    magmom_source=magmom_source)


def read_extxyz(path: str | os.PathLike, species: Sequence[str] | None = None,
                virial_sign: int = +1, magmom_source: str = "auto") -> list[Configuration]:
    """All frames of an extended XYZ file as configurations (see module docstring)."""
    return read_extxyz_with_species(path, species, virial_sign, magmom_source)[0]


# ===================================================================== writing
def write_extxyz(path: str | os.PathLike, configs: Configuration | Iterable[Configuration],
                 species: Sequence[str], append: bool = False) -> int:
    """Write configurations as extended XYZ at full precision (atomically); return the count."""
    if isinstance(configs, Configuration):
        configs = [configs]
    count = 0
    with atomic_path(path, copy_existing=append) as tmp:
        with open(tmp, "a" if append else "w", encoding="utf-8") as f:
            for cfg in configs:
                f.write(format_extxyz_frame(cfg, species))
                count += 1
    return count


def format_extxyz_frame(cfg: Configuration, species: Sequence[str]) -> str:
    """One extended-XYZ frame (count line, comment line, atom lines)."""
    symbols = _symbols(cfg, species)
    props = ["species:S:1", "pos:R:3"]
    columns: list[list[str]] = [symbols] + [_reprs(c) for c in cfg.positions.T]

    def add(spec: str, *cols: np.ndarray) -> None:
        props.append(spec)
        columns.extend(_reprs(c) for c in cols)

    if cfg.forces is not None:
        add("forces:R:3", *cfg.forces.T)
    if cfg.magmoms is not None:
        add("initial_magmoms:R:1", cfg.magmoms)
    if cfg.magnetic_gradient is not None:
        add("magnetic_gradient:R:1", cfg.magnetic_gradient)
    if cfg.site_energies is not None:
        add("energies:R:1", cfg.site_energies)
    if cfg.nbh_grades is not None:
        add("nbh_grades:R:1", cfg.nbh_grades)
    if cfg.ghost is not None:
        props.append("ghost:L:1")
        columns.append(["T" if g else "F" for g in cfg.ghost.tolist()])
    if not np.array_equal(cfg.ids, np.arange(1, len(cfg) + 1)):
        props.append("id:I:1")
        columns.append([str(i) for i in cfg.ids.tolist()])

    header = []
    if np.any(cfg.cell != 0):
        header.append(f'Lattice="{_join(cfg.cell.ravel())}"')
    header.append("Properties=" + ":".join(props))
    if cfg.energy is not None:
        header.append(f"energy={cfg.energy!r}")
    if cfg.virial is not None:
        # extended XYZ stores 3x3 values in Fortran order
        header.append(f'virial="{_join(cfg.virial.ravel(order="F"))}"')
        if cfg.volume > 0:
            header.append(f'stress="{_join((-cfg.virial / cfg.volume).ravel(order="F"))}"')
    header.append('pbc="' + " ".join("T" if p else "F" for p in cfg.pbc) + '"')
    if cfg.features:
        text = "_JSON " + json.dumps(_feature_pairs(cfg.features))
        # ASE's parser reads a backslash as "take the next character literally"
        text = text.replace("\\", "\\\\").replace('"', '\\"')
        header.append(f'{FEATURES_KEY}="{text}"')
    lines = [str(len(cfg)), " ".join(header)]
    lines.extend(" ".join(row) for row in zip(*columns, strict=True))
    return "\n".join(lines) + "\n"


def _reprs(values: np.ndarray) -> list[str]:
    return [repr(v) for v in np.asarray(values, dtype=np.float64).tolist()]


def _join(values: np.ndarray) -> str:
    return " ".join(_reprs(values))
