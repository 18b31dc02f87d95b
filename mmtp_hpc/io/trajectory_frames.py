"""Read a selection of frames and datasets from an MD trajectory file, for analysis and export.

:func:`mmtp_hpc.io.trajectory.read_trajectory` loads a whole file; this reader takes a
frame slice and the names wanted, so post-processing a long run reads only what it needs
(HDF5 reads just the chunks of the selected rows). Files in the H5MD layout
(:class:`mmtp_hpc.io.schema.H5MD`, schema version 2) and in the first layout
(:class:`mmtp_hpc.io.schema.Trajectory`, version 1) read the same: quantities keep our
names (positions, magmoms, cell, temperature, …) whatever the layout; the header and
schema version are checked.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mmtp_hpc.errors import InputError
from mmtp_hpc.io import schema
from mmtp_hpc.io.schema import H5MD as H
from mmtp_hpc.io.schema import Trajectory as T


@dataclass
class TrajectoryFrames:
    """Frames of a trajectory.

    Static: ``species`` (symbols of types 0, 1, …), ``types`` (N,), ``ids`` (N,),
    ``masses`` (N,) amu, ``pbc`` (3,), ``settings`` (the run's resolved settings).
    Per frame (F frames): ``step`` (F,), ``time`` (F,) fs, ``cell`` (F,3,3) Å, and in
    ``data`` every other requested frame dataset by its schema name (scalars (F,),
    per-atom (F,N,…)), with the ``units`` attributes in ``units``.
    """

    path: str
    species: list[str]
    types: np.ndarray
    ids: np.ndarray
    masses: np.ndarray
    pbc: np.ndarray
    settings: dict
    step: np.ndarray
    time: np.ndarray
    cell: np.ndarray
    data: dict[str, np.ndarray] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    available: tuple[str, ...] = ()

    @property
    def n_frames(self) -> int:
        return len(self.step)

    @property
    def n_atoms(self) -> int:
        return len(self.types)

    def has(self, name: str) -> bool:
        return name in self.data

    def require(self, name: str, why: str) -> np.ndarray:
        """A dataset, or an InputError that says which run setting would have written it."""
        if name not in self.data:
            hint = (f"add \"{name}\" to [output] store" if name in T.PER_ATOM else "")
            raise InputError(f"{why} needs the {name!r} dataset, which this trajectory does not "
                             f"hold (it has: {', '.join(self.available)}){'; ' + hint if hint else ''}",
                             path=self.path, field=name)
        return self.data[name]


def open_trajectory(path: str | os.PathLike) -> h5py.File:
    """Open a trajectory for reading, also while a run appends to it or after its writer was
    killed (HDF5's SWMR read mode; fine for every HDF5 file)."""
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        # marked as open by a writer (a run appending now, or one that was killed): SWMR read
        # mode is made for this; only then, because on a damaged file its retries take minutes
        if "already open for" not in str(exc):
            raise
    return h5py.File(path, "r", swmr=True)


def committed_frames(steps: np.ndarray, lengths: Iterable[int]) -> int:
    """How many frames are complete: no more than any dataset holds, with increasing steps
    (a frame whose step a running writer has not written yet reads as 0)."""
    n = min([len(steps), *lengths])
    while n > 1 and steps[n - 1] <= steps[n - 2]:
        n -= 1
    return n


def is_trajectory(path: str | os.PathLike) -> bool:
    """True when ``path`` is an HDF5 file whose root says ``kind = "trajectory"``."""
    try:
        with open_trajectory(path) as f:
            kind = f.attrs.get(schema.KIND_ATTR)
    except OSError:
        return False
    if isinstance(kind, bytes):
        kind = kind.decode()
    return kind == schema.KIND_TRAJECTORY


def parse_frames(text: str | None) -> slice:
    """``"START:STOP:STEP"`` (Python slice syntax, any part optional) or one index → slice."""
    if text is None or text == "":
        return slice(None)
    parts = text.split(":")
    try:
        if len(parts) == 1:
            k = int(parts[0])
            return slice(k, None if k == -1 else k + 1)
        if len(parts) > 3:
            raise ValueError
        vals = [int(p) if p.strip() else None for p in parts]
    except ValueError:
        raise InputError(f"expected START:STOP:STEP (e.g. 10:, ::5, 100:200), got {text!r}",
                         field="frames") from None
    return slice(*vals)


class _Layout:
    """Where each quantity of a trajectory lives, for either layout: ``datasets`` maps our
    names (step, time, cell, the scalars, the per-atom quantities) to h5py datasets whose
    first axis is the frame; the static per-atom arrays are read on demand."""

    def __init__(self, f: h5py.File, path: str):
        version = schema.check_header(f, schema.KIND_TRAJECTORY, path,
                                      (schema.TRAJECTORY_SCHEMA_VERSION, schema.LEGACY_TRAJECTORY_SCHEMA_VERSION))
        self.h5md = version == schema.TRAJECTORY_SCHEMA_VERSION
        self.f = f
        self.datasets: dict[str, h5py.Dataset] = {}
        if not self.h5md:
            g = f[T.FRAMES]
            self.datasets = {name: g[name] for name in g}
            return
        particles = f[H.particle_path()]
        first = None
        for name in (*T.PER_ATOM, T.CELL, *T.SCALARS):
            where = H.element_path(name)
            if where in f and isinstance(f[where], h5py.Group):
                self.datasets[name] = f[where][H.VALUE]
                first = first or f[where]
        if first is None:
            raise InputError("the H5MD trajectory has no time-dependent element", path=path)
        self.datasets = {T.STEP: first[H.STEP], T.TIME: first[H.TIME], **self.datasets}
        self._particles = particles

    def static(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """types, ids, masses (amu), pbc."""
        f = self.f
        if not self.h5md:
            return f[T.TYPES][...], f[T.IDS][...], f[T.MASSES][...], f[T.PBC][...]
        p = self._particles
        boundary = [_text(b) for b in p[H.BOX].attrs[H.BOUNDARY_ATTR]]
        return (p[H.SPECIES][...], p[H.ID][...], p[H.MASS][...],
                np.array([b == H.PERIODIC for b in boundary], dtype=bool))

    def species(self) -> list[str]:
        species = json.loads(_text(self.f.attrs.get(T.SPECIES_ATTR, "[]")))
        return list(species) if species else []


def read_frames(path: str | os.PathLike, frames: slice = slice(None),
                names: Iterable[str] | None = None) -> TrajectoryFrames:
    """Frames ``frames`` of the trajectory at ``path`` with the datasets ``names``
    (default: all); step, time and cell are always read. Both layouts are read: H5MD
    (:class:`mmtp_hpc.io.schema.H5MD`) and the first one (:class:`mmtp_hpc.io.schema.Trajectory`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    with schema.reading(path, "trajectory"):
        return _read_frames(path, frames, names)


def _read_frames(path: Path, frames: slice, names: Iterable[str] | None) -> TrajectoryFrames:
    with open_trajectory(path) as f:
        layout = _Layout(f, str(path))
        g = layout.datasets
        total = committed_frames(g[T.STEP][...], [ds.shape[0] for ds in g.values()])
        rows = np.arange(total)[frames]
        available = tuple(name for name in g if name not in (T.STEP, T.TIME, T.CELL))
        wanted = list(available) if names is None else [n for n in names if n in g]

        def rows_of(name: str) -> np.ndarray:
            ds = g[name]
            if len(rows) == 0:
                return np.zeros((0, *ds.shape[1:]), dtype=ds.dtype)
            if len(rows) == total and ds.shape[0] == total:
                return ds[...]
            step = frames.step or 1
            if step > 0 and len(rows) > 1 and np.all(np.diff(rows) == step):
                return ds[rows[0]:rows[-1] + 1:step]
            if len(rows) == 1:
                return ds[int(rows[0]):int(rows[0]) + 1]
            return ds[...][rows]

        data = {name: rows_of(name) for name in wanted}
        units = {name: schema.UNITS.get(name, "") for name in g}
        types, ids, masses, pbc = layout.static()
        _check_frames(str(path), g, data, len(types), ids, masses, pbc)
        species = layout.species()
        if len(types) and (types.min() < 0 or (species and types.max() >= len(species))):
            raise InputError(f"atom types {int(types.min())}…{int(types.max())} do not fit the species "
                             f"{species}", path=str(path), field="species")
        time, cell = rows_of(T.TIME), rows_of(T.CELL)
        if not np.all(np.isfinite(time)) or np.any(np.diff(time) <= 0):
            raise InputError("the frame times are not finite and increasing", path=str(path), field="time")
        if not np.all(np.isfinite(cell)):
            raise InputError("a frame's cell is not finite", path=str(path), field="cell")
        return TrajectoryFrames(
            path=str(path), species=layout.species(), types=types, ids=ids, masses=masses,
            pbc=pbc, settings=schema.read_settings(f),
            step=rows_of(T.STEP), time=time, cell=cell,
            data=data, units=units, available=available)


def trajectory_layout(path: str | os.PathLike) -> str:
    """``"h5md"`` or ``"legacy"`` (the first layout, ``/frames``), after checking the header."""
    with schema.reading(path, "trajectory"), open_trajectory(path) as f:
        return "h5md" if _Layout(f, str(path)).h5md else "legacy"


def _check_frames(path: str, datasets: dict, data: dict[str, np.ndarray], n_atoms: int, ids: np.ndarray,
                  masses: np.ndarray, pbc: np.ndarray) -> None:
    """Shapes and dtypes as the schema says; a damaged file is an InputError, not a crash later."""
    if len(ids) != n_atoms or len(masses) != n_atoms or np.shape(pbc) != (3,):
        raise InputError(f"the static atom arrays disagree: {n_atoms} types, {len(ids)} ids, "
                         f"{len(masses)} masses, pbc {np.shape(pbc)}", path=path)
    for name, ds in datasets.items():
        if ds.dtype.kind not in "fiu":
            raise InputError(f"dataset {name!r} holds {ds.dtype}, not numbers", path=path, field=name)
        want = ((n_atoms, *T.PER_ATOM[name]) if name in T.PER_ATOM else (3, 3) if name == T.CELL else ())
        if tuple(ds.shape[1:]) != tuple(want):
            raise InputError(f"dataset {name!r} has frames of shape {tuple(ds.shape[1:])}, expected "
                             f"{tuple(want)}", path=path, field=name)
    if not np.all(np.isfinite(masses)) or np.any(np.asarray(masses) <= 0):
        raise InputError("the atom masses are not all finite and positive", path=path, field="masses")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
