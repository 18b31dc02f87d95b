"""The output files of one ``mmtp md`` run: one run at a time, nothing overwritten silently,
restarts that continue the same physics.

- :class:`RunLock`: an exclusive ``flock`` on ``.<file>.lock`` beside each output file, held
  by rank 0 for the whole run. A second run on the same files is refused with the first
  run's pid, host and start time. The kernel drops the lock when the process dies (also on
  ``kill -9``), so a stale lock file never blocks a restart; a run that ends removes it.
- :func:`check_fresh_start`: a plain run (no ``--restart``) refuses to replace an existing
  checkpoint or trajectory unless ``--overwrite`` is given.
- :func:`check_restart`: a restart compares the checkpoint's potential hash and the settings
  that change the physics with the current ones and refuses a mismatch unless
  ``--allow-changes`` is given.
- :func:`remove_stale_temporaries`: temporary files of atomic writes that a killed run left
  beside its outputs (``.<file>.*.tmp``) are removed (only while holding the lock).
- :func:`truncate_log`: a restart drops the log lines of steps after its checkpoint, so the
  log continues without repeating steps.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
from pathlib import Path

from mmtp_hpc.errors import InputError

# settings sections and keys whose change alters the trajectory a restart would produce
_PHYSICS_SECTIONS = ("md", "moments", "potential")
_NOT_PHYSICS = {("md", "steps"), ("potential", "threads"), ("potential", "file")}


class RunLock:
    """Exclusive locks on the output files of a run (rank 0 only)."""

    def __init__(self, paths: list[Path]):
        self.paths = sorted({Path(p).resolve() for p in paths if p is not None})
        self._held: list[tuple[Path, int]] = []

    @staticmethod
    def lock_path(path: Path) -> Path:
        return path.parent / f".{path.name}.lock"

    def acquire(self) -> None:
        import fcntl

        for path in self.paths:
            lock = self.lock_path(path)
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise InputError(f"cannot create the lock file {lock} ({exc.strerror})", path=str(path)) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = ""
                with contextlib.suppress(OSError, ValueError):
                    info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
                    holder = (f" (pid {info.get('pid')} on {info.get('host')}, started "
                              f"{info.get('started')})")
                os.close(fd)
                self.release()
                raise InputError(f"another mmtp md run{holder} is writing this file; wait for it to end "
                                 "or give this run other output names ([output] trajectory, checkpoint, "
                                 "log)", path=str(path)) from None
            info = {"pid": os.getpid(), "host": socket.gethostname(),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            self._held.append((lock, fd))

    def release(self) -> None:
        for lock, fd in self._held:
            with contextlib.suppress(OSError):
                lock.unlink()
            with contextlib.suppress(OSError):
                os.close(fd)
        self._held = []

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def remove_stale_temporaries(paths: list[Path]) -> list[Path]:
    """Remove ``.<name>.*.tmp`` files (atomic writes a killed run left) beside ``paths``."""
    removed = []
    for path in {Path(p) for p in paths if p is not None}:
        directory = path.parent if str(path.parent) else Path(".")
        if not directory.is_dir():
            continue
        for tmp in directory.glob(f".{path.name}.*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def check_fresh_start(checkpoint: Path | None, trajectory: Path | None, input_name: str) -> None:
    """A run without --restart must not replace a checkpoint or trajectory silently."""
    existing = [p for p in (checkpoint, trajectory) if p is not None and p.exists()]
    if not existing:
        return
    what = ", ".join(str(p) for p in existing)
    restart = f"mmtp md {input_name} --restart" if checkpoint is not None and checkpoint.exists() else None
    hint = (f"continue the run with `{restart}`, or start again from step 0 with `--overwrite`"
            if restart else "start again from step 0 with `--overwrite`, or choose other [output] names")
    raise InputError(f"{what} already exist(s) from an earlier run: {hint}")


def physics_changes(saved: dict, current: dict) -> list[str]:
    """'section.key: old → new' for the settings that change the dynamics."""
    out = []
    for section in _PHYSICS_SECTIONS:
        old, new = saved.get(section, {}) or {}, current.get(section, {}) or {}
        for key in sorted(set(old) | set(new)):
            if (section, key) in _NOT_PHYSICS:
                continue
            a, b = _normal(old.get(key)), _normal(new.get(key))
            if a != b:
                out.append(f"{section}.{key}: {old.get(key)!r} → {new.get(key)!r}")
    return out


def _normal(value):
    return json.loads(json.dumps(value, default=str))


def read_checkpoint_header(path: Path) -> dict:
    """Step, potential hash and settings of a checkpoint, without reading its atoms."""
    import h5py

    from mmtp_hpc.io import schema
    from mmtp_hpc.io.schema import Checkpoint as C

    try:
        with h5py.File(path, "r") as f:
            schema.check_header(f, schema.KIND_CHECKPOINT, str(path))
            sha = f.attrs.get(C.POTENTIAL_SHA_ATTR, "")
            with schema.reading(path, "checkpoint"):
                head = {"step": int(f.attrs.get(C.STEP_ATTR, 0)),
                        "potential_sha256": sha.decode() if isinstance(sha, bytes) else str(sha),
                        "settings": schema.read_settings(f)}
    except OSError as exc:
        raise InputError(f"cannot read the checkpoint ({schema.describe_h5_error(exc)})", path=str(path)) from None
    settings = head["settings"]
    if not isinstance(settings, dict) or not all(isinstance(v, dict) for v in settings.values()):
        raise InputError("damaged checkpoint: its settings are not a table of sections", path=str(path),
                         field="settings")
    return head


def check_restart(checkpoint: Path, potential: Path | None, current_settings: dict,
                  allow_changes: bool) -> list[str]:
    """Refuse (InputError) a restart whose potential file or physics settings differ from the
    checkpoint's, unless ``allow_changes``; returns the notes to print (what changed)."""
    head = read_checkpoint_header(checkpoint)
    problems, notes = [], []
    if potential is not None and potential.is_file():
        sha = hashlib.sha256(potential.read_bytes()).hexdigest()
        saved = head["potential_sha256"]
        if not saved:
            notes.append("the checkpoint does not record the potential's hash (it was missing when the "
                         "checkpoint was written); the potential cannot be checked")
        elif saved != sha:
            problems.append(f"the potential {potential} is not the file the run used (sha256 "
                            f"{sha[:12]}… now, {saved[:12]}… in the checkpoint)")
    problems += physics_changes(head["settings"], current_settings)
    if problems and not allow_changes:
        raise InputError("the restart would not continue the same run: " + "; ".join(problems)
                         + ". Restore the original, or give --allow-changes to continue with the new "
                         "settings", path=str(checkpoint))
    return notes + ([f"continuing with changes (--allow-changes): {'; '.join(problems)}"] if problems else [])


def truncate_log(path: Path, step: int) -> None:
    """Drop the data lines of steps after ``step`` (and what followed them) from a log file,
    atomically, so that a restart's log continues without repeating steps."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
    keep = len(lines)
    for k, line in enumerate(lines):
        head = line.split(None, 1)
        if head and head[0].isdigit() and int(head[0]) > step:
            keep = k
            break
    if keep == len(lines):
        return
    from mmtp_hpc.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text("".join(lines[:keep]), encoding="utf-8")
