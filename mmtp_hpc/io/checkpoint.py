"""MD checkpoints: everything for a bit-identical restart, written atomically.

Layout and names: :class:`mmtp_hpc.io.schema.Checkpoint`. The file is written beside
the target and renamed over it (:func:`mmtp_hpc.io.atomic.atomic_path`), so a run killed
while writing leaves the previous checkpoint intact. All floats are float64 and stored
exactly. This module knows the file; :mod:`mmtp_hpc.dynamics.driver` maps its state to
and from :class:`CheckpointData`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mmtp_hpc.errors import InputError
from mmtp_hpc.io import schema
from mmtp_hpc.io.atomic import atomic_path
from mmtp_hpc.io.schema import Checkpoint as C


@dataclass
class CheckpointData:
    step: int
    time: float
    seed: int
    heat: float
    species: list[str]
    state: dict[str, np.ndarray]             # Checkpoint.STATE_ARRAYS
    energy: float
    evaluation: dict[str, np.ndarray]        # Checkpoint.EVALUATION_ARRAYS
    build_positions: np.ndarray
    build_cell: np.ndarray
    thermostat: dict[str, np.ndarray] = field(default_factory=dict)
    barostat: dict[str, np.ndarray] = field(default_factory=dict)
    observers: dict[str, Any] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    potential: str = ""
    potential_sha256: str = ""
    stop_reason: str = ""
    n_atoms: int = 0                         # atoms in the file (the per-atom arrays may hold a slice)
    first_row: int = 0                       # row of the file where the per-atom arrays begin


# per-atom arrays of a checkpoint: name -> (group, trailing shape, dtype)
PER_ATOM: dict[str, tuple[str, tuple[int, ...], Any]] = {
    "positions": (C.STATE, (3,), np.float64), "velocities": (C.STATE, (3,), np.float64),
    "masses": (C.STATE, (), np.float64), "types": (C.STATE, (), np.int64), "ids": (C.STATE, (), np.int64),
    "magmoms": (C.STATE, (), np.float64), "site_energies": (C.EVALUATION, (), np.float64),
    "forces": (C.EVALUATION, (3,), np.float64), "magnetic_gradient": (C.EVALUATION, (), np.float64),
    C.BUILD_POSITIONS: (C.NEIGHBORS, (3,), np.float64),
}


def write_checkpoint(path: str | os.PathLike, data: CheckpointData,
                     chunks: Iterable[tuple[int, dict[str, np.ndarray]]] | None = None,
                     n_atoms: int | None = None) -> None:
    """Write ``data`` atomically. With ``chunks`` (pairs (first row, {name: rows}) of the
    :data:`PER_ATOM` arrays, in id order, covering ``n_atoms`` atoms), the per-atom arrays are
    not taken from ``data`` but written chunk by chunk as they come (an MPI run's streamed
    gather); the file holds the same datasets either way."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        _write(f, data, chunks, n_atoms)


