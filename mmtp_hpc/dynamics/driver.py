"""The MD driver: a fixed sequence of hooks per step, observers attached with intervals.

One step n → n + 1 of :meth:`Simulation.step` is always, in this order
(CONVENTIONS item 4; LAMMPS ``Verlet::run`` is the model)::

    1. integrate, first half   thermostat half step (Nosé–Hoover), half kick, barostat,
                               drift (Langevin: drift/2, O, drift/2)      integrators.py
    2. exchange / neighbours   refresh ghost positions, or rebuild the list when an atom
                               may have crossed the skin (MPI: migrate + halo exchange)
    3. forces                  E, E_i, F, virial, ∂E/∂m at the new positions: the moment
                               updater's ``forces`` hook (relax: moments relaxed first)
    4. reverse sum             ghost forces and ∂E/∂m folded onto their owners
    5. integrate, second half  half kick, thermostat (CSVR / Nosé–Hoover half step)
    6. moment update           the updater's ``end_of_step`` hook (langevin or mc moves),
                               every ``moments.every`` steps                  moments.py
    7. observers               each attached with an interval, in order: extrapolation
                               grades, log, trajectory, checkpoint, user     observers.py

The moment updater (fixed, relax, langevin, mc) is one :class:`~mmtp_hpc.dynamics.moments.MomentUpdater`:
the driver calls its hooks at these points and never tests its type; after a migration
(step 2, or parallel MC in step 6) its ``post_migrate`` hook runs.

Observers also run at step 0 of a new run (not after a restart: those frames exist).
Only observers produce output. An observer may :meth:`Simulation.request_stop` (the
extrapolation monitor does, at γ > break); the run then ends after step 7 and the
observers' ``close`` writes the final log line, the summary and a checkpoint.

Restart: :meth:`Simulation.from_settings` with ``restart=checkpoint`` restores the state,
the last evaluation, the neighbour list (rebuilt from its stored build inputs) and the
thermostat variables; random numbers are counter-based, so the continuation is bit for
bit the uninterrupted run.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import sys
import time
from pathlib import Path
from typing import TextIO

import numpy as np

from mmtp_hpc.dynamics.forcefield import ForceField
from mmtp_hpc.dynamics.integrators import Integrator
from mmtp_hpc.dynamics.moments import FixedMoments, MomentUpdater
from mmtp_hpc.dynamics.observers import CallbackObserver, ExtrapolationObserver, Observer
from mmtp_hpc.dynamics.state import Evaluation, MDState
from mmtp_hpc.errors import MMTPError, OutputError, RunAborted
from mmtp_hpc.parallel.comm import max_op, min_op
from mmtp_hpc.io.checkpoint import CheckpointData, read_checkpoint, write_checkpoint

MOMENT_UPDATER_KEY = "moment_updater"
"""The checkpoint's entry (among the observers' states) for the moment updater's state."""


