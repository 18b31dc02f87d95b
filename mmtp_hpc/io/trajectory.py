"""HDF5 MD trajectories: appendable frames with units, settings and the static atom data.

Layout and names: :class:`mmtp_hpc.io.schema.Trajectory`. Every per-frame dataset has
``maxshape=(None, …)``, is chunked along frames and (per-atom data) shuffle+gzip
compressed; every dataset with a unit carries a ``units`` attribute.

Writing: the file is created atomically (built beside the target, then renamed).
Frames are buffered and appended in place — the file is opened, extended, flushed and
closed on every :meth:`TrajectoryWriter.flush` (the driver flushes at checkpoints, at
the end and whenever the buffer holds 64 MiB or 10 frames), so a killed run leaves a
readable file whose frames are a prefix of the run. A restart truncates the frames that
are newer than its checkpoint (they will be recomputed identically) and goes on appending.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mmtp_hpc.errors import InputError
from mmtp_hpc.io import schema
from mmtp_hpc.io.atomic import atomic_path
from mmtp_hpc.io.schema import Trajectory as T

_MAX_BUFFER_BYTES = 64 * 2 ** 20
_MAX_BUFFER_FRAMES = 10


def _chunk_rows(row_bytes: int) -> int:
    return int(max(1, min(1024, (256 * 1024) // max(row_bytes, 1))))


class TrajectoryWriter:
    """Append frames to a trajectory file.

    ``store``: per-atom quantities written in every frame (names of ``Trajectory.PER_ATOM``).
    ``restart_step``: None creates a new file (replacing any old one); an integer opens the
    existing file and drops frames with ``step > restart_step`` (a new file is created if
    there is none).
    """

    def __init__(self, path: str | os.PathLike, store: list[str], *, species: list[str],
                 types: np.ndarray, ids: np.ndarray, masses: np.ndarray, pbc: np.ndarray,
                 settings: dict | None = None, restart_step: int | None = None):
        self.path = Path(path)
        for name in store:
            if name not in T.PER_ATOM:
                raise InputError(f"unknown per-atom quantity {name!r}; known: {', '.join(T.PER_ATOM)}",
                                 field="output.store")
        self.store = list(store)
        self.n_atoms = len(types)
        self._buffer: list[dict[str, Any]] = []
        self._buffer_bytes = 0
        self.frames_written = 0
        if restart_step is not None and self.path.exists():
            self._truncate(int(restart_step))
        else:
            self._create(species, types, ids, masses, pbc, settings)

    # ------------------------------------------------------------------ create / truncate
    def _create(self, species, types, ids, masses, pbc, settings) -> None:
        n = self.n_atoms
        with atomic_path(self.path) as tmp, h5py.File(tmp, "w") as f:
            schema.write_header(f, schema.KIND_TRAJECTORY, settings or {})
            f.attrs[T.SPECIES_ATTR] = json.dumps(list(species))
            f.attrs[T.N_ATOMS_ATTR] = n
            f.create_dataset(T.TYPES, data=np.asarray(types, dtype=np.int64))
            f.create_dataset(T.IDS, data=np.asarray(ids, dtype=np.int64))
            schema.set_units(f.create_dataset(T.MASSES, data=np.asarray(masses, dtype=np.float64)), "masses")
            f.create_dataset(T.PBC, data=np.asarray(pbc, dtype=bool))
            g = f.create_group(T.FRAMES)
            self._dataset(g, T.STEP, (), np.int64)
            self._dataset(g, T.TIME, (), np.float64)
            self._dataset(g, T.CELL, (3, 3), np.float64)
            for name in T.SCALARS:
                self._dataset(g, name, (), np.float64)
            for name in self.store:
                self._dataset(g, name, (n, *T.PER_ATOM[name]), np.float64, compress=True)

    @staticmethod
    def _dataset(g: h5py.Group, name: str, shape: tuple[int, ...], dtype, compress: bool = False) -> None:
        row_bytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        opts: dict[str, Any] = {"chunks": (_chunk_rows(row_bytes), *shape)}
        if compress:
            opts.update(compression="gzip", compression_opts=1, shuffle=True)
        ds = g.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype, **opts)
        schema.set_units(ds, name)

    def _truncate(self, restart_step: int) -> None:
        try:
            f = h5py.File(self.path, "a")
        except OSError as exc:
            raise InputError(f"cannot open the trajectory to continue it ({exc}); move it away to "
                             "start a new one", path=str(self.path)) from None
        with f:
            schema.check_header(f, schema.KIND_TRAJECTORY, str(self.path))
            if int(f.attrs[T.N_ATOMS_ATTR]) != self.n_atoms:
                raise InputError(f"trajectory has {int(f.attrs[T.N_ATOMS_ATTR])} atoms, the run "
                                 f"{self.n_atoms}", path=str(self.path))
            g = f[T.FRAMES]
            missing = [name for name in self.store if name not in g]
            if missing:
                raise InputError(f"trajectory does not store {missing}; [output] store must match "
                                 "the file being continued", path=str(self.path), field="output.store")
            steps = g[T.STEP][...]
            keep = int(np.searchsorted(steps, restart_step, side="right"))
            for ds in g.values():
                if ds.shape[0] > keep:
                    ds.resize(keep, axis=0)
            self.frames_written = keep

    # ------------------------------------------------------------------ frames
    def append(self, frame: dict[str, Any]) -> None:
        """Buffer one frame: step, time, cell, the scalars and the stored per-atom arrays."""
        row = {T.STEP: int(frame[T.STEP]), T.TIME: float(frame[T.TIME]),
               T.CELL: np.array(frame[T.CELL], dtype=np.float64)}  # a copy: the state changes in place
        for name in T.SCALARS:
            row[name] = float(frame.get(name, np.nan))
        for name in self.store:
            value = frame.get(name)
            shape = (self.n_atoms, *T.PER_ATOM[name])
            row[name] = (np.full(shape, np.nan) if value is None
                         else np.array(value, dtype=np.float64).reshape(shape))
            self._buffer_bytes += row[name].nbytes
        self._buffer.append(row)
        if self._buffer_bytes >= _MAX_BUFFER_BYTES or len(self._buffer) >= _MAX_BUFFER_FRAMES:
            self.flush()

    def flush(self) -> None:
        """Append the buffered frames to the file (open, extend, flush, close)."""
        if not self._buffer:
            return
        k = len(self._buffer)
        with h5py.File(self.path, "a") as f:
            g = f[T.FRAMES]
            start = g[T.STEP].shape[0]
            for name in [T.STEP, T.TIME, T.CELL, *T.SCALARS, *self.store]:
                ds = g[name]
                ds.resize(start + k, axis=0)
                ds[start:start + k] = np.stack([np.asarray(r[name]) for r in self._buffer])
            f.flush()
        self.frames_written = start + k
        self._buffer.clear()
        self._buffer_bytes = 0

    def close(self) -> None:
        self.flush()


def read_trajectory(path: str | os.PathLike) -> dict[str, Any]:
    """All of a trajectory as arrays: the frame datasets by name, plus ``types``, ``ids``,
    ``masses``, ``pbc``, ``species`` and ``settings`` (dict)."""
    path = Path(path)
    with h5py.File(path, "r") as f:
        schema.check_header(f, schema.KIND_TRAJECTORY, str(path))
        out: dict[str, Any] = {name: ds[...] for name, ds in f[T.FRAMES].items()}
        for name in (T.TYPES, T.IDS, T.MASSES, T.PBC):
            out[name] = f[name][...]
        raw = f.attrs[T.SPECIES_ATTR]
        out["species"] = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        out["settings"] = schema.read_settings(f)
    return out