def _write(f: h5py.File, data: CheckpointData, chunks, n_atoms: int | None) -> None:
    def put(group: h5py.Group, name: str, value) -> None:
        if chunks is not None and name in PER_ATOM:
            _, shape, dtype = PER_ATOM[name]
            ds = group.create_dataset(name, shape=(int(n_atoms), *shape), dtype=dtype)
        else:
            ds = group.create_dataset(name, data=np.asarray(value))
        schema.set_units(ds, name)

    schema.write_header(f, schema.KIND_CHECKPOINT, data.settings)
    f.attrs[C.STEP_ATTR] = int(data.step)
    f.attrs[C.TIME_ATTR] = float(data.time)
    f.attrs[C.SEED_ATTR] = int(data.seed)
    f.attrs[C.HEAT_ATTR] = float(data.heat)
    f.attrs[C.SPECIES_ATTR] = json.dumps(list(data.species))
    f.attrs[C.POTENTIAL_ATTR] = data.potential
    f.attrs[C.POTENTIAL_SHA_ATTR] = data.potential_sha256
    f.attrs[C.STOP_REASON_ATTR] = data.stop_reason
    g = f.create_group(C.STATE)
    for name in C.STATE_ARRAYS:
        put(g, name, data.state.get(name))
    g = f.create_group(C.EVALUATION)
    g.attrs[C.ENERGY_ATTR] = float(data.energy)
    for name in C.EVALUATION_ARRAYS:
        put(g, name, data.evaluation.get(name))
    g = f.create_group(C.NEIGHBORS)
    put(g, C.BUILD_POSITIONS, data.build_positions)
    put(g, C.BUILD_CELL, data.build_cell)
    for group, values in ((C.THERMOSTAT, data.thermostat), (C.BAROSTAT, data.barostat)):
        g = f.create_group(group)
        for name, value in values.items():
            g.create_dataset(name, data=np.asarray(value))
    g = f.create_group(C.OBSERVERS)
    for name, value in data.observers.items():
        g.attrs[name] = json.dumps(value)
    for start, block in chunks or ():
        for name, rows in block.items():
            group = PER_ATOM[name][0]
            f[group][name][start:start + len(rows)] = rows


def atom_slice(n_atoms: int, part: tuple[int, int] | None) -> tuple[int, int]:
    """Rows ``[k·N/P, (k+1)·N/P)`` of part ``(k, P)`` (all rows for None)."""
    if part is None:
        return 0, int(n_atoms)
    k, p = int(part[0]), int(part[1])
    return k * int(n_atoms) // p, (k + 1) * int(n_atoms) // p


def read_checkpoint(path: str | os.PathLike, part: tuple[int, int] | None = None) -> CheckpointData:
    """The checkpoint at ``path``. ``part = (k, P)``: only rows ``[k·N/P, (k+1)·N/P)`` of the
    per-atom arrays (:data:`PER_ATOM`; sorted by id as written) are read, as HDF5 hyperslabs
    (each MPI rank reads its slice of a restart; ``n_atoms`` and ``first_row`` say which)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("checkpoint not found", path=str(path))
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"cannot read the checkpoint: {exc}", path=str(path)) from None
    with f:
        schema.check_header(f, schema.KIND_CHECKPOINT, str(path))

        def text(name: str) -> str:
            v = f.attrs.get(name, "")
            return v.decode() if isinstance(v, bytes) else str(v)

        n_atoms = int(f[C.STATE]["ids"].shape[0])
        start, stop = atom_slice(n_atoms, part)

        def read(group: h5py.Group, name: str) -> np.ndarray:
            return group[name][start:stop] if name in PER_ATOM else group[name][...]

        ev = f[C.EVALUATION]
        return CheckpointData(
            step=int(f.attrs[C.STEP_ATTR]), time=float(f.attrs[C.TIME_ATTR]), seed=int(f.attrs[C.SEED_ATTR]),
            heat=float(f.attrs[C.HEAT_ATTR]), species=json.loads(text(C.SPECIES_ATTR)),
            state={name: read(f[C.STATE], name) for name in C.STATE_ARRAYS},
            energy=float(ev.attrs[C.ENERGY_ATTR]),
            evaluation={name: read(ev, name) for name in C.EVALUATION_ARRAYS},
            build_positions=read(f[C.NEIGHBORS], C.BUILD_POSITIONS),
            build_cell=f[C.NEIGHBORS][C.BUILD_CELL][...],
            thermostat={k: v[...] for k, v in f[C.THERMOSTAT].items()},
            barostat={k: v[...] for k, v in f[C.BAROSTAT].items()},
            observers={k: json.loads(v) for k, v in f[C.OBSERVERS].attrs.items()},
            settings=schema.read_settings(f), potential=text(C.POTENTIAL_ATTR),
            potential_sha256=text(C.POTENTIAL_SHA_ATTR), stop_reason=text(C.STOP_REASON_ATTR),
            n_atoms=n_atoms, first_row=start)
