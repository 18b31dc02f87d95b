"""Pick the reader/writer for a configuration file from its name (or an explicit format).

``.cfg`` → MLIP-3 (:mod:`.cfg`), ``.xyz``/``.extxyz`` → extended XYZ (:mod:`.extxyz`),
``.h5``/``.hdf5`` → HDF5 training set (:mod:`.trainingset`) or MD trajectory (every frame
a configuration, told apart by the file's ``kind``); LAMMPS data (``*.lmp``, ``*.lammps``,
``*.data``: symbols from the Masses section) and any other file that ASE
recognises (POSCAR, cif, OUTCAR, ...) go through ASE. :func:`export_trajectory` writes
the frames of an MD trajectory to extended XYZ or an ASE trajectory (with velocities and
moments, for OVITO and ASE), or to ``.cfg`` / a training set.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from mmtp_hpc.errors import InputError
from mmtp_hpc.system.configuration import Configuration

EXTENSIONS = {".cfg": "cfg", ".xyz": "extxyz", ".extxyz": "extxyz", ".h5": "h5", ".hdf5": "h5"}
_ALIASES = {"cfg": "cfg", "mlip": "cfg", "xyz": "extxyz", "extxyz": "extxyz", "h5": "h5",
            "hdf5": "h5", "trainingset": "h5"}
_ASE_PREFIX = "ase:"


def detect_format(path: str | os.PathLike, fmt: str | None = None, reading: bool = True) -> str:
    """``"cfg"``, ``"extxyz"``, ``"h5"`` or ``"ase:<ASE format name>"``."""
    from ase.io.formats import UnknownFileTypeError, filetype, ioformats

    if fmt is not None:
        if fmt in _ALIASES:
            return _ALIASES[fmt]
        name = fmt[len(_ASE_PREFIX):] if fmt.startswith(_ASE_PREFIX) else fmt
        if name not in ioformats:
            raise InputError(f"unknown format {fmt!r}; known: {', '.join(sorted(_ALIASES))} or an "
                             "ASE format name", field="format")
        return _ASE_PREFIX + name
    suffix = Path(path).suffix.lower()
    if suffix in EXTENSIONS:
        return EXTENSIONS[suffix]
    if suffix in (".lmp", ".lammps", ".data"):
        # LAMMPS data files have no signature ASE can sniff; symbols come from their Masses
        return _ASE_PREFIX + "lammps-data"
    known = " ".join(EXTENSIONS)
    try:
        name = filetype(str(path), read=reading and Path(path).is_file())
    except UnknownFileTypeError:
        name = None
    io_format = ioformats.get(name) if name else None
    if io_format is None or not (io_format.can_read if reading else io_format.can_write):
        raise InputError(f"cannot tell the file format from the name (known extensions: {known}; "
                         "or a file ASE recognises, such as POSCAR or OUTCAR); pass a format",
                         path=str(path), field="format")
    return _ASE_PREFIX + io_format.name


def read_configurations_and_species(
        path: str | os.PathLike, fmt: str | None = None, en_der_sign: int = +1,
        species: Sequence[str] | None = None,
        virial_sign: int = +1) -> tuple[list[Configuration], list[str] | None]:
    """Configurations of a file and the species list that maps its types (None if unknown).

    ``en_der_sign`` applies to ``.cfg`` files only and ``virial_sign`` to an explicit
    ``virial`` in extended XYZ; neither is ever guessed.
    """
    kind = detect_format(path, fmt, reading=True)
    if not Path(path).exists():
        raise FileNotFoundError(f"no such file: {path}")
    if en_der_sign != 1 and kind != "cfg":
        raise InputError("en_der_sign only applies to .cfg input", path=str(path),
                         field="en_der_sign")
    if kind == "cfg":
        from mmtp_hpc.io.cfg import read_cfg

        return read_cfg(path, en_der_sign=en_der_sign), None if species is None else list(species)
    if kind == "h5":
        from mmtp_hpc.io.trajectory_frames import is_trajectory

        if is_trajectory(path):
            configs, stored = trajectory_configurations(path)
            return configs, stored or (None if species is None else list(species))
        from mmtp_hpc.io.trainingset import read_trainingset_h5, trainingset_species

        stored = trainingset_species(path)
        return read_trainingset_h5(path), stored if stored is not None else (
            None if species is None else list(species))
    from mmtp_hpc.io.extxyz import read_ase

    ase_format = "extxyz" if kind == "extxyz" else kind[len(_ASE_PREFIX):]
    return read_ase(path, species=species, format=ase_format, virial_sign=virial_sign)


def read_configurations(path: str | os.PathLike, fmt: str | None = None, en_der_sign: int = +1,
                        species: Sequence[str] | None = None,
                        virial_sign: int = +1) -> list[Configuration]:
    """Configurations of any supported file (see :func:`read_configurations_and_species`)."""
    return read_configurations_and_species(path, fmt, en_der_sign, species, virial_sign)[0]


def write_configurations(path: str | os.PathLike, configs: Configuration | Iterable[Configuration],
                         fmt: str | None = None, species: Sequence[str] | None = None,
                         provenance: str | Sequence[str] | None = None,
                         append: bool = False) -> int:
    """Write configurations in the format the name (or ``fmt``) says; return the count.

    ``species`` is needed for formats with chemical symbols (extended XYZ, ASE) and is
    recorded in HDF5; ``.cfg`` has types only. ``provenance`` is kept by HDF5 only.
    """
    if isinstance(configs, Configuration):
        configs = [configs]
    kind = detect_format(path, fmt, reading=False)
    if kind == "cfg":
        from mmtp_hpc.io.cfg import write_cfg

        return write_cfg(path, configs, append=append)
    if kind == "h5":
        from mmtp_hpc.io.trainingset import write_trainingset_h5

        return write_trainingset_h5(path, configs, provenance=provenance, append=append,
                                    species=species)
    if kind == "extxyz":
        from mmtp_hpc.io.extxyz import write_extxyz

        return write_extxyz(path, configs, species, append=append)
    from ase.io import write

    from mmtp_hpc.io.atomic import atomic_path
    from mmtp_hpc.io.extxyz import configuration_to_atoms

    images = [configuration_to_atoms(c, species) for c in configs]
    ase_format = kind[len(_ASE_PREFIX):]
    with atomic_path(path, copy_existing=append) as tmp:
        try:
            write(str(tmp), images if len(images) != 1 else images[0], format=ase_format,
                  append=append)
        except (ValueError, TypeError, NotImplementedError) as exc:
            # e.g. POSCAR holds one structure only
            raise InputError(f"ASE cannot write this as {ase_format!r}: {exc}",
                             path=str(path)) from exc
    return len(images)


# ===================================================================== MD trajectories
def _frame_values(t, k: int, names: Sequence[str], path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Frame ``k``'s per-atom arrays ``names`` that the trajectory stores, checked: positions and
    velocities must be finite; another quantity may be absent from a frame (all NaN: not
    recorded then, left out) but never partly non-finite. The cell and time must be finite."""
    where = f"frame {k} (step {int(t.step[k])})"
    if not np.all(np.isfinite(t.cell[k])) or not np.isfinite(t.time[k]):
        raise InputError(f"{where}: the cell or time is not finite", path=str(path), field="cell")
    out = {}
    for name in names:
        if name not in t.data:
            continue
        value = np.asarray(t.data[name][k])
        finite = np.isfinite(value)
        if finite.all():
            out[name] = value
        elif name not in ("positions", "velocities") and np.isnan(value).all():
            continue
        else:
            raise InputError(f"{where}: dataset {name!r} holds non-finite values ({int((~finite).sum())} of "
                             f"{value.size})", path=str(path), field=name)
    return out


