"""Read a selection of frames and datasets from an MD trajectory file, for analysis and export.

:func:`mmtp_hpc.io.trajectory.read_trajectory` loads a whole file; this reader takes a
frame slice and the names wanted, so post-processing a long run reads only what it needs
(HDF5 reads just the chunks of the selected rows). Names, units and layout are those of
:class:`mmtp_hpc.io.schema.Trajectory`; the header and schema version are checked.
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


def is_trajectory(path: str | os.PathLike) -> bool:
    """True when ``path`` is an HDF5 file whose root says ``kind = "trajectory"``."""
    try:
        with h5py.File(path, "r") as f:
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


def read_frames(path: str | os.PathLike, frames: slice = slice(None),
                names: Iterable[str] | None = None) -> TrajectoryFrames:
    """Frames ``frames`` of the trajectory at ``path`` with the datasets ``names``
    (default: all); step, time and cell are always read."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    with h5py.File(path, "r") as f:
        schema.check_header(f, schema.KIND_TRAJECTORY, str(path))
        g = f[T.FRAMES]
        total = g[T.STEP].shape[0]
        rows = np.arange(total)[frames]
        available = tuple(name for name in g if name not in (T.STEP, T.TIME, T.CELL))
        wanted = list(available) if names is None else [n for n in names if n in g]

        def rows_of(name: str) -> np.ndarray:
            ds = g[name]
            if len(rows) == 0:
                return np.zeros((0, *ds.shape[1:]), dtype=ds.dtype)
            if len(rows) == total:
                return ds[...]
            step = frames.step or 1
            if step > 0 and len(rows) > 1 and np.all(np.diff(rows) == step):
                return ds[rows[0]:rows[-1] + 1:step]
            return ds[...][rows]

        data = {name: rows_of(name) for name in wanted}
        units = {name: _text(g[name].attrs.get(schema.UNITS_ATTR, "")) for name in g}
        raw = f.attrs.get(T.SPECIES_ATTR, "[]")
        species = json.loads(_text(raw))
        return TrajectoryFrames(
            path=str(path), species=list(species) if species else [],
            types=f[T.TYPES][...], ids=f[T.IDS][...], masses=f[T.MASSES][...],
            pbc=f[T.PBC][...], settings=schema.read_settings(f),
            step=rows_of(T.STEP), time=rows_of(T.TIME), cell=rows_of(T.CELL),
            data=data, units=units, available=available)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
