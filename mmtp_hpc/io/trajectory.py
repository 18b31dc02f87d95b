"""HDF5 MD trajectories in the H5MD 1.1 layout: appendable frames with units, settings and the static atom data.

Layout and names: :class:`mmtp_hpc.io.schema.H5MD` (H5MD 1.1, schema version 2). Every
time-dependent ``value`` has ``maxshape=(None, …)``, is chunked along frames and (per-atom
data) shuffle+gzip compressed, and carries an H5MD ``unit`` attribute. Files of the first
layout (:class:`mmtp_hpc.io.schema.Trajectory`, version 1) are still read
(:func:`read_trajectory`, :mod:`mmtp_hpc.io.trajectory_frames`); :func:`convert_legacy`
turns one into the H5MD layout (``mmtp convert old.h5 new.h5``), and a restart converts
the trajectory it continues.

Writing: the file is created atomically (built beside the target, then renamed) in HDF5's
newest format, then held open in single-writer/multiple-reader (SWMR) mode for the run.
Frames are buffered and appended (the driver flushes at checkpoints, at the end and whenever
the buffer holds 64 MiB or 10 frames); every append writes the per-atom values, cell and
scalars first and the frame's ``time`` and ``step`` last, each flushed, so ``step`` is the
commit marker: a reader — :func:`open_trajectory` (``mmtp post``, ``mmtp info``, or
``h5py.File(path, "r", swmr=True)``) — can open the file at any moment during the run without
disturbing the writer, and a writer killed at any moment leaves a file whose committed
frames are intact. :meth:`TrajectoryWriter.append_chunks` writes one frame whose per-atom
rows arrive in bounded chunks (MPI runs: a streamed gather), straight into the file. A restart
rebuilds the file from the frames up to its checkpoint (copied exactly; newer frames will be
recomputed identically) and goes on appending, so a killed and restarted run ends with the
same datasets as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mmtp_hpc import __version__
from mmtp_hpc.errors import InputError, OutputError
from mmtp_hpc.io import schema
from mmtp_hpc.io.atomic import atomic_path
from mmtp_hpc.io.schema import H5MD as H
from mmtp_hpc.io.schema import H5MD_UNITS
from mmtp_hpc.io.schema import Trajectory as T
from mmtp_hpc.io.trajectory_frames import committed_frames, open_trajectory

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
                 restart_step: int | None = None, n_atoms: int | None = None, compress: bool = True):
        self.path = Path(path)
        self.compress = bool(compress)
        for name in store:
            if name not in T.PER_ATOM:
                raise InputError(f"unknown per-atom quantity {name!r}; known: {', '.join(T.PER_ATOM)}",
                                 field="output.store")
        self.store = list(store)
        self.n_atoms = int(len(types) if n_atoms is None else n_atoms)
        self._buffer: list[dict[str, Any]] = []
        self._buffer_bytes = 0
        self.frames_written = 0
        self._file: h5py.File | None = None
        if restart_step is not None and self.path.exists():
            self._continue(int(restart_step), settings)
        else:
            with atomic_path(self.path) as tmp:
                self._create(tmp, species, types, ids, masses, pbc, settings)
                self._handle(tmp)     # in SWMR mode before any reader can see the file

    # ------------------------------------------------------------------ create / truncate
    def _names(self) -> list[str]:
        """Our names of every time-dependent element, the one owning step/time first."""
        return [*self.store, T.CELL, *T.SCALARS]

    def _create(self, target: Path, species, types, ids, masses, pbc, settings) -> None:
        n = self.n_atoms
        with h5py.File(target, "w", libver="latest") as f:
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
                    shape, compress = (n, *T.PER_ATOM[name]), self.compress
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
        # NaN where a frame was extended but not written (see append_chunks)
        ds = g.create_dataset(H.VALUE, shape=(0, *shape), maxshape=(None, *shape), dtype=np.float64,
                              fillvalue=np.nan, **opts)
        ds.attrs[H.UNIT_ATTR] = H5MD_UNITS[name]

    def _datasets(self, f: h5py.File) -> list[h5py.Dataset]:
        """Every appendable dataset once: the values and the shared step and time."""
        names = self._names()
        first = f[H.element_path(names[0])]
        return [first[H.STEP], first[H.TIME], *(f[H.element_path(name)][H.VALUE] for name in names)]

    def _continue(self, restart_step: int, settings: dict | None) -> None:
        """Rebuild the file from its frames with ``step <= restart_step`` (values copied
        exactly, a few frames at a time), atomically. Works on a file left behind by a killed
        writer (read in SWMR mode) and converts a file of the first layout."""
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
            src = open_trajectory(self.path)
        except OSError as exc:
            raise InputError(f"cannot open the trajectory to continue it ({exc}); move it away to "
                             "start a new one", path=str(self.path)) from None
        with src:
            schema.check_header(src, schema.KIND_TRAJECTORY, str(self.path), (schema.TRAJECTORY_SCHEMA_VERSION,))
            if int(src.attrs[T.N_ATOMS_ATTR]) != self.n_atoms:
                raise InputError(f"trajectory has {int(src.attrs[T.N_ATOMS_ATTR])} atoms, the run "
                                 f"{self.n_atoms}", path=str(self.path))
            names = self._names()
            missing = [name for name in names if H.element_path(name) not in src]
            extra = [name for name in T.PER_ATOM if name not in self.store and H.element_path(name) in src]
            if missing or extra:
                raise InputError(f"trajectory stores {[n for n in T.PER_ATOM if H.element_path(n) in src]}, "
                                 f"the run {self.store}; [output] store must match the file being "
                                 "continued", path=str(self.path), field="output.store")
            old = self._datasets(src)
            steps = old[0][...]
            total = committed_frames(steps, [ds.shape[0] for ds in old])
            keep = int(np.searchsorted(steps[:total], restart_step, side="right"))
            p = src[H.particle_path()]
            species = json.loads(_text(src.attrs.get(T.SPECIES_ATTR, "[]")))
            boundary = [_text(b) for b in p[H.BOX].attrs[H.BOUNDARY_ATTR]]
            pbc = np.array([b == H.PERIODIC for b in boundary], dtype=bool)
            if settings is None:
                settings = schema.read_settings(src)
            with atomic_path(self.path) as tmp:
                self._create(tmp, species, p[H.SPECIES][...], p[H.ID][...], p[H.MASS][...], pbc, settings)
                with h5py.File(tmp, "a", libver="latest") as dst:
                    new = self._datasets(dst)
                    for ds in new:
                        ds.resize(keep, axis=0)
                    block = max(1, _chunk_rows(8 * max(self.n_atoms, 1) * 3))
                    for start in range(0, keep, block):
                        stop = min(keep, start + block)
                        for a, b in zip(old, new, strict=True):
                            b[start:stop] = a[start:stop]
                self._handle(tmp)     # in SWMR mode before any reader can see the new file
        self.frames_written = keep

    def _handle(self, where: Path | None = None) -> h5py.File:
        """The file, opened once for appending in SWMR mode (readers may open it meanwhile).
        ``where``: the temporary file that is about to be renamed to the trajectory."""
        if self._file is None:
            try:
                f = h5py.File(where or self.path, "a", libver="latest")
            except (OSError, RuntimeError) as exc:
                raise OutputError(f"cannot open the trajectory for writing ({_reason(exc)})",
                                  path=str(self.path)) from None
            try:
                f.swmr_mode = True
            except (OSError, ValueError, RuntimeError) as exc:
                f.close()
                raise OutputError(f"cannot start SWMR writing ({_reason(exc)})", path=str(self.path)) from None
            self._file = f
        return self._file

    def _commit(self, f: h5py.File, start: int, rows: list[dict[str, Any]], per_atom: bool) -> None:
        """Write frames ``start`` … of ``rows``: every value (resized, written, flushed) first,
        then time and step, the commit marker."""
        k = len(rows)
        first = f[H.element_path(self._names()[0])]
        for name in (T.CELL, *T.SCALARS):
            ds = f[H.element_path(name)][H.VALUE]
            ds.resize(start + k, axis=0)
            ds[start:start + k] = np.stack([np.asarray(r[name]) for r in rows])
            ds.flush()
        if per_atom:
            for name in self.store:
                ds = f[H.element_path(name)][H.VALUE]
                ds.resize(start + k, axis=0)
                ds[start:start + k] = np.stack([r[name] for r in rows])
                ds.flush()
        for key, name, dtype in ((H.TIME, T.TIME, np.float64), (H.STEP, T.STEP, np.int64)):
            ds = first[key]
            ds.resize(start + k, axis=0)
            ds[start:start + k] = np.array([r[name] for r in rows], dtype=dtype)
            ds.flush()

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
        cover the N atoms. Rows never named in a chunk stay NaN. Every chunk is consumed (the
        other ranks are sending them) even when writing fails."""
        self.flush()
        row = self._row(frame, per_atom=False)
        chunks = iter(chunks)
        k = self.frames_written
        try:
            f = self._handle()
            values = {name: f[H.element_path(name)][H.VALUE] for name in self.store}
            for ds in values.values():
                ds.resize(k + 1, axis=0)
                if not np.isnan(ds.fillvalue):
                    # a file written before the NaN fill value: rows no chunk names read NaN too
                    # (a whole array: h5py broadcasts a scalar one element at a time)
                    ds[k] = np.full(ds.shape[1:], np.nan)
            for start, block in chunks:
                for name, rows in block.items():
                    if name in values:
                        rows = np.asarray(rows, dtype=np.float64)
                        values[name][k, start:start + len(rows)] = rows.reshape(
                            (len(rows), *T.PER_ATOM[name]))
            for ds in values.values():
                ds.flush()
            self._commit(f, k, [row], per_atom=False)
        except (OSError, RuntimeError, OutputError) as exc:
            for _ in chunks:          # receive the rest, so that no rank waits forever
                pass
            if isinstance(exc, OutputError):
                raise
            raise OutputError(f"cannot write the frame of step {row[T.STEP]} ({_reason(exc)})",
                              path=str(self.path)) from None
        self.frames_written = k + 1

    def write_static(self, chunks: Iterable[tuple[int, dict[str, np.ndarray]]]) -> None:
        """Static per-atom arrays (``types``, ``ids``, ``masses``) from chunks (first row, {name: rows})."""
        names = {"types": H.SPECIES, "ids": H.ID, "masses": H.MASS}
        chunks = iter(chunks)
        try:
            f = self._handle()
            p = f[H.particle_path()]
            for start, block in chunks:
                for name, rows in block.items():
                    ds = p[names[name]]
                    ds[start:start + len(rows)] = np.asarray(rows).astype(ds.dtype) if name != "masses" \
                        else np.asarray(rows, dtype=np.float64)
            for name in names.values():
                p[name].flush()
        except (OSError, RuntimeError, OutputError) as exc:
            for _ in chunks:
                pass
            if isinstance(exc, OutputError):
                raise
            raise OutputError(f"cannot write the atom types and ids ({_reason(exc)})", path=str(self.path)) from None

    def flush(self) -> None:
        """Append the buffered frames to the file, committed (readers see them)."""
        if not self._buffer:
            return
        try:
            self._commit(self._handle(), self.frames_written, self._buffer, per_atom=True)
        except (OSError, RuntimeError) as exc:
            raise OutputError(f"cannot write the frames of steps {self._buffer[0][T.STEP]}–"
                              f"{self._buffer[-1][T.STEP]} ({_reason(exc)})", path=str(self.path)) from None
        self.frames_written += len(self._buffer)
        self._buffer.clear()
        self._buffer_bytes = 0

    def close(self) -> None:
        """Write what is buffered and close the file (which clears its SWMR mark)."""
        try:
            self.flush()
        finally:
            self._release()

    def abandon(self) -> None:
        """After an error: drop the buffer and let go of the file without writing more (the
        committed frames stay; a restart rebuilds the file up to its checkpoint)."""
        self._buffer.clear()
        self._buffer_bytes = 0
        self._release()

    def _release(self) -> None:
        if self._file is not None:
            f, self._file = self._file, None
            try:
                f.close()
            except (OSError, RuntimeError):
                pass


def _reason(exc: BaseException) -> str:
    """An OS error in words ("No space left on device", "Permission denied", ...)."""
    errno = getattr(exc, "errno", None)
    text = str(exc)
    found = re.search(r"error message = '([^']*)'", text)   # HDF5's system error, without its dump
    if found:
        text = found.group(1)
    if errno:
        words = os.strerror(errno)
        return text if words in text else f"{words}: {text}"
    return text or type(exc).__name__


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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