def trajectory_configurations(path: str | os.PathLike, frames: slice = slice(None),
                              wrap: bool = False) -> tuple[list[Configuration], list[str]]:
    """Frames of an MD trajectory (HDF5, kind ``trajectory``) as configurations, and its species.

    Each configuration has the frame's cell, positions (unwrapped as stored, or folded into
    the cell with ``wrap``), types, ids, moments and the per-atom data that were stored
    (forces, site energies, ∂E/∂m, grades), ``energy`` = the potential energy, and the
    features ``step`` and ``time_fs``. Velocities are not part of a configuration; see
    :func:`export_trajectory`.
    """
    from mmtp_hpc.io.trajectory_frames import read_frames

    t = read_frames(path, frames)
    configs = []
    for k in range(t.n_frames):
        frame = _frame_values(t, k, ("positions", "magmoms", "forces", "site_energies", "magnetic_gradient",
                                     "nbh_grades"), path)
        positions = frame.get("positions")
        if positions is None:
            raise InputError("the trajectory stores no positions ([output] store)", path=str(path),
                             field="positions")
        cell = t.cell[k]
        if wrap:
            positions = wrap_positions(positions, cell, t.pbc)
        energy = t.data.get("potential_energy")
        cfg = Configuration(cell=cell, positions=positions, types=t.types, pbc=t.pbc, ids=t.ids,
                            magmoms=frame.get("magmoms"),
                            energy=None if energy is None or not np.isfinite(energy[k]) else energy[k],
                            forces=frame.get("forces"), site_energies=frame.get("site_energies"),
                            magnetic_gradient=frame.get("magnetic_gradient"),
                            nbh_grades=frame.get("nbh_grades"),
                            features={"step": str(int(t.step[k])), "time_fs": repr(float(t.time[k]))})
        configs.append(cfg)
    return configs, list(t.species)