class Simulation:
    """An MD run: state + force field + integrator + moment dynamics + observers.

    Build one from an input file with :meth:`from_settings`, or by hand::

        ff = ForceField(MTPEngine(pot), skin=1.0)
        sim = Simulation(state, ff, Integrator(1.0, Langevin(300, 100, Streams(1))), seed=1)
        sim.attach(lambda s: print(s.state.step, s.thermo()["temperature"]), interval=100)
        sim.run(1000)
    """

    def __init__(self, state: MDState, forcefield: ForceField, integrator: Integrator, *,
                 moments: MomentUpdater | None = None,
                 moment_every: int = 1, seed: int = 0, settings=None, potential_path: str | None = None):
        self.state = state
        self.forcefield = forcefield
        self.integrator = integrator
        self.moments = moments if moments is not None else FixedMoments()
        self.moment_every = int(moment_every)
        self.seed = int(seed)
        self.settings = settings
        self.potential_path = potential_path
        self.observers: list[tuple[Observer, int]] = []
        self.evaluation: Evaluation | None = None
        self.stop_reason = ""
        self.aborted = False
        self.abort_reason = ""
        self.abort_collective = True
        self._emergency_ok = False
        self.last_grade = math.nan
        self.restarted = False
        self.start_step = state.step
        self.target_step = state.step
        self._initialized = False
        self._wall = 0.0
        self._steps_done = 0
        self._observer_time: dict[str, float] = {}
        self._time_start: dict[str, float] = {}
        self._moment_time = 0.0                       # s in Monte Carlo moment updates
        self._moment_ff_time: dict[str, float] = {}   # force-field time spent inside them
        self._extrapolation = None
        integrator.setup(state)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_settings(cls, settings, restart: str | Path | None = None, stream: TextIO | None = sys.stdout,
                      comm=None) -> Simulation:
        """Everything an input file describes: system, potential, integrator, moments, observers.

        ``restart``: a checkpoint to continue from (the state comes from it; the settings
        from the input, differences are reported on ``stream``). ``comm``: the communicator
        the atoms are spread over (default: COMM_WORLD under mpirun; a
        :class:`~mmtp_hpc.parallel.comm.SerialComm` keeps the whole run on this rank).
        """
        from mmtp_hpc.dynamics import setup

        return setup.build_simulation(settings, restart=restart, stream=stream, comm=comm)

    def attach(self, observer: Observer | object, interval: int = 1) -> Observer:
        """Call ``observer`` (an :class:`Observer` or a function of the simulation) every
        ``interval`` steps; returns the observer."""
        if not isinstance(observer, Observer):
            observer = CallbackObserver(observer)
        if int(interval) < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        self.observers.append((observer, int(interval)))
        self.observers.sort(key=lambda item: item[0].order)
        if isinstance(observer, ExtrapolationObserver):
            self._extrapolation = observer
        return observer

    # ------------------------------------------------------------------ running
    def initialize(self) -> None:
        """Neighbour list and forces at the starting state, observers at step 0 (new runs)."""
        if self._initialized:
            return
        s = self.state
        if self.evaluation is None:
            if self.forcefield.nl is None:
                self.forcefield.setup(s)
                if self.distributed:
                    self._after_migration()
            self.evaluation = self._forces()
        self._initialized = True
        if not self.restarted:
            for observer, _ in self.observers:
                if observer.call_at_start:
                    observer(self)

    def run(self, steps: int | None = None) -> str:
        """Run until step ``steps`` (total count; default: the target set up from the input)
        or until an observer requests a stop. Returns the stop reason ("" if none)."""
        if steps is not None:
            self.target_step = int(steps)
        self.initialize()
        if not self._time_start:
            self._time_start = dict(getattr(self.forcefield, "time", {}))   # split covers the steps only
        t0 = time.perf_counter()
        try:
            while self.state.step < self.target_step and not self.stop_reason:
                self.step()
        except BaseException as exc:
            # interrupted inside a step: the state is not consistent, so no final checkpoint
            # (the last one stands) unless the step had finished (an output error); buffered
            # trajectory frames (complete steps) are written
            self.aborted = True
            self.abort_reason = str(exc) or type(exc).__name__
            self.abort_collective = not self.distributed or bool(getattr(exc, "collective", False))
            self._emergency_ok = self._emergency_ok and isinstance(exc, RunAborted)
            raise
        finally:
            self._wall += time.perf_counter() - t0
            self._close_observers()
        return self.stop_reason

    def _close_observers(self) -> None:
        """End of run: observers close, the log (summary) last, so that the summary reports
        what was really written. After an error on one rank only (the others are elsewhere),
        nothing collective is tried: files are let go and the error ends every rank."""
        if self.aborted and not self.abort_collective:
            for observer, _ in self.observers:
                abandon = getattr(observer, "abandon", None)
                if abandon is not None:
                    with contextlib.suppress(Exception):
                        abandon(self)
            return
        errors: list[BaseException] = []
        ordered = sorted(self.observers, key=lambda item: item[0].name == "log")
        for observer, _ in ordered:
            try:
                observer.close(self)
            except (OSError, MMTPError) as exc:
                errors.append(exc)
                abandon = getattr(observer, "abandon", None)
                if abandon is not None:
                    with contextlib.suppress(Exception):
                        abandon(self)
        if errors and not self.aborted:
            raise errors[0]

    def _call_observer(self, observer: Observer) -> None:
        """One observer call; an output error (disk full, read-only or vanished directory) on any
        rank ends the run on every rank with that rank's message (collective, no hang)."""
        failure: BaseException | None = None
        try:
            observer(self)
        except (OSError, RuntimeError, OutputError) as exc:
            failure = exc
        if self.distributed:
            comm = self.state.comm
            size = comm.Get_size()
            first = int(comm.allreduce(comm.Get_rank() if failure is not None else size, op=min_op()))
            if first < size:
                text = comm.bcast(None if failure is None else str(failure), root=first)
                self._emergency_ok = observer.name != "checkpoint"
                where = f" (rank {first})" if first else ""
                raise RunAborted(f"output error{where}: {text}", collective=True)
        elif failure is not None:
            self._emergency_ok = observer.name != "checkpoint"
            raise RunAborted(f"output error: {failure}") from failure

    def _check_motion(self) -> None:
        """After the drift: every position finite and no atom moved more than the skin in one
        step (the dynamics blew up: the neighbour list and the halo would miss neighbours).
        Collective under MPI (one reduction); raises :class:`RunAborted` with a diagnosis."""
        s = self.state
        v = s.velocities
        finite = bool(np.all(np.isfinite(s.positions))) and bool(np.all(np.isfinite(v)))
        speed2 = np.einsum("ij,ij->i", v, v) if finite and len(v) else np.zeros(0)
        vmax = float(np.sqrt(speed2.max())) if len(speed2) else 0.0
        values = np.array([0.0 if finite else 1.0, vmax * self.integrator.dt])
        if self.distributed:     # one reduction per step for both numbers
            local, values = values, np.empty(2)
            self.state.comm.Allreduce(local, values, op=max_op())
        bad, moved = float(values[0]), float(values[1])
        limit = max(float(getattr(self.forcefield, "skin", 1.0)), 0.5)
        if bad == 0.0 and moved <= limit:
            return
        who = ""
        if finite and len(speed2) and vmax * self.integrator.dt >= moved:
            who = f" (atom id {int(s.ids[int(np.argmax(speed2))])})"
        what = ("a position or velocity became non-finite" if bad else
                f"an atom{who} moved {moved:.3g} Å in one step (the limit is {limit:g} Å: the larger "
                f"of the skin and 0.5 Å)")
        ev = self.evaluation
        fmax = math.nan
        if ev is not None and ev.forces is not None and len(ev.forces):
            f = np.asarray(ev.forces)
            local = float(np.sqrt(np.nanmax(np.einsum("ij,ij->i", f, f)))) if np.isfinite(f).any() else math.nan
            fmax = local if not self.distributed else float(self.state.comm.allreduce(local, op=max_op()))
        raise RunAborted(
            f"the dynamics blew up at step {s.step}: {what}; largest force at the previous step "
            f"{fmax:.4g} eV/Å, last extrapolation grade {self.last_grade:.4g}. Try a smaller "
            "timestep, check the grades (the potential may be outside its training range) and "
            "the starting structure (atoms too close) and temperature", collective=True)

    def _check_energy(self) -> None:
        """The energy and virial (global sums, so the same on every rank) must be finite."""
        ev = self.evaluation
        if math.isfinite(float(ev.energy)) and bool(np.all(np.isfinite(ev.virial))):
            return
        raise RunAborted(f"non-finite energy or stress at step {self.state.step} (energy {ev.energy}); "
                         f"last extrapolation grade {self.last_grade:.4g}: the configuration is outside "
                         "what the potential can evaluate (check the grades, the timestep and the "
                         "moments' range)", collective=True)

    def step(self) -> None:
        """One MD step: the hook sequence of the module docstring."""
        s = self.state
        s.step += 1
        s.time_fs += self.integrator.dt
        self.integrator.first_half(s, self.evaluation)              # 1
        self._check_motion()
        if self.forcefield.update(s) and self.distributed:           # 2
            self._after_migration()
        self.evaluation = self._forces()                              # 3 + 4 (ForceField folds ghosts)
        self._check_energy()
        self.integrator.second_half(s, self.evaluation)             # 5
        t_mom, before = time.perf_counter(), dict(getattr(self.forcefield, "time", {}))
        if self.moments.end_of_step(self.forcefield, s, self.evaluation, self._moments_due()):   # 6
            self._after_migration()        # parallel MC migrated atoms first
        self._account_moments(t_mom, before)
        self._steps_done += 1
        for observer, interval in self.observers:                     # 7
            if s.step % interval == 0:
                t0 = time.perf_counter()
                self._call_observer(observer)
                self._observer_time[observer.name] = (self._observer_time.get(observer.name, 0.0)
                                                      + time.perf_counter() - t0)

    def _account_moments(self, t0: float, before: dict[str, float]) -> None:
        """Monte Carlo time as its own share; the force-field time inside it is not counted twice."""
        self._moment_time += time.perf_counter() - t0
        for key, value in getattr(self.forcefield, "time", {}).items():
            self._moment_ff_time[key] = self._moment_ff_time.get(key, 0.0) + value - before.get(key, 0.0)

    def time_split(self) -> tuple[dict[str, float], float]:
        """({share: s per rank}, wall s per rank), averaged over ranks; the shares add up to the
        wall time: force, communication, neighbour lists and migration (outside Monte Carlo),
        Monte Carlo moments, I/O (trajectory, checkpoint), integration and the rest."""
        s, ff = self.state, self.forcefield
        ranks = s.comm.Get_size() if s.comm is not None else 1
        ff_time = {k: v - self._time_start.get(k, 0.0) - self._moment_ff_time.get(k, 0.0)
                   for k, v in getattr(ff, "time", {}).items()}
        io = sum(v for k, v in self._observer_time.items() if k in ("trajectory", "checkpoint"))
        parts = np.array([ff_time.get("force", 0.0), ff_time.get("comm", 0.0), ff_time.get("neighbor", 0.0),
                          self._moment_time, io, self._wall])
        parts = np.asarray(s.global_sum(parts), dtype=np.float64) / ranks
        names = ("force", "communication", "neighbour lists/migration", "Monte Carlo moments", "I/O")
        split = dict(zip(names, (float(x) for x in parts[:5]), strict=True))
        split["integration and other"] = float(parts[5] - parts[:5].sum())
        return split, float(parts[5])

    @property
    def distributed(self) -> bool:
        """True when the atoms are spread over MPI ranks (domain decomposition)."""
        return bool(getattr(self.forcefield, "distributed", False))

    @property
    def is_root(self) -> bool:
        comm = self.state.comm
        return comm is None or comm.Get_rank() == 0

    def _after_migration(self) -> None:
        """This rank's atoms changed: refresh per-atom constants that follow the types."""
        self.integrator.refresh(self.state)
        self.moments.post_migrate(self.state.types)

    def _moments_due(self) -> bool:
        return self.state.step % self.moment_every == 0

    def _forces(self) -> Evaluation:
        return self.moments.forces(self.forcefield, self.state, self._moments_due())

    def request_stop(self, reason: str) -> None:
        """Stop after the current step's observers (the run ends cleanly, with a checkpoint)."""
        if not self.stop_reason:
            self.stop_reason = reason

    # ------------------------------------------------------------------ measurements
    def thermo(self) -> dict[str, float]:
        """Scalars of the current state: energies (eV), T (K), P (GPa), V (Å³), moments (μB), grade."""
        s, ev = self.state, self.evaluation
        kinetic = s.kinetic_energy()
        m = s.magmoms
        n = s.n_global
        sums = s.global_sum(np.array([m.sum(), np.abs(m).sum()]))
        return {
            "potential_energy": ev.energy,
            "kinetic_energy": kinetic,
            "conserved_energy": self.integrator.conserved_energy(s, ev.energy),
            "temperature": self.integrator.temperature(s),
            "pressure": float(np.trace(s.pressure_tensor(ev.virial))) / 3.0 if s.pbc.all() else math.nan,
            "volume": s.volume if s.pbc.all() else math.nan,
            "moment_mean": float(sums[0]) / n if n else 0.0,
            "moment_abs_mean": float(sums[1]) / n if n else 0.0,
            "magnetization": float(abs(sums[0])),
            "grade": self.last_grade,
        }

    def nbh_grades(self) -> np.ndarray | None:
        obs = self._extrapolation
        return None if obs is None else obs.last_nbh_grades

    # ------------------------------------------------------------------ checkpoints
    def settings_dict(self) -> dict:
        return {} if self.settings is None else self.settings.to_dict()

    def gather_state(self) -> dict[str, np.ndarray] | None:
        """Per-atom state, evaluation and build positions of all atoms, on rank 0 in id order
        (None on the other ranks); the local arrays without domain decomposition."""
        s, ev, nl = self.state, self.evaluation, self.forcefield.nl
        columns = {"positions": s.positions, "velocities": s.velocities, "masses": s.masses,
                   "types": s.types, "ids": s.ids, "magmoms": s.magmoms,
                   "site_energies": ev.site_energies, "forces": ev.forces,
                   "magnetic_gradient": ev.magnetic_gradient, "build_positions": nl.reference_positions}
        if not self.distributed:
            return columns
        out = self.forcefield.gather(s, columns)
        if out is not None:
            for name in ("types", "ids"):
                out[name] = np.rint(out[name]).astype(np.int64)
        return out

    def global_configuration(self, nbh_grades: np.ndarray | None = None):
        """The whole configuration with this step's labels, on rank 0 (None elsewhere)."""
        from mmtp_hpc.system.configuration import Configuration

        g = self.gather_state()
        extra = None
        if nbh_grades is not None and self.distributed:
            extra = self.forcefield.gather(self.state, {"g": nbh_grades})
        if g is None:
            return None
        s, ev = self.state, self.evaluation
        cfg = Configuration(cell=s.cell.copy(), positions=np.array(g["positions"]), types=np.array(g["types"]),
                            pbc=s.pbc.copy(), magmoms=np.array(g["magmoms"]), ids=np.array(g["ids"]))
        cfg.energy = ev.energy
        cfg.forces = np.array(g["forces"])
        cfg.site_energies = np.array(g["site_energies"])
        cfg.virial = ev.virial.copy() if s.pbc.all() else None
        cfg.magnetic_gradient = np.array(g["magnetic_gradient"])
        if nbh_grades is not None:
            cfg.nbh_grades = np.array(extra["g"]).reshape(-1) if extra is not None else np.array(nbh_grades)
        return cfg

    def checkpoint_data(self) -> CheckpointData | None:
        """Everything a restart needs (rank 0 under MPI; None on the other ranks)."""
        g = self.gather_state()
        if g is None:
            return None
        return self._checkpoint_record(g)

    def _checkpoint_record(self, g: dict[str, np.ndarray]) -> CheckpointData:
        """The checkpoint of this step with the per-atom arrays ``g`` (empty: streamed later)."""
        s, ev = self.state, self.evaluation
        sha = ""
        if self.potential_path and Path(self.potential_path).is_file():
            sha = hashlib.sha256(Path(self.potential_path).read_bytes()).hexdigest()
        state = {k: g[k] for k in ("positions", "velocities", "masses", "types", "ids", "magmoms") if k in g}
        evaluation = {k: g[k] for k in ("site_energies", "forces", "magnetic_gradient") if k in g}
        return CheckpointData(
            step=s.step, time=s.time_fs, seed=self.seed, heat=s.heat, species=s.species,
            state={**state, "cell": s.cell, "pbc": s.pbc},
            energy=ev.energy, evaluation={**evaluation, "virial": ev.virial},
            build_positions=g.get("build_positions"), build_cell=self.forcefield.build_cell,
            thermostat=dict(s.thermostat), barostat=dict(s.barostat),
            observers={**{obs.name: obs.state_dict() for obs, _ in self.observers if obs.state_dict()},
                       **({MOMENT_UPDATER_KEY: self.moments.state_dict()} if self.moments.state_dict() else {})},
            settings=self.settings_dict(), potential=str(self.potential_path or ""), potential_sha256=sha,
            stop_reason=self.stop_reason)

    def write_checkpoint(self, path: str | Path) -> None:
        """Flush buffered output, then write the checkpoint atomically. Under MPI the per-atom
        arrays stream to rank 0 in chunks of a bounded number of atoms
        (:func:`mmtp_hpc.parallel.halo.gather_column_chunks`), which writes each as it comes."""
        failure: BaseException | None = None
        try:
            for observer, _ in self.observers:
                flush = getattr(observer, "flush", None)
                if flush is not None:
                    flush()
        except (OSError, OutputError) as exc:
            failure = exc
        if not self.distributed:
            if failure is not None:
                raise failure
            try:
                write_checkpoint(path, self.checkpoint_data())
            except OSError as exc:
                raise OutputError(f"cannot write the checkpoint of step {self.state.step} ({exc}); the "
                                  "previous checkpoint file, if any, is unchanged", path=str(path)) from None
            return
        from mmtp_hpc.parallel.halo import GATHER_CHUNK_ATOMS, gather_column_chunks

        s, ev = self.state, self.evaluation
        chunk_atoms = getattr(getattr(self.settings, "output", None), "chunk_atoms", GATHER_CHUNK_ATOMS)
        columns = {"positions": s.positions, "velocities": s.velocities, "masses": s.masses,
                   "types": s.types, "ids": s.ids, "magmoms": s.magmoms,
                   "site_energies": ev.site_energies, "forces": ev.forces,
                   "magnetic_gradient": ev.magnetic_gradient,
                   "build_positions": self.forcefield.nl.reference_positions}
        chunks = iter(gather_column_chunks(s.comm, s.ids, columns, chunk_atoms))
        if self.is_root and failure is None:
            try:
                write_checkpoint(path, self._checkpoint_record({}), chunks=chunks, n_atoms=s.n_global)
            except (OSError, OutputError) as exc:
                failure = OutputError(f"cannot write the checkpoint of step {s.step} ({exc}); the previous "
                                      "checkpoint file, if any, is unchanged", path=str(path))
        for _ in chunks:   # every rank's rows are received even when writing failed: nobody waits
            pass
        s.comm.Barrier()   # the file is complete before any rank goes on
        if failure is not None:
            raise failure

    def restore(self, data: CheckpointData) -> None:
        """Continue from checkpoint ``data``: state, evaluation, neighbour list, counters."""
        s = self.state
        for name in ("positions", "velocities", "masses", "magmoms", "cell"):
            setattr(s, name, np.array(data.state[name], dtype=np.float64))
        s.types = np.array(data.state["types"], dtype=np.int64)
        s.ids = np.array(data.state["ids"], dtype=np.int64)
        s.pbc = np.array(data.state["pbc"], dtype=bool)
        s.species = list(data.species)
        s.step, s.time_fs, s.heat = data.step, data.time, data.heat
        s.thermostat = {k: np.array(v) for k, v in data.thermostat.items()}
        s.barostat = {k: np.array(v) for k, v in data.barostat.items()}
        s.n_global = s.n_atoms
        names = ("site_energies", "forces", "virial", "magnetic_gradient")
        evaluation = {k: np.array(data.evaluation[k]) for k in names}
        if self.distributed:
            # any rank count wrote it; this rank holds a slice of its rows (or all): atoms to owners
            per_atom = {k: evaluation[k] for k in ("site_energies", "forces", "magnetic_gradient")}
            evaluation.update(self.forcefield.restore_distributed(
                np.array(data.build_positions), np.array(data.build_cell), s, per_atom,
                n_global=data.n_atoms or None))
            self.integrator.setup(s)
            self._after_migration()
        else:
            self.integrator.setup(s)
            self.forcefield.restore(np.array(data.build_positions), np.array(data.build_cell), s)
        self.evaluation = Evaluation(data.energy, *(evaluation[k] for k in names))
        for observer, _ in self.observers:
            if observer.name in data.observers:
                observer.load_state_dict(data.observers[observer.name])
        if MOMENT_UPDATER_KEY in data.observers:
            self.moments.load_state_dict(data.observers[MOMENT_UPDATER_KEY])
        self.restarted = True
        self.start_step = s.step
        self._initialized = True

    @staticmethod
    def read_checkpoint(path: str | Path, part: tuple[int, int] | None = None) -> CheckpointData:
        """The checkpoint; ``part = (rank, ranks)``: this rank's slice of the per-atom rows
        (which may be empty on some ranks)."""
        from mmtp_hpc.io import schema

        with schema.reading(path, "checkpoint"):
            data = read_checkpoint(path, part)
        _check_checkpoint(data, str(path), allow_empty=part is not None)
        return data

    # ------------------------------------------------------------------ summary
    def _speed_key(self) -> str:
        """What makes two runs comparable: the settings except steps, output and grid, and the
        potential's contents."""
        import json

        d = self.settings_dict()
        d.pop("output", None)
        d.pop("parallel", None)
        d.get("md", {}).pop("steps", None)
        text = json.dumps(d, sort_keys=True, default=str)
        pot = ""
        if self.potential_path and Path(self.potential_path).is_file():
            pot = hashlib.sha256(Path(self.potential_path).read_bytes()).hexdigest()
        return hashlib.sha256((text + pot).encode()).hexdigest()[:16]

    def _speed_lines(self) -> list[str]:
        """Record this run's speed (rank 0, atomically) and compare with the other rank counts
        recorded for the same input: speed-up = steps/s ÷ the 1-rank steps/s, efficiency =
        speed-up ÷ ranks. Nothing when [output] speed_log is empty or no step was run."""
        import json

        settings = self.settings
        name = getattr(getattr(settings, "output", None), "speed_log", None)
        if not name or not self.is_root or self._steps_done < 1 or self._wall <= 0 or self.aborted:
            return []
        path = settings.path(name)
        ranks = self.state.comm.Get_size() if self.state.comm is not None else 1
        rate = self._steps_done / self._wall
        records: dict = {}
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(records, dict):
                records = {}
        except (OSError, ValueError):
            records = {}
        key = self._speed_key()
        runs = records.get(key, {}).get("runs", {}) if isinstance(records.get(key), dict) else {}
        runs[str(ranks)] = {"steps_per_s": rate, "steps": self._steps_done, "wall_s": self._wall,
                            "atoms": self.state.n_global}
        records[key] = {"input": str(getattr(settings, "source", "") or ""), "runs": runs}
        from mmtp_hpc.io.atomic import atomic_path

        try:
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(records, indent=1), encoding="utf-8")
        except OSError as exc:
            return [f"  speed: {rate:.2f} steps/s on {ranks} rank(s) (not recorded: {exc})"]
        serial = runs.get("1", {}).get("steps_per_s")
        if ranks > 1 and serial:
            speedup = rate / serial
            return [f"  speed-up over the 1-rank run of this input ({path.name}): {speedup:.2f}× on "
                    f"{ranks} ranks, parallel efficiency {100 * speedup / ranks:.0f} %"]
        if ranks > 1:
            return [f"  speed-up: run this input once on 1 rank; the summary then compares ({path.name})"]
        others = sorted((int(r), v["steps_per_s"]) for r, v in runs.items() if r != "1")
        if others:
            return ["  speed-up of the recorded parallel runs of this input: "
                    + ", ".join(f"{r} ranks {v / rate:.2f}× (efficiency {100 * v / rate / r:.0f} %)"
                                for r, v in others)]
        return []

    def summary_dict(self) -> dict:
        """Speed and time split of the run so far (collective under MPI: call on every rank).

        Times are per rank, averaged over ranks: ``force`` (kernels), ``communication`` (halo
        exchanges, reductions in the force path), ``neighbor`` (list builds and migration),
        ``io`` (trajectory and checkpoint observers)."""
        s, ff = self.state, self.forcefield
        ranks = s.comm.Get_size() if s.comm is not None else 1
        io = sum(v for k, v in self._observer_time.items() if k in ("trajectory", "checkpoint"))
        split = {k: v - self._time_start.get(k, 0.0) for k, v in getattr(ff, "time", {}).items()}
        traj = next((obs for obs, _ in self.observers if obs.name == "trajectory"), None)
        traj_s, traj_frames = float(getattr(traj, "seconds", 0.0)), int(getattr(traj, "frames_here", 0))
        values = s.global_sum(np.array([split.get("force", math.nan), split.get("comm", 0.0),
                                        split.get("neighbor", math.nan), io, traj_s])) / ranks
        steps = self._steps_done
        wall = self._wall
        out = {"ranks": ranks, "atoms": s.n_global, "steps": steps, "wall_s": wall,
               "steps_per_s": steps / wall if wall > 0 else math.nan,
               "atom_steps_per_s": steps * s.n_global / wall if wall > 0 else math.nan,
               "us_per_atom_step": 1e6 * wall / max(steps * s.n_global, 1),
               "force_s": float(values[0]), "communication_s": float(values[1]),
               "neighbor_s": float(values[2]), "io_s": float(values[3]),
               "trajectory_frames": traj_frames,
               "io_s_per_frame": float(values[4]) / traj_frames if traj_frames else math.nan,
               "rebuilds": ff.rebuilds, "evaluations": ff.evaluations}
        if self.distributed:
            out["grid"] = ff.decomp.grid.tolist()
            out["migrations"] = ff.migrations
        return out

    def summary_lines(self, samples: dict[str, list[float]]) -> list[str]:
        s = self.state
        steps = self._steps_done
        rate = steps / self._wall if self._wall > 0 else math.nan
        per_atom = 1e6 * self._wall / max(steps * s.n_global, 1)
        lines = ["", f"mmtp md summary: {steps} steps (step {self.start_step} → {s.step}, "
                 f"{s.time_fs / 1000.0:.3f} ps) in {self._wall:.2f} s: {rate:.1f} steps/s, "
                 f"{per_atom:.2f} µs/atom/step, {s.n_global} atoms"]
        if samples.get("T"):
            lines.append(f"  logged averages: T = {np.mean(samples['T']):.1f} K, "
                         f"P = {np.mean(samples['P']):.3f} GPa, "
                         f"E_pot = {np.mean(samples['Epot']):.5f} eV/atom, "
                         + (f"V = {np.mean(samples['V']):.4f} Å³/atom, " if samples.get("V") else "")
                         + f"<m> = {np.mean(samples['m']):.3f} μB ({len(samples['T'])} log lines)")
        ff = self.forcefield
        lines.append(f"  neighbour list: {ff.rebuilds} builds, skin {ff.skin:g} Å; "
                     f"{ff.evaluations} force evaluations")
        if self.distributed:
            split, wall = self.time_split()
            total = max(wall, 1e-12)
            lines.append(f"  MPI: {ff.decomp.describe()}; {ff.migrations} atom migrations; time per rank "
                         f"({wall:.2f} s): " + ", ".join(f"{name} {sec:.2f} s ({100 * sec / total:.0f} %)"
                                                          for name, sec in split.items() if sec or name == "force"))
        line = self.moments.summary_line(s)
        if line is not None:
            lines.append(line)
        lines.extend(self._speed_lines())
        if self._extrapolation is not None:
            ex = self._extrapolation
            lines.append(f"  extrapolation: {ex.evaluated} grades, max {ex.max_grade:.4g}, "
                         f"{ex.saved} configurations saved to {ex.save_to}")
        for observer, _ in self.observers:
            path = getattr(observer, "path", None)
            if observer.name == "trajectory":
                describe = getattr(observer, "describe", None)
                lines.append(f"  trajectory: {describe() if describe else f'{path} ({observer.frames} frames)'}")
            elif observer.name == "checkpoint":
                describe = getattr(observer, "describe", None)
                lines.append(f"  checkpoint: {describe(self) if describe else path}")
        if self.stop_reason:
            lines.append(f"  STOPPED EARLY: {self.stop_reason}")
        if self.aborted:
            lines.append(f"  ABORTED at step {s.step}: {self.abort_reason}")
        return lines


