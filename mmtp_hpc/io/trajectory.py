"""HDF5 MD trajectories in the H5MD 1.1 layout: appendable frames with units, settings and the static atom data.

Layout and names: :class:`mmtp_hpc.io.schema.H5MD` (H5MD 1.1, schema version 2). Every
time-dependent ``value`` has ``maxshape=(None, …)``, is chunked along frames and (per-atom
data) shuffle+gzip compressed, and carries an H5MD ``unit`` attribute. Files of the first
layout (:class:`mmtp_hpc.io.schema.Trajectory`, version 1) are still read
(:func:`read_trajectory`, :mod:`mmtp_hpc.io.trajectory_frames`); :func:`convert_legacy`
turns one into the H5MD layout (``mmtp convert old.h5 new.h5``), and a restart converts
the trajectory it continues.

Writing: the file is created atomically (built beside the target, then renamed).
Frames are buffered and appended in place — the file is opened, extended, flushed and
closed on every :meth:`TrajectoryWriter.flush` (the driver flushes at checkpoints, at
the end and whenever the buffer holds 64 MiB or 10 frames), so a killed run leaves a
readable file whose frames are a prefix of the run. :meth:`TrajectoryWriter.append_chunks`
writes one frame whose per-atom rows arrive in bounded chunks (MPI runs: a streamed gather),
straight into the file. A restart truncates the frames that are newer than its checkpoint
(they will be recomputed identically) and goes on appending.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mmtp_hpc import __version__
from mmtp_hpc.errors import InputError
from mmtp_hpc.io import schema
from mmtp_hpc.io.atomic import atomic_path
from mmtp_hpc.io.schema import H5MD as H
from mmtp_hpc.io.schema import H5MD_UNITS
from mmtp_hpc.io.schema import Trajectory as T

_MAX_BUFFER_BYTES = 64 * 2 ** 20
_MAX_BUFFER_FRAMES = 10


def _chunk_rows(row_bytes: int) -> int:
    return int(max(1, min(1024, (256 * 1024) // max(row_bytes, 1))))


def _author() -> str:
    for key in ("MMTP_AUTHOR", "USER", "LOGNAME"):
        if os.environ.get(key):
            return os.environ[key]
    return "unknown"


class TrajectoryWriter:
    """Append frames to an H5MD trajectory file.

    ``store``: per-atom quantities written in every frame (names of ``Trajectory.PER_ATOM``).
    ``restart_step``: None creates a new file (replacing any old one); an integer opens the
    existing file and drops frames with ``step > restart_step`` (a new file is created if
    there is none; a file of the first layout is converted first).
    ``types``, ``ids``, ``masses``: the static per-atom arrays; with ``n_atoms`` given instead,
    they are written later in chunks (:meth:`write_static`).
    """

    def __init__(self, path: str | os.PathLike, store: list[str], *, species: list[str],
                 types: np.ndarray | None = None, ids: np.ndarray | None = None,
                 masses: np.ndarray | None = None, pbc: np.ndarray, settings: dict | None = None,
                 restart_step: int | None = None, n_atoms: int | None = None):
        self.path = Path(path)
        for name in store:
            if name not in T.PER_ATOM:
                raise InputError(f"unknown per-atom quantity {name!r}; known: {', '.join(T.PER_ATOM)}",
                                 field="output.store")
        self.store = list(store)
        self.n_atoms = int(len(types) if n_atoms is None else n_atoms)
        self._buffer: list[dict[str, Any]] = []
        self._buffer_bytes = 0
        self.frames_written = 0
        if restart_step is not None and self.path.exists():
            self._truncate(int(restart_step))
        else:
            self._create(species, types, ids, masses, pbc, settings)

    # ------------------------------------------------------------------ create / truncate
    def _names(self) -> list[str]:
        """Our names of every time-dependent element, the one owning step/time first."""
        return [*self.store, T.CELL, *T.SCALARS]

    def _create(self, species, types, ids, masses, pbc, settings) -> None:
        n = self.n_atoms
        with atomic_path(self.path) as tmp, h5py.File(tmp, "w") as f:
            schema.write_header(f, schema.KIND_TRAJECTORY, settings or {},
                                version=schema.TRAJECTORY_SCHEMA_VERSION)
            f.attrs[T.SPECIES_ATTR] = json.dumps(list(species))
            f.attrs[T.N_ATOMS_ATTR] = n
            meta = f.create_group(H.ROOT)
            meta.attrs[H.VERSION_ATTR] = np.array(H.VERSION, dtype=np.int32)
            meta.create_group(H.AUTHOR).attrs[H.NAME_ATTR] = _author()
            creator = meta.create_group(H.CREATOR)
            creator.attrs[H.NAME_ATTR] = H.CREATOR_NAME
            creator.attrs[H.CREATOR_VERSION_ATTR] = __version__
            p = f.create_group(H.particle_path())
            box = p.create_group(H.BOX)
            box.attrs[H.DIMENSION_ATTR] = np.int32(3)
            box.attrs[H.BOUNDARY_ATTR] = np.array(
                [(H.PERIODIC if b else H.NONPERIODIC) for b in np.asarray(pbc, dtype=bool)], dtype="S8")
            static = {H.SPECIES: np.int64, H.ID: np.int64, H.MASS: np.float64}
            for name, dtype in static.items():
                ds = p.create_dataset(name, shape=(n,), dtype=dtype, chunks=(min(max(n, 1), 2 ** 16),),
                                      compression="gzip", compression_opts=1, shuffle=True)
                if name == H.MASS:
                    ds.attrs[H.UNIT_ATTR] = H5MD_UNITS["masses"]
            p[H.SPECIES].attrs[H.SPECIES_NAMES_ATTR] = json.dumps(list(species))
            if types is not None:
                p[H.SPECIES][...] = np.asarray(types, dtype=np.int64)
                p[H.ID][...] = np.asarray(ids, dtype=np.int64)
                p[H.MASS][...] = np.asarray(masses, dtype=np.float64)
            step = time = None
            for name in self._names():
                shape, compress = (), False
                if name in T.PER_ATOM:
                    shape, compress = (n, *T.PER_ATOM[name]), True
                elif name == T.CELL:
                    shape = (3, 3)
                g = f.create_group(H.element_path(name))
                self._value(g, name, shape, compress)
                if step is None:
                    step = g.create_dataset(H.STEP, shape=(0,), maxshape=(None,), dtype=np.int64,
                                            chunks=(1024,))
                    time = g.create_dataset(H.TIME, shape=(0,), maxshape=(None,), dtype=np.float64,
                                            chunks=(1024,))
                    time.attrs[H.UNIT_ATTR] = H5MD_UNITS["time"]
                else:                      # H5MD allows (and MDAnalysis follows) hard links
                    g[H.STEP] = step
                    g[H.TIME] = time

    @staticmethod
    def _value(g: h5py.Group, name: str, shape: tuple[int, ...], compress: bool) -> None:
        row_bytes = int(np.prod(shape, dtype=np.int64)) * 8
        chunks = (_chunk_rows(row_bytes), *shape)
        if chunks[0] == 1 and len(shape) >= 1:
            # large frames: one frame per chunk, at most 2^17 values (1 MiB) along the atoms
            width = int(np.prod(shape[1:], dtype=np.int64))
            chunks = (1, max(1, min(shape[0], 2 ** 17 // max(1, width))), *shape[1:])
        opts: dict[str, Any] = {"chunks": chunks}
        if compress:
            opts.update(compression="gzip", compression_opts=1, shuffle=True)
        ds = g.create_dataset(H.VALUE, shape=(0, *shape), maxshape=(None, *shape), dtype=np.float64, **opts)
        ds.attrs[H.UNIT_ATTR] = H5MD_UNITS[name]

    def _datasets(self, f: h5py.File) -> list[h5py.Dataset]:
        """Every appendable dataset once: the values and the shared step and time."""
        names = self._names()
        first = f[H.element_path(names[0])]
        return [first[H.STEP], first[H.TIME], *(f[H.element_path(name)][H.VALUE] for name in names)]

    def _truncate(self, restart_step: int) -> None:
        from mmtp_hpc.io.trajectory_frames import trajectory_layout

        try:
            legacy = trajectory_layout(self.path) == "legacy"
        except (OSError, InputError) as exc:
            raise InputError(f"cannot open the trajectory to continue it ({exc}); move it away to "
                             "start a new one", path=str(self.path)) from None
        if legacy:                      # continue in the H5MD layout
            with atomic_path(self.path, copy_existing=False) as tmp:
                convert_legacy(self.path, tmp)
        try:
            f = h5py.File(self.path, "a")
        except OSError as exc:
            raise InputError(f"cannot open the trajectory to continue it ({exc}); move it away to "
                             "start a new one", path=str(self.path)) from None
        with f:
            schema.check_header(f, schema.KIND_TRAJECTORY, str(self.path), (schema.TRAJECTORY_SCHEMA_VERSION,))
            if int(f.attrs[T.N_ATOMS_ATTR]) != self.n_atoms:
                raise InputError(f"trajectory has {int(f.attrs[T.N_ATOMS_ATTR])} atoms, the run "
                                 f"{self.n_atoms}", path=str(self.path))
            names = self._names()
            missing = [name for name in names if H.element_path(name) not in f]
            extra = [name for name in T.PER_ATOM if name not in self.store and H.element_path(name) in f]
            if missing or extra:
                raise InputError(f"trajectory stores {[n for n in T.PER_ATOM if H.element_path(n) in f]}, "
                                 f"the run {self.store}; [output] store must match the file being "
                                 "continued", path=str(self.path), field="output.store")
            datasets = self._datasets(f)
            steps = datasets[0][...]
            keep = int(np.searchsorted(steps, restart_step, side="right"))
            for ds in datasets:
                if ds.shape[0] > keep:
                    ds.resize(keep, axis=0)
            self.frames_written = keep

    # ------------------------------------------------------------------ frames
    def _row(self, frame: dict[str, Any], per_atom: bool = True) -> dict[str, Any]:
        row = {T.STEP: int(frame[T.STEP]), T.TIME: float(frame[T.TIME]),
               T.CELL: np.array(frame[T.CELL], dtype=np.float64)}  # a copy: the state changes in place
        for name in T.SCALARS:
            row[name] = float(frame.get(name, np.nan))
        if per_atom:
            for name in self.store:
                value = frame.get(name)
                shape = (self.n_atoms, *T.PER_ATOM[name])
                row[name] = (np.full(shape, np.nan) if value is None
                             else np.array(value, dtype=np.float64).reshape(shape))
        return row

    def append(self, frame: dict[str, Any]) -> None:
        """Buffer one frame: step, time, cell, the scalars and the stored per-atom arrays."""
        row = self._row(frame)
        self._buffer_bytes += sum(row[name].nbytes for name in self.store)
        self._buffer.append(row)
        if self._buffer_bytes >= _MAX_BUFFER_BYTES or len(self._buffer) >= _MAX_BUFFER_FRAMES:
            self.flush()

    def append_chunks(self, frame: dict[str, Any],
                      chunks: Iterable[tuple[int, dict[str, np.ndarray]]]) -> None:
        """Write one frame now: step, time, cell and scalars from ``frame``, the stored per-atom
        arrays from ``chunks`` — pairs (first row, {name: rows}) in any order that together
        cover the N atoms. Rows never named in a chunk stay NaN."""
        self.flush()
        row = self._row(frame, per_atom=False)
        with h5py.File(self.path, "a") as f:
            datasets = self._datasets(f)
            k = datasets[0].shape[0]
            for ds in datasets:
                ds.resize(k + 1, axis=0)
            self._write_scalars(f, k, [row])
            values = {name: f[H.element_path(name)][H.VALUE] for name in self.store}
            for name, ds in values.items():
                ds[k] = np.nan       # placeholder: every chunk of the frame is written below
            for start, block in chunks:
                for name, rows in block.items():
                    if name in values:
                        rows = np.asarray(rows, dtype=np.float64)
                        values[name][k, start:start + len(rows)] = rows.reshape(
                            (len(rows), *T.PER_ATOM[name]))
            f.flush()
        self.frames_written = k + 1

    def _write_scalars(self, f: h5py.File, start: int, rows: list[dict[str, Any]]) -> None:
        first = f[H.element_path(self._names()[0])]
        k = len(rows)
        first[H.STEP][start:start + k] = np.array([r[T.STEP] for r in rows], dtype=np.int64)
        first[H.TIME][start:start + k] = np.array([r[T.TIME] for r in rows], dtype=np.float64)
        for name in (T.CELL, *T.SCALARS):
            f[H.element_path(name)][H.VALUE][start:start + k] = np.stack([np.asarray(r[name]) for r in rows])

    def write_static(self, chunks: Iterable[tuple[int, dict[str, np.ndarray]]]) -> None:
        """Static per-atom arrays (``types``, ``ids``, ``masses``) from chunks (first row, {name: rows})."""
        names = {"types": H.SPECIES, "ids": H.ID, "masses": H.MASS}
        with h5py.File(self.path, "a") as f:
            p = f[H.particle_path()]
            for start, block in chunks:
                for name, rows in block.items():
                    ds = p[names[name]]
                    ds[start:start + len(rows)] = np.asarray(rows).astype(ds.dtype) if name != "masses" \
                        else np.asarray(rows, dtype=np.float64)

    def flush(self) -> None:
        """Append the buffered frames to the file (open, extend, flush, close)."""
        if not self._buffer:
            return
        k = len(self._buffer)
        with h5py.File(self.path, "a") as f:
            datasets = self._datasets(f)
            start = datasets[0].shape[0]
            for ds in datasets:
                ds.resize(start + k, axis=0)
            self._write_scalars(f, start, self._buffer)
            for name in self.store:
                f[H.element_path(name)][H.VALUE][start:start + k] = np.stack([r[name] for r in self._buffer])
            f.flush()
        self.frames_written = start + k
        self._buffer.clear()
        self._buffer_bytes = 0

    def close(self) -> None:
        self.flush()


def read_trajectory(path: str | os.PathLike) -> dict[str, Any]:
    """All of a trajectory (either layout) as arrays: the frame quantities by our names (step,
    time, cell, the scalars, the stored per-atom arrays), plus ``types``, ``ids``, ``masses``,
    ``pbc``, ``species`` and ``settings`` (dict)."""
    from mmtp_hpc.io.trajectory_frames import read_frames

    t = read_frames(path)
    out: dict[str, Any] = {T.STEP: t.step, T.TIME: t.time, T.CELL: t.cell, **t.data}
    out.update({T.TYPES: t.types, T.IDS: t.ids, T.MASSES: t.masses, T.PBC: t.pbc,
                "species": t.species, "settings": t.settings})
    return out


def convert_legacy(src: str | os.PathLike, dst: str | os.PathLike, frames_per_read: int = 16) -> int:
    """Write the trajectory ``src`` (first layout, ``/frames``) to ``dst`` in the H5MD layout,
    a few frames at a time; returns the number of frames. The values are copied exactly."""
    from mmtp_hpc.io.trajectory_frames import read_frames, trajectory_layout

    if trajectory_layout(src) != "legacy":
        raise InputError("the trajectory is already in the H5MD layout", path=str(src))
    head = read_frames(src, slice(0, 0))
    store = [name for name in T.PER_ATOM if name in head.available]
    writer = TrajectoryWriter(dst, store, species=head.species, types=head.types, ids=head.ids,
                              masses=head.masses, pbc=head.pbc, settings=head.settings)
    with h5py.File(src, "r") as f:
        total = f[T.FRAMES][T.STEP].shape[0]
    for start in range(0, total, frames_per_read):
        t = read_frames(src, slice(start, min(total, start + frames_per_read)))
        for k in range(t.n_frames):
            frame = {T.STEP: t.step[k], T.TIME: t.time[k], T.CELL: t.cell[k]}
            frame.update({name: t.data[name][k] for name in (*T.SCALARS, *store) if name in t.data})
            writer.append(frame)
    writer.close()
    return total
