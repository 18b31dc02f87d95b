"""Observers: everything that looks at the run — grades, log, trajectory, checkpoints.

Output happens only here (CONVENTIONS item 4). An observer is attached to a
:class:`~mmtp_hpc.dynamics.driver.Simulation` with an interval and is called after the
moment update of every step that is a multiple of it (and at step 0 of a new run);
:meth:`Observer.close` runs once at the end. Observers run in a fixed order: extrapolation
grades first (so that the log and the trajectory show the grade of the same step), then
the log, the trajectory, the checkpoint, then user observers.

Observers keep small counters in :meth:`Observer.state_dict` (stored in checkpoints), so
a restarted run writes the same files as an uninterrupted one.
"""

from __future__ import annotations

import math
import re
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from mmtp_hpc.errors import InputError

if TYPE_CHECKING:
    from mmtp_hpc.dynamics.driver import Simulation


class Observer:
    """Base class. ``order`` sorts observers; ``name`` keys its checkpoint counters."""

    order = 50
    name = "observer"
    call_at_start = True

    def __call__(self, sim: Simulation) -> None:
        raise NotImplementedError

    def close(self, sim: Simulation) -> None:
        """Called once when the run ends (also after an early stop)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class CallbackObserver(Observer):
    """Wraps a plain function ``f(sim)``."""

    def __init__(self, function, name: str = "callback"):
        self.function = function
        self.name = name

    def __call__(self, sim: Simulation) -> None:
        self.function(sim)


# --------------------------------------------------------------------------- extrapolation
class ExtrapolationObserver(Observer):
    """Extrapolation grades of the current configuration; saves above ``select``, stops above ``break``."""

    order = 10
    name = "extrapolation"

    def __init__(self, active_set, mode: str, select: float, break_: float, save_to: str | Path | None,
                 species: list[str] | None = None, root: bool = True):
        self.active_set = active_set
        self.mode = active_set.resolve_mode(mode)
        self.select = float(select)
        self.break_ = float(break_)
        self.save_to = None if save_to is None else Path(save_to)
        self.species = species
        self.root = root          # under MPI only rank 0 touches the file
        self.saved = 0
        self.evaluated = 0
        self.max_grade = 0.0
        self.last_nbh_grades: np.ndarray | None = None

    def start(self, restart: bool) -> None:
        """New run: replace an old ``save_to``; restart: drop configurations saved after the checkpoint."""
        if not self.root or self.save_to is None or not self.save_to.exists():
            return
        if not restart:
            self.save_to.unlink()
            return
        from mmtp_hpc.io.formats import read_configurations, write_configurations

        configs = read_configurations(self.save_to)
        if len(configs) > self.saved:
            keep = configs[: self.saved]
            if keep:
                write_configurations(self.save_to, keep, species=self.species)
            else:
                self.save_to.unlink()

    def __call__(self, sim: Simulation) -> None:
        from mmtp_hpc.potentials.mtp.engine import MagneticRangeWarning

        state = sim.state
        cfg = None
        with warnings.catch_warnings():
            # the driver reports moments outside the potential's interval once, at the start
            warnings.simplefilter("ignore", MagneticRangeWarning)
            # the force field computes the rows on its own layout (periodic images or halo)
            result = sim.forcefield.grade(self.active_set, state, sim.evaluation, self.mode)
            if not sim.distributed:
                cfg = state.configuration(sim.evaluation)
        self.evaluated += 1
        grade = result.grade
        sim.last_grade = grade
        self.last_nbh_grades = result.nbh_grades
        self.max_grade = max(self.max_grade, grade)
        if grade > self.select and self.save_to is not None:
            if sim.distributed:
                cfg = sim.global_configuration(result.nbh_grades)
            self._save(sim, cfg, result)
        if grade > self.break_:
            where = ""
            if result.worst_atom >= 0:       # the force field reports it by atom id
                where = f", worst neighbourhood: atom id {result.worst_atom}"
            saved = f"; configuration saved to {self.save_to}" if self.save_to is not None else ""
            sim.request_stop(f"extrapolation grade {grade:.4g} > break = {self.break_:g} at step "
                             f"{state.step}{where}{saved}")

    def _save(self, sim: Simulation, cfg, result) -> None:
        from mmtp_hpc.io.formats import write_configurations

        if cfg is None:        # MPI: rank 0 writes the gathered configuration
            self.saved += 1
            return

        cfg.features["MV_grade"] = f"{result.grade:.10g}"
        cfg.features["md_step"] = str(sim.state.step)
        if result.nbh_grades is not None and cfg.nbh_grades is None:
            cfg.nbh_grades = result.nbh_grades
        write_configurations(self.save_to, [cfg], species=self.species, append=self.save_to.exists(),
                             provenance=f"mmtp md step {sim.state.step}")
        self.saved += 1

    def state_dict(self) -> dict[str, Any]:
        return {"saved": self.saved, "evaluated": self.evaluated, "max_grade": self.max_grade}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.saved = int(state.get("saved", 0))
        self.evaluated = int(state.get("evaluated", 0))
        self.max_grade = float(state.get("max_grade", 0.0))


# --------------------------------------------------------------------------- log
class ThermoLog(Observer):
    """The log: one line per interval with T, energies, pressure, moments, grade, speed, ETA;
    a summary at the end. Goes to ``stream`` (default stdout) and to ``path`` if given."""

    order = 20
    name = "log"
    COLUMNS = (("step", "{:>9}"), ("time_ps", "{:>9.3f}"), ("T_K", "{:>8.1f}"), ("Epot_eV/at", "{:>11.5f}"),
               ("Ekin_eV/at", "{:>10.5f}"), ("Econs_eV/at", "{:>12.6f}"), ("P_GPa", "{:>8.3f}"),
               ("<m>_uB", "{:>7.3f}"), ("<|m|>_uB", "{:>8.3f}"), ("|M|_uB", "{:>9.2f}"),
               ("grade", "{:>7.3g}"), ("steps/s", "{:>8.1f}"), ("ETA", "{:>8}"))

    def __init__(self, stream: TextIO | None = sys.stdout, path: str | Path | None = None,
                 append: bool = False):
        self.stream = stream
        self.path = None if path is None else Path(path)
        self.append = append      # a restart continues the log file, a new run replaces it
        self._file: TextIO | None = None
        self._last: tuple[int, float] | None = None
        self._header_done = False
        self.samples: dict[str, list[float]] = {"T": [], "P": [], "Epot": [], "m": []}
        self.last_logged = -1
        self.columns = self.COLUMNS
        self.volume = False         # a V/N column (Å³/atom) when the cell changes (NPT)

    def write(self, line: str) -> None:
        if self.stream is not None:
            print(line, file=self.stream, flush=True)
        if self.path is not None:
            if self._file is None:
                self._file = open(self.path, "a" if self.append else "w", encoding="utf-8")
                self.append = True
            self._file.write(line + "\n")
            self._file.flush()

    def __call__(self, sim: Simulation) -> None:
        if not self._header_done:
            md = getattr(getattr(sim, "settings", None), "md", None)
            self.volume = str(getattr(md, "ensemble", "")).lower() == "npt"
            if self.volume:
                at = [name for name, _ in self.COLUMNS].index("P_GPa") + 1
                self.columns = self.COLUMNS[:at] + (("V_A3/at", "{:>9.4f}"),) + self.COLUMNS[at:]
                self.samples["V"] = []
            header = " ".join(_pad(name, fmt) for name, fmt in self.columns)
            continued = (self.append and self.path is not None and self.path.is_file()
                         and self.path.stat().st_size > 0)
            if continued:        # a restart's log file already has its header: only on screen
                if self.stream is not None:
                    print(header, file=self.stream, flush=True)
            else:
                self.write(header)
            self._header_done = True
        th = sim.thermo()
        now = time.perf_counter()
        step = sim.state.step
        rate = math.nan
        if self._last is not None and step > self._last[0]:
            rate = (step - self._last[0]) / max(now - self._last[1], 1e-12)
        self._last = (step, now)
        n = sim.state.n_global
        eta = "-" if not math.isfinite(rate) or rate <= 0 else _duration((sim.target_step - step) / rate)
        values = (step, sim.state.time_fs / 1000.0, th["temperature"], th["potential_energy"] / n,
                  th["kinetic_energy"] / n, th["conserved_energy"] / n, th["pressure"],
                  *((th["volume"] / n,) if self.volume else ()), th["moment_mean"],
                  th["moment_abs_mean"], th["magnetization"], th["grade"], rate, eta)
        self.write(" ".join(_fmt(fmt, v) for (_, fmt), v in zip(self.columns, values, strict=True)))
        self.last_logged = step
        if step > sim.start_step or not sim.restarted:
            self.samples["T"].append(th["temperature"])
            self.samples["P"].append(th["pressure"])
            self.samples["Epot"].append(th["potential_energy"] / n)
            self.samples["m"].append(th["moment_mean"])
            if self.volume:
                self.samples["V"].append(th["volume"] / n)

    def close(self, sim: Simulation) -> None:
        # the last step is logged once: not again by a restart that had nothing left to run
        nothing_run = sim.restarted and sim.state.step == sim.start_step
        if self.last_logged != sim.state.step and not sim.aborted and not nothing_run:
            self(sim)
        for line in sim.summary_lines(self.samples):
            self.write(line)
        if self._file is not None:
            self._file.close()
            self._file = None


def _pad(name: str, fmt: str) -> str:
    m = re.match(r"\{:>(\d+)", fmt)
    width = int(m.group(1)) if m else len(name)
    return f"{name:>{width}}"


def _fmt(fmt: str, value: Any) -> str:
    try:
        if isinstance(value, float) and not math.isfinite(value):
            return _pad("-", fmt)
        return fmt.format(value)
    except (ValueError, TypeError):
        return _pad(str(value), fmt)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


# --------------------------------------------------------------------------- trajectory
class TrajectoryObserver(Observer):
    """Frames to an HDF5 (H5MD) trajectory (:mod:`mmtp_hpc.io.trajectory`).

    Under MPI one file is written by rank 0, the same for any rank count: the per-atom
    arrays of a frame stream to it in chunks of a bounded number of atoms
    (:func:`mmtp_hpc.parallel.halo.gather_column_chunks`) and go straight into the file, so
    no rank holds more than its own atoms plus one chunk. ``seconds`` and ``frames_here``
    time the frames written by this run (gather + write)."""

    order = 30
    name = "trajectory"

    def __init__(self, path: str | Path, store: list[str], chunk_atoms: int | None = None,
                 compress: bool = True):
        from mmtp_hpc.parallel.halo import GATHER_CHUNK_ATOMS

        self.path = Path(path)
        self.compress = bool(compress)
        self.store = list(store)
        self.chunk_atoms = int(chunk_atoms or GATHER_CHUNK_ATOMS)
        self.writer = None
        self._opened = False
        self.seconds = 0.0
        self.frames_here = 0

    def open(self, sim: Simulation, restart_step: int | None) -> None:
        from mmtp_hpc.io.trajectory import TrajectoryWriter

        s = sim.state
        self._opened = True
        if not sim.distributed:
            self.writer = TrajectoryWriter(self.path, self.store, species=s.species, types=s.types, ids=s.ids,
                                           masses=s.masses, pbc=s.pbc, settings=sim.settings_dict(),
                                           restart_step=restart_step, compress=self.compress)
            return
        from mmtp_hpc.parallel.halo import gather_column_chunks

        if sim.is_root:
            self.writer = TrajectoryWriter(self.path, self.store, species=s.species, n_atoms=s.n_global,
                                           pbc=s.pbc, settings=sim.settings_dict(), restart_step=restart_step,
                                           compress=self.compress)
        chunks = gather_column_chunks(s.comm, s.ids, {"types": s.types, "ids": s.ids, "masses": s.masses},
                                      self.chunk_atoms)
        self._write_or_send(chunks, lambda c: self.writer.write_static(c))
        s.comm.Barrier()      # the file exists before any rank goes on

    def _write_or_send(self, chunks, write) -> None:
        if self.writer is not None:
            write(chunks)
        else:                     # the other ranks send their rows
            for _ in chunks:
                pass

    def __call__(self, sim: Simulation) -> None:
        if not self._opened:
            self.open(sim, None)
        t0 = time.perf_counter()
        s, ev = sim.state, sim.evaluation
        frame: dict[str, Any] = {"step": s.step, "time": s.time_fs, "cell": s.cell, **sim.thermo()}
        per_atom = {"positions": s.positions, "velocities": s.velocities, "magmoms": s.magmoms,
                    "forces": ev.forces, "site_energies": ev.site_energies,
                    "magnetic_gradient": ev.magnetic_gradient}
        columns = {name: (sim.nbh_grades() if name == "nbh_grades" else per_atom[name]) for name in self.store}
        if sim.distributed:   # streamed to rank 0 in id order
            from mmtp_hpc.parallel.halo import gather_column_chunks

            columns = {k: (np.full(s.n_atoms, np.nan) if v is None else v) for k, v in columns.items()}
            chunks = gather_column_chunks(s.comm, s.ids, columns, self.chunk_atoms)
            self._write_or_send(chunks, lambda c: self.writer.append_chunks(frame, c))
        else:
            frame.update(columns)
            self.writer.append(frame)
        self.seconds += time.perf_counter() - t0
        self.frames_here += 1

    def flush(self) -> None:
        if self.writer is not None:
            t0 = time.perf_counter()
            self.writer.flush()
            self.seconds += time.perf_counter() - t0

    def close(self, sim: Simulation) -> None:
        if self.writer is not None:
            t0 = time.perf_counter()
            self.writer.close()
            self.seconds += time.perf_counter() - t0

    def abandon(self, sim: Simulation) -> None:
        """After an error on this rank alone: let go of the file without writing (no rank
        waits for this one; the committed frames stay)."""
        if self.writer is not None:
            self.writer.abandon()

    @property
    def frames(self) -> int:
        if self.writer is None:
            return 0
        return self.writer.frames_written + len(self.writer._buffer)

    def describe(self) -> str:
        """The summary line's words: file, frames, I/O time per frame (rank 0's)."""
        per = f", {1e3 * self.seconds / self.frames_here:.2f} ms I/O per frame" if self.frames_here else ""
        return f"{self.path} ({self.frames} frames{per})"


# --------------------------------------------------------------------------- checkpoint
class CheckpointObserver(Observer):
    """Atomic checkpoints every interval and at the end (:mod:`mmtp_hpc.io.checkpoint`)."""

    order = 40
    name = "checkpoint"
    call_at_start = False

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.last_written = -1
        self.seconds = 0.0
        self.writes = 0
        self.emergency = False          # written after an abort (the step had finished)
        self.failed = ""                # why the last attempt failed

    def __call__(self, sim: Simulation) -> None:
        t0 = time.perf_counter()
        try:
            sim.write_checkpoint(self.path)
        except BaseException as exc:
            self.failed = str(exc)
            raise
        self.seconds += time.perf_counter() - t0
        self.writes += 1
        self.last_written = sim.state.step

    def close(self, sim: Simulation) -> None:
        if sim.aborted:
            # an emergency checkpoint only when the last step had finished (an output error
            # in an observer), never of a state the error interrupted
            if getattr(sim, "_emergency_ok", False) and self.last_written != sim.state.step:
                self(sim)
                self.emergency = True
            return
        if self.last_written != sim.state.step or sim.stop_reason:
            self(sim)

    def describe(self, sim: Simulation) -> str:
        """The summary's words: what this run really wrote, and what a restart would use."""
        timing = (f", {self.writes} written, {self.seconds / self.writes:.2f} s each"
                  if self.writes else "")
        if self.emergency:
            return f"{self.path} (emergency checkpoint at step {self.last_written}{timing})"
        if self.last_written >= 0 and self.last_written == sim.state.step and not sim.aborted:
            return f"{self.path} (step {self.last_written}{timing})"
        failed = f"; the last write failed: {self.failed}" if self.failed else ""
        if self.last_written >= 0:
            return (f"{self.path} (last written at step {self.last_written}{timing}; a restart "
                    f"continues from there{failed})")
        if sim.restarted and self.path.exists():
            return (f"{self.path} (none written by this run; the file is the checkpoint of step "
                    f"{sim.start_step} this run started from{failed})")
        return f"none written by this run ({self.path}){failed}; a restart is not possible"


def require_path_writable(path: Path, what: str) -> None:
    """Fail before step 0 if an output file cannot be created."""
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise InputError(f"directory {directory} for the {what} does not exist", path=str(path))