def _check_checkpoint(data: CheckpointData, path: str, allow_empty: bool = False) -> None:
    """Shapes, finite values and sane counts of a checkpoint's state: a damaged file is an
    InputError here, not a crash in the neighbour list later."""
    from mmtp_hpc.errors import InputError

    st = data.state
    n = len(np.asarray(st.get("positions", [])))
    want = {"positions": (n, 3), "velocities": (n, 3), "masses": (n,), "types": (n,), "ids": (n,),
            "magmoms": (n,), "cell": (3, 3), "pbc": (3,)}
    for name, shape in want.items():
        value = st.get(name)
        if value is None or np.shape(value) != shape:
            raise InputError(f"state/{name} has shape {np.shape(value)}, expected {shape}", path=path,
                             field=f"state/{name}")
        if np.asarray(value).dtype.kind not in "biuf":
            raise InputError(f"state/{name} holds {np.asarray(value).dtype}, not numbers", path=path,
                             field=f"state/{name}")
    for name in ("positions", "velocities", "masses", "magmoms", "cell"):
        if not np.all(np.isfinite(st[name])):
            raise InputError(f"state/{name} holds non-finite values", path=path, field=f"state/{name}")
    if n == 0 and not (allow_empty and (getattr(data, "n_atoms", 0) or 0) > 0):
        raise InputError("the checkpoint holds no atoms", path=path, field="state")
    if np.any(np.asarray(st["masses"]) <= 0):
        raise InputError("state/masses: masses must be positive", path=path, field="state/masses")
    if np.any(np.asarray(st["types"]) < 0):
        raise InputError("state/types: negative atom types", path=path, field="state/types")
    ev = data.evaluation or {}
    for name, shape in (("forces", (n, 3)), ("site_energies", (n,)), ("magnetic_gradient", (n,)),
                        ("virial", (3, 3))):
        value = ev.get(name)
        if value is None and name == "magnetic_gradient":
            continue
        if value is None or np.shape(value) != shape or np.asarray(value).dtype.kind not in "iuf" \
                or not np.all(np.isfinite(value)):
            raise InputError(f"evaluation/{name}: shape {np.shape(value)} (expected {shape}), or not finite "
                             "numbers", path=path, field=f"evaluation/{name}")
    if not math.isfinite(float(data.energy)):
        raise InputError("evaluation/energy is not finite", path=path, field="evaluation/energy")
    bp, bc = np.asarray(data.build_positions), np.asarray(data.build_cell)
    if bp.shape != (n, 3) or bc.shape != (3, 3) or not (np.all(np.isfinite(bp)) and np.all(np.isfinite(bc))):
        raise InputError("neighbors/build_positions or build_cell: wrong shape or non-finite values",
                         path=path, field="neighbors")
    for name, cell in (("state/cell", np.asarray(st["cell"], dtype=float)), ("neighbors/build_cell", bc)):
        periodic = np.asarray(st["pbc"], dtype=bool)
        rows = cell[periodic]
        if len(rows) and (np.abs(rows).max() > 1e7 or
                          np.linalg.matrix_rank(rows, tol=1e-8 * max(np.abs(rows).max(), 1e-300)) < len(rows)):
            raise InputError(f"{name}: the periodic cell vectors are degenerate or absurd", path=path, field=name)
    if not (math.isfinite(data.time) and math.isfinite(data.heat) and data.step >= 0):
        raise InputError(f"step {data.step}, time {data.time}, heat {data.heat}: not a valid state", path=path)