def wrap_positions(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Positions folded into the cell along the periodic directions."""
    frac = np.asarray(positions) @ np.linalg.inv(cell)
    pbc = np.asarray(pbc, dtype=bool)
    frac[:, pbc] -= np.floor(frac[:, pbc])
    return frac @ cell


def export_trajectory(path: str | os.PathLike, out: str | os.PathLike, fmt: str | None = None,
                      frames: slice = slice(None), wrap: bool = False) -> int:
    """Write frames of an MD trajectory to ``out``; return the number of frames written.

    Extended XYZ and every other ASE format (``.traj`` for ASE, ``.xyz`` for OVITO) get
    ASE ``Atoms`` with masses, velocities (from the stored Å/fs), ``initial_magmoms``, a
    single-point calculator holding the energy, forces, site energies (``energies``) and
    moments that were stored, and ``info`` entries ``step``, ``time_fs``, ``temperature_K``,
    ``pressure_GPa``. ``.cfg`` and the HDF5 training-set format get configurations
    (:func:`trajectory_configurations`).
    """
    kind = detect_format(out, fmt, reading=False)
    if kind in ("cfg", "h5"):
        configs, species = trajectory_configurations(path, frames, wrap)
        return write_configurations(out, configs, fmt=fmt, species=species,
                                    provenance=f"{path} (MD trajectory)")
    from ase import Atoms, units
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    from mmtp_hpc.io.atomic import atomic_path
    from mmtp_hpc.io.trajectory_frames import read_frames

    t = read_frames(path, frames)
    if not t.species:
        raise InputError("the trajectory records no chemical symbols", path=str(path), field="species")
    symbols = [t.species[z] for z in t.types.tolist()]
    scalars = {"temperature": "temperature_K", "pressure": "pressure_GPa",
               "kinetic_energy": "kinetic_energy_eV", "magnetization": "magnetization_uB"}
    images = []
    t.require("positions", "exporting a trajectory")
    for k in range(t.n_frames):
        frame = _frame_values(t, k, ("positions", "velocities", "magmoms", "forces", "site_energies"), path)
        positions = frame["positions"]
        if wrap:
            positions = wrap_positions(positions, t.cell[k], t.pbc)
        atoms = Atoms(symbols=symbols, positions=positions, cell=t.cell[k], pbc=t.pbc,
                      masses=t.masses)
        if "velocities" in frame:
            atoms.set_velocities(frame["velocities"] / units.fs)   # Å/fs -> ASE units
        if "magmoms" in frame:
            atoms.set_initial_magnetic_moments(frame["magmoms"])
        atoms.info["step"] = int(t.step[k])
        atoms.info["time_fs"] = float(t.time[k])
        for name, key in scalars.items():
            if name in t.data and np.isfinite(t.data[name][k]):
                atoms.info[key] = float(t.data[name][k])
        results: dict = {}
        if "potential_energy" in t.data and np.isfinite(t.data["potential_energy"][k]):
            results["energy"] = float(t.data["potential_energy"][k])
        for name, key in (("forces", "forces"), ("site_energies", "energies"), ("magmoms", "magmoms")):
            if name in frame:
                results[key] = np.array(frame[name])
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        images.append(atoms)
    ase_format = "extxyz" if kind == "extxyz" else kind[len(_ASE_PREFIX):]
    with atomic_path(out) as tmp:
        try:
            write(str(tmp), images, format=ase_format)
        except (ValueError, TypeError, NotImplementedError) as exc:
            raise InputError(f"ASE cannot write a trajectory as {ase_format!r}: {exc}",
                             path=str(out)) from exc
    return len(images)
