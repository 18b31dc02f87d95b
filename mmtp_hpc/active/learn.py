"""The learn-on-the-fly loop of ``mmtp learn`` (spec §1 and §5; arXiv 2605.26897, Fig. 1).

This module's single job is running the active-learning loop and keeping its state on
disk so that it survives a crash::

    iteration 0 (pre-training)   label → add → train
    iteration k = 1, 2, …        md → select → label → add → train

- **md**: one MD run per exploration condition with the current potential
  (:mod:`mmtp_hpc.dynamics`), grades every few steps; configurations with γ > γ_select are
  saved, a run stops at γ > γ_break and the next run goes on;
- **select**: one MaxVol pass over the training set and all candidates of the iteration
  (:func:`mmtp_hpc.active.selection.select_new`), so near-duplicates are not all taken;
- **label**: the oracle labels the selected configurations at their own moments (the
  target moments of constrained DFT; :func:`mmtp_hpc.active.oracles.label_all`, resumable
  per configuration);
- **add**: the labelled configurations are appended to the HDF5 training set with
  provenance ``[iterNNN/selMMMM] …`` (iteration, run, MD step, grade); tags already in the
  file are skipped, so the phase can be repeated without duplicates;
- **train**: refit (warm start from the current coefficients), new MaxVol active set,
  ``iter_NNN/potential.almtp`` and ``current.almtp``.

The loop stops when an iteration selects nothing (every MD run stayed below γ_select, or
nothing new was found) or after ``learn.max_iterations``.

State on disk (``workdir``)::

    state.json          iteration, phase in progress, one record per iteration (written
                        atomically after every phase)
    trainingset.h5      the training set (HDF5, with provenance)
    current.almtp       the current potential (with its active set)
    iter_NNN/           md/<run>/{md.log, extrapolative.cfg, result.json}, selected.cfg,
                        label/ (the oracle's per-configuration folders), labelled.cfg,
                        potential.almtp, train.json
    learn.log           the log; summary.txt and learning.png at the end

Re-running the same command resumes at the phase in progress: finished MD runs are not
repeated (a run killed midway restarts from its beginning, with the same seed), labelled
configurations are read back, configurations already in the training set are not added
again.

Under ``mpirun`` rank 0 runs MD, selection and labelling and broadcasts what the other
ranks need; training is shared between all ranks (``train(..., comm=...)``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from mmtp_hpc.active.learn_settings import LearnSettings, MDRun, md_run_settings
from mmtp_hpc.errors import InputError, MMTPError
from mmtp_hpc.io.atomic import atomic_path
from mmtp_hpc.system.configuration import Configuration

STATE_FILE = "state.json"
STATE_VERSION = 1
TRAINING_FILE = "trainingset.h5"
CURRENT_POTENTIAL = "current.almtp"
LOG_FILE = "learn.log"
SUMMARY_FILE = "summary.txt"
PLOT_FILE = "learning.png"
MAGNETISATION_PLOT = "magnetisation.png"
MAGNETISATION_CSV = "magnetisation.csv"

PHASES = ("md", "select", "label", "add", "train")
INITIAL_PHASES = ("label", "add", "train")
TAG_RE = re.compile(r"^\[([^\]\s]+)\]")


# --------------------------------------------------------------------------- state
@dataclass
class LearnState:
    """What ``state.json`` holds: where the loop is and what every iteration did."""

    iteration: int = 0
    phase: str = "label"
    finished: bool = False
    stop_reason: str = ""
    history: list[dict] = field(default_factory=list)
    settings_hash: str = ""
    report: dict | None = None
    final_refit: dict | None = None     # what the final refit ([train] final_max_iter) did, once done
    version: int = STATE_VERSION

    def record(self, iteration: int) -> dict:
        """The history record of ``iteration`` (created when missing)."""
        for rec in self.history:
            if rec["iteration"] == iteration:
                return rec
        rec = {"iteration": iteration, "wall_s": {}}
        self.history.append(rec)
        self.history.sort(key=lambda r: r["iteration"])
        return rec

    def save(self, path: Path) -> None:
        text = json.dumps(asdict(self), indent=1, default=_json_default)
        with atomic_path(path) as tmp:
            tmp.write_text(text + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> LearnState:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read the loop state: {exc}", path=str(path)) from None
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise InputError(f"not an mmtp learn state (version {STATE_VERSION})", path=str(path))
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def settings_hash(settings: LearnSettings) -> str:
    text = json.dumps(settings.to_dict(), sort_keys=True, default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def iteration_dir(workdir: Path, iteration: int) -> Path:
    return workdir / f"iter_{iteration:03d}"


def run_seed(base: int, iteration: int, index: int) -> int:
    """Seed of MD run ``index`` of ``iteration``: different for every run and iteration, the
    same when a killed iteration is repeated."""
    return int((base * 1_000_003 + iteration * 7919 + index * 104_729) % (2 ** 62))


def make_tag(iteration: int, kind: str, index: int) -> str:
    return f"iter{iteration:03d}/{kind}{index:04d}"


def provenance_tags(provenance: list[str]) -> set[str]:
    """The ``[tag]`` prefixes of training-set provenance strings."""
    tags = set()
    for p in provenance:
        m = TAG_RE.match(p)
        if m:
            tags.add(m.group(1))
    return tags


def _write_json(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=1, default=_json_default)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- log
class LearnLog:
    """Lines to standard output and to ``learn.log`` (appended; rank 0 only)."""

    def __init__(self, path: Path | None, stream: TextIO | None = sys.stdout, active: bool = True):
        self.path = path
        self.stream = stream
        self.active = active

    def __call__(self, line: str = "") -> None:
        if not self.active:
            return
        if self.stream is not None:
            print(line, file=self.stream, flush=True)
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")


# --------------------------------------------------------------------------- initial data
def generate_initial(settings: LearnSettings, species: list[str]) -> list[Configuration]:
    """Randomly strained and displaced cells at each lattice parameter, with moments scattered
    around ``initial.magmoms`` (some flipped when ``flip_fraction`` > 0); unlabelled."""
    from mmtp_hpc.system.lattice import bulk

    ini = settings.initial
    rng = np.random.default_rng(ini.seed)
    sub = (0, 1) if len(species) >= 2 else (0, 0)
    values = np.atleast_1d(np.asarray(ini.magmoms, dtype=float))
    configs = []
    for a in ini.a or []:
        for _ in range(ini.per_a):
            cfg = bulk(ini.lattice, a, ini.repeat, sublattice_types=sub)
            strain = rng.normal(scale=ini.strain, size=(3, 3)) if ini.strain > 0 else np.zeros((3, 3))
            deform = np.eye(3) + 0.5 * (strain + strain.T)
            cfg.cell = cfg.cell @ deform.T
            cfg.positions = cfg.positions @ deform.T
            if ini.jitter > 0:
                cfg.positions += rng.normal(scale=ini.jitter, size=cfg.positions.shape)
            m = np.full(len(cfg), values[0]) if values.size == 1 else values[cfg.types]
            m = m + rng.normal(scale=ini.moment_spread, size=len(cfg)) * (m != 0)
            if ini.flip_fraction > 0:
                m[rng.random(len(cfg)) < ini.flip_fraction] *= -1.0
            cfg.magmoms = m
            cfg.features = {"learn_source": f"generated {ini.lattice} a={a:g}"}
            configs.append(cfg)
    return configs


def read_initial(settings: LearnSettings, species: list[str]) -> list[Configuration]:
    from mmtp_hpc.io.formats import read_configurations

    path = settings.path(settings.initial.file)
    configs = read_configurations(path, species=species)
    if not configs:
        raise InputError("no configurations in the file", path=str(path), field="initial.file")
    for k, cfg in enumerate(configs):
        cfg.features = dict(cfg.features)
        cfg.features.setdefault("learn_source", f"{path.name} #{k}")
    return configs


def is_labelled(cfg: Configuration) -> bool:
    return cfg.energy is not None and cfg.forces is not None


# --------------------------------------------------------------------------- intervals
def prepare_intervals(pot, configs: list[Configuration], settings: LearnSettings, first: bool,
                      log: Callable[[str], None]) -> None:
    """R_min and the magnetic interval before a fit (in place).

    ``train.min_dist = "auto"``: 0.99 × the shortest distance in the data at the first fit;
    later only lowered when new data come closer. ``train.magnetic_interval = "auto"``:
    per-species ±max|m| of the data (at least 0.1 μB) at the first fit; later only widened
    when new data need it — so a warm start keeps meaning the same function.
    """
    from mmtp_hpc.training.fit import shortest_distance

    t = settings.train
    if t.min_dist == "auto":
        dmin = shortest_distance(configs, pot.cutoff)
        if np.isfinite(dmin):
            new = 0.99 * dmin
            if first or new < pot.min_dist:
                log(f"  min_dist {pot.min_dist:.5g} -> {new:.5g} Å (0.99 × shortest distance in the data)")
                pot.min_dist = new
    if t.magnetic_interval == "auto" and pot.magnetic:
        need = np.zeros(pot.species_count)
        for cfg in configs:
            if cfg.magmoms is not None and len(cfg):
                np.maximum.at(need, cfg.types, np.abs(cfg.magmoms))
        need = np.maximum(need, 0.1)
        have = np.minimum(-np.asarray(pot.mag_min, float), np.asarray(pot.mag_max, float))
        target = need if first else np.maximum(have, need)
        if first or np.any(need > have):
            log("  magnetic interval: " + ", ".join(f"type {z} ±{m:.4g} μB" for z, m in enumerate(target)))
            pot.mag_min, pot.mag_max = -target.copy(), target.copy()


# --------------------------------------------------------------------------- the loop
class Learner:
    """One ``mmtp learn`` input: builds the pieces and runs (or resumes) the loop."""

    def __init__(self, settings: LearnSettings, comm: Any = None, stream: TextIO | None = sys.stdout,
                 md_stream: TextIO | None | str = "default"):
        from mmtp_hpc.parallel.comm import get_comm

        self.settings = settings
        self.comm = get_comm(comm)
        self.root = self.comm.Get_rank() == 0
        self.workdir = settings.workdir
        if self.root:
            self.workdir.mkdir(parents=True, exist_ok=True)
        self.comm.Barrier()
        self.log = LearnLog(self.workdir / LOG_FILE, stream, active=self.root)
        self.md_stream = stream if md_stream == "default" else md_stream
        self._oracle = None
        self._species: list[str] | None = None

    # ------------------------------------------------------------------ pieces
    @property
    def state_path(self) -> Path:
        return self.workdir / STATE_FILE

    @property
    def training_path(self) -> Path:
        return self.workdir / TRAINING_FILE

    @property
    def current_path(self) -> Path:
        return self.workdir / CURRENT_POTENTIAL

    def initial_potential(self):
        """The potential of the [potential] section (a new untrained one for ``level``)."""
        from mmtp_hpc.potentials.mtp.basis import new_potential
        from mmtp_hpc.potentials.mtp.mlip_io import load_potential

        p = self.settings.potential
        if p.file is not None:
            path = self.settings.path(p.file)
            pot = load_potential(path)
            given, names = self.settings.learn.species, pot.species_names
            if given is not None and (len(given) != pot.species_count
                                      or (names is not None and list(names) != list(given))):
                raise InputError(f"[learn] species {list(given)} do not match the potential's "
                                 f"{list(names) if names is not None else pot.species_count} "
                                 f"({path})", path=self.settings.source, field="learn.species")
        else:
            species = self.settings.learn.species
            pot = new_potential(p.level, len(species), radial_basis_size=p.radial_basis_size,
                                mag_basis_size=p.mag_basis_size,
                                mag_interval=tuple(p.mag_interval) if p.mag_basis_size > 1 else None,
                                min_dist=p.min_dist, max_dist=p.max_dist, species_names=species,
                                init="none")
        return pot

    def species(self) -> list[str]:
        if self._species is None:
            given = self.settings.learn.species
            if given is not None:
                self._species = list(given)
            else:
                names = self.initial_potential().species_names
                if names is None:
                    raise InputError("the potential records no chemical symbols; give [learn] species = "
                                     "[\"Fe\", …]", path=self.settings.source, field="learn.species")
                self._species = list(names)
        return self._species

    def oracle(self):
        if self._oracle is None:
            from mmtp_hpc.active.oracles import oracle_from_settings

            self._oracle = oracle_from_settings(self.settings.oracle, Path(self.settings.base_dir),
                                                self.species(), source=self.settings.source or "",
                                                text=self.settings.text)
        return self._oracle

    def _bcast(self, value: Any) -> Any:
        return self.comm.bcast(value, root=0)

    # ------------------------------------------------------------------ driver
    def load_state(self) -> LearnState:
        state = None
        if self.root:
            if self.state_path.exists():
                state = LearnState.load(self.state_path)
            else:
                state = LearnState(settings_hash=settings_hash(self.settings))
        return self._bcast(state)

    def save_state(self, state: LearnState) -> None:
        if self.root:
            state.save(self.state_path)

    def run(self) -> LearnState:
        """Run the loop from wherever the state on disk says it is; returns the final state."""
        s = self.settings
        state = self.load_state()
        h = settings_hash(s)
        resumed = self.state_path.exists() if self.root else False
        resumed = self._bcast(resumed)
        self.log(f"mmtp learn: {s.source or '<settings>'}; work directory {self.workdir}; "
                 f"{self.comm.Get_size()} rank(s); {len(s.runs)} MD run(s) per iteration; "
                 f"γ_select {s.select.threshold:g}, γ_break {s.select.break_:g}, mode {s.select.mode}"
                 + ("; MD on rank 0" if self.comm.Get_size() > 1 else ""))
        if resumed:
            where = ("finished: " + state.stop_reason) if state.finished else \
                f"iteration {state.iteration}, phase {state.phase}"
            self.log(f"resuming from {self.state_path} ({where})")
            if state.settings_hash and state.settings_hash != h:
                self.log("note: the input differs from the one the state was written with; "
                         "the new settings apply from here on")
        else:
            self.log("settings: " + json.dumps(s.to_dict(), default=_json_default))
        changed = bool(state.settings_hash) and state.settings_hash != h
        state.settings_hash = h
        if state.finished and state.stop_reason.startswith("converged") and changed \
                and state.iteration <= s.learn.max_iterations:
            # e.g. a new exploration was added: its runs go on in the iteration that selected
            # nothing (the runs done there are not repeated)
            state.finished = False
            state.stop_reason = ""
            state.phase = "md"
            self.log(f"the input changed after convergence: continuing with iteration {state.iteration}")
            state.final_refit = None
        if state.finished and state.stop_reason.startswith("limit") \
                and state.iteration <= s.learn.max_iterations:
            state.finished = False
            state.stop_reason = ""
            state.phase = "md"
            self.log(f"max_iterations is now {s.learn.max_iterations}: continuing with iteration "
                     f"{state.iteration}")
            state.final_refit = None
        if not state.finished and state.iteration == 0:
            self.initial_potential()    # readable, species as given: checked before any work
        if self.root and not state.finished:
            oracle = self.oracle()       # a mistake in [oracle] shows now, not after the first MD runs
            free = oracle.free_species() if hasattr(oracle, "free_species") else []
            if free and s.runs:
                self.log(f"warning: the oracle leaves the moments of {', '.join(free)} free: their labels "
                         "carry the DFT's own moments, not the ones the MD explored, so the grades of "
                         "those neighbourhoods need not fall and the loop may not converge; constrain "
                         "every species (e.g. [oracle.abinit] constraint_kind = 1)")
        while not state.finished:
            self.step(state)
        self.finish(state)
        return state

    def step(self, state: LearnState) -> None:
        """Run the phase in progress, record it, move on; the state is saved after it."""
        k, phase = state.iteration, state.phase
        rec = state.record(k)
        t0 = time.perf_counter()
        if phase == "label":          # iteration 0 labels the initial set, later ones the selection
            if self.root:
                if k == 0:
                    self.initial_label(rec)
                else:
                    self.label(k, rec)
            next_phase = "add"
        elif phase == "add":
            if self.root:
                self.add(k, rec)
            next_phase = "train"
        elif phase == "train":
            self.train(k, rec, first=k == 0)
            next_phase = "md"
        elif phase == "md" and k > 0:
            if self.root:
                self.md(k, rec)
            next_phase = "select"
        elif phase == "select" and k > 0:
            n_selected = self.select(k, rec) if self.root else 0
            n_selected = self._bcast(n_selected)
            next_phase = "label"
            if n_selected == 0:
                state.finished = True
                state.stop_reason = ("converged: no configuration selected in iteration "
                                     f"{k} (max grade {rec.get('max_grade', math.nan):.3g} vs "
                                     f"γ_select {self.settings.select.threshold:g})")
        else:
            raise MMTPError(f"unknown phase {phase!r} of iteration {k} in {self.state_path}")
        rec["wall_s"][phase] = rec["wall_s"].get(phase, 0.0) + (time.perf_counter() - t0)
        rec = self._bcast(rec)
        state.record(k).update(rec)
        if phase == "train":
            self.log_iteration(rec)
            if k >= self.settings.learn.max_iterations and not state.finished:
                state.finished = True
                state.stop_reason = f"limit: max_iterations = {self.settings.learn.max_iterations} reached"
            state.iteration = k + 1
        if not state.finished:
            state.phase = next_phase if phase != "train" else "md"
        else:
            state.phase = "done"
        self.save_state(state)
        self.comm.Barrier()

    # ------------------------------------------------------------------ iteration 0
    def initial_label(self, rec: dict) -> None:
        from mmtp_hpc.io.cfg import write_cfg

        s = self.settings
        species = self.species()
        d = iteration_dir(self.workdir, 0)
        d.mkdir(parents=True, exist_ok=True)
        if s.initial.file is not None:
            configs = read_initial(s, species)
            what = f"{len(configs)} configurations from {s.path(s.initial.file)}"
        else:
            configs = generate_initial(s, species)
            ini = s.initial
            what = (f"{len(configs)} generated {ini.lattice} cells ({ini.repeat}^3 conventional, "
                    f"a = {', '.join(f'{a:g}' for a in ini.a)} Å, {ini.per_a} each)")
        for k, cfg in enumerate(configs):
            cfg.features = dict(cfg.features)
            cfg.features["learn_tag"] = make_tag(0, "init", k)
        todo = [k for k, c in enumerate(configs) if not is_labelled(c)]
        self.log(f"iteration 0 (pre-training): {what}; {len(todo)} to label with the oracle")
        keep = list(range(len(configs)))
        if todo:
            batch = self._label_batch([configs[k] for k in todo], d / "label", rec)
            for k, cfg in zip(todo, batch.labelled, strict=True):
                if cfg is None:
                    continue
                cfg.features = dict(cfg.features)
                cfg.features["learn_tag"] = configs[k].features["learn_tag"]
                cfg.features.setdefault("learn_source", configs[k].features.get("learn_source", ""))
                configs[k] = cfg
            failed = {todo[j] for j, f in enumerate(batch.failures) if f is not None}
            keep = [k for k in keep if k not in failed]
        write_cfg(d / "labelled.cfg", [configs[k] for k in keep])
        rec.update(candidates=0, selected=len(configs), labelled=len(todo) - (len(configs) - len(keep)))

    # ------------------------------------------------------------------ md
    def md(self, k: int, rec: dict) -> None:
        """The explorations of iteration ``k``, on rank 0 alone (a serial communicator: the cells
        are small; training uses every rank)."""
        from mmtp_hpc.dynamics import ExtrapolationObserver, Simulation
        from mmtp_hpc.parallel.comm import SerialComm

        s = self.settings
        d = iteration_dir(self.workdir, k) / "md"
        potential = self.current_path
        results = []
        self.log(f"iteration {k}: MD, {len(s.runs)} run(s) with {potential.name}")
        for index, run in enumerate(s.runs):
            run_dir = d / run.name
            done = run_dir / "result.json"
            result = None
            if done.exists():
                result = json.loads(done.read_text(encoding="utf-8"))
            else:
                run_dir.mkdir(parents=True, exist_ok=True)
                for stale in ("extrapolative.cfg", "md.log"):
                    (run_dir / stale).unlink(missing_ok=True)
            if result is not None:
                self.log(f"  {run.name}: done before ({result['steps']} steps, max grade "
                         f"{result['max_grade']:.3g}, {result['saved']} saved)")
                results.append(result)
                continue
            base = run.table["md"].get("seed", s.learn.seed)
            seed = run_seed(int(base), k, index)
            settings = md_run_settings(run, s, potential=potential.resolve(), run_dir=run_dir, seed=seed)
            self.log(f"  run {index + 1}/{len(s.runs)}: {run.name} (seed {seed})")
            t0 = time.perf_counter()
            sim = Simulation.from_settings(settings, stream=self.md_stream, comm=SerialComm())
            error = ""
            try:
                reason = sim.run()
            except (MMTPError, FloatingPointError, ValueError, np.linalg.LinAlgError) as exc:
                # an extrapolating potential can blow up; what was saved before stays a candidate
                reason = ""
                error = f"{type(exc).__name__}: {exc}"
                self.log(f"  {run.name}: the run failed at step {sim.state.step}: {error}")
            obs = next((o for o, _ in sim.observers if isinstance(o, ExtrapolationObserver)), None)
            result = {"name": run.name, "exploration": run.exploration, "conditions": run.conditions,
                      "seed": seed, "steps": int(sim.state.step), "target_steps": int(settings.md.steps),
                      "max_grade": float(obs.max_grade) if obs is not None else math.nan,
                      "saved": int(obs.saved) if obs is not None else 0,
                      "broke": bool(reason), "stop_reason": reason, "error": error,
                      "wall_s": time.perf_counter() - t0}
            _write_json(done, result)
            results.append(result)
            self.log(f"  {run.name}: {result['steps']}/{result['target_steps']} steps, max grade "
                     f"{result['max_grade']:.3g}, {result['saved']} saved"
                     + (", stopped at γ_break" if reason else "") + f", {result['wall_s']:.1f} s")
        grades = [r["max_grade"] for r in results if np.isfinite(r["max_grade"])]
        rec.update(runs=results, max_grade=max(grades) if grades else math.nan,
                   broken=sum(1 for r in results if r["broke"]),
                   failed=sum(1 for r in results if r["error"]))

    # ------------------------------------------------------------------ select
    def candidates(self, k: int) -> list[Configuration]:
        from mmtp_hpc.io.cfg import read_cfg

        out = []
        for run in self.settings.runs:
            path = iteration_dir(self.workdir, k) / "md" / run.name / "extrapolative.cfg"
            if not path.exists():
                continue
            for cfg in read_cfg(path):
                cfg.features = dict(cfg.features)
                cfg.features["learn_run"] = run.name
                cfg.clear_labels()
                out.append(cfg)
        return out

    def select(self, k: int, rec: dict) -> int:
        from mmtp_hpc.active.selection import select_new
        from mmtp_hpc.io.cfg import write_cfg
        from mmtp_hpc.io.trainingset import read_trainingset_h5
        from mmtp_hpc.potentials.mtp.mlip_io import load_potential

        s = self.settings
        candidates = self.candidates(k)
        rec["candidates"] = len(candidates)
        d = iteration_dir(self.workdir, k)
        if not candidates:
            from mmtp_hpc.io.trainingset import read_trainingset_provenance

            rec["selected"] = 0
            rec["training_size"] = len(read_trainingset_provenance(self.training_path))
            self.log(f"iteration {k}: no configuration above γ_select = {s.select.threshold:g}")
            return 0
        pot = load_potential(self.current_path)
        training = read_trainingset_h5(self.training_path)
        t0 = time.perf_counter()
        result = select_new(pot, training, candidates, mode=s.select.mode,
                            threshold=s.select.maxvol_threshold, limit=s.select.limit,
                            progress=lambda msg: self.log("  " + msg))
        indices = [int(i) for i in result.indices]
        chosen = []
        for j, i in enumerate(indices):
            cfg = candidates[i].copy()
            cfg.features = dict(cfg.features)
            cfg.features["learn_tag"] = make_tag(k, "sel", j)
            grades = getattr(result, "candidate_grades", None)
            if grades is not None:
                cfg.features["learn_grade"] = f"{float(grades[i]):.6g}"
            chosen.append(cfg)
        write_cfg(d / "selected.cfg", chosen)
        rec["selected"] = len(chosen)
        self.log(f"iteration {k}: {len(candidates)} candidates -> {len(chosen)} selected by MaxVol "
                 f"({time.perf_counter() - t0:.1f} s)")
        return len(chosen)

    # ------------------------------------------------------------------ label
    def label(self, k: int, rec: dict) -> None:
        from mmtp_hpc.io.cfg import read_cfg, write_cfg

        d = iteration_dir(self.workdir, k)
        selected = read_cfg(d / "selected.cfg")
        self.log(f"iteration {k}: labelling {len(selected)} configuration(s) with the oracle")
        batch = self._label_batch(selected, d / "label", rec)
        out = []
        for src, cfg in zip(selected, batch.labelled, strict=True):
            if cfg is None:         # failed, recorded in rec["label_failures"] and the log
                continue
            cfg = cfg.copy()
            merged = dict(src.features)
            merged.update(cfg.features)
            merged["learn_tag"] = src.features["learn_tag"]
            cfg.features = merged
            cfg.nbh_grades = None
            out.append(cfg)
        write_cfg(d / "labelled.cfg", out)
        rec["labelled"] = len(out)

    def _label_batch(self, configs: list[Configuration], workdir: Path, rec: dict):
        """Label ``configs`` with the oracle, ``[oracle] workers`` at a time; a configuration whose
        DFT fails (SCF not converged after the retries, constraint missed, a DFT-code error, a
        timeout) is recorded with its reason and skipped; the DFT time goes into ``rec``."""
        from mmtp_hpc.active.oracles import label_batch

        batch = label_batch(self.oracle(), configs, workdir, log=self.log, skip_failures=True)
        rec["label_failures"] = batch.failure_table()
        rec["dft_runs"] = sum(1 for c in batch.labelled if c is not None) + batch.n_failed
        rec["dft_wall_s"] = batch.dft_wall_s
        rec["dft_core_s"] = batch.core_s
        if batch.n_failed:
            kinds: dict[str, int] = {}
            for f in batch.failures:
                if f is not None:
                    kinds[f.kind] = kinds.get(f.kind, 0) + 1
            self.log(f"  {batch.n_failed} of {len(configs)} label(s) failed and were skipped ("
                     + ", ".join(f"{v} {k}" for k, v in sorted(kinds.items()))
                     + f"); reasons in {workdir}/cfg_*/failed.json and state.json")
        if batch.n_failed == len(configs) and configs:
            raise MMTPError(f"every one of the {len(configs)} labels failed (see the log above); "
                            "fix the oracle settings and run the same command again")
        return batch

    # ------------------------------------------------------------------ add
    def add(self, k: int, rec: dict) -> None:
        from mmtp_hpc.io.cfg import read_cfg
        from mmtp_hpc.io.trainingset import read_trainingset_provenance, write_trainingset_h5

        d = iteration_dir(self.workdir, k)
        labelled = read_cfg(d / "labelled.cfg")
        present = (provenance_tags(read_trainingset_provenance(self.training_path))
                   if self.training_path.exists() else set())
        new, prov = [], []
        for cfg in labelled:
            tag = cfg.features.get("learn_tag")
            if not tag:
                raise MMTPError(f"{d / 'labelled.cfg'}: a configuration without learn_tag")
            if tag in present:
                continue
            new.append(cfg)
            prov.append(f"[{tag}] " + self._provenance_text(k, cfg))
        if new:
            write_trainingset_h5(self.training_path, new, provenance=prov, append=True,
                                 species=self.species())
        size = len(read_trainingset_provenance(self.training_path))
        rec.update(added=len(new), training_size=size)
        skipped = len(labelled) - len(new)
        self.log(f"iteration {k}: {len(new)} configuration(s) added to {self.training_path.name} "
                 f"({size} in all" + (f"; {skipped} were already there" if skipped else "") + ")")

    @staticmethod
    def _provenance_text(k: int, cfg: Configuration) -> str:
        f = cfg.features
        if k == 0:
            return f"mmtp learn pre-training: {f.get('learn_source', '')}".rstrip()
        parts = [f"mmtp learn iteration {k}", f"run {f.get('learn_run', '?')}",
                 f"step {f.get('md_step', '?')}", f"grade {f.get('MV_grade', '?')}"]
        return ", ".join(parts)

    # ------------------------------------------------------------------ train
    def train(self, k: int, rec: dict, first: bool) -> None:
        from mmtp_hpc.active.maxvol import attach_active_set
        from mmtp_hpc.io.trainingset import read_trainingset_h5
        from mmtp_hpc.potentials.mtp.mlip_io import load_potential, save_potential
        from mmtp_hpc.training.fit import train

        s = self.settings
        training = read_trainingset_h5(self.training_path)
        if first:
            pot = self.initial_potential()
            fit = not pot.trained   # a trained potential given in [potential] file is used as it is
        else:
            pot = load_potential(self.current_path)
            fit = True
        species = self.species()
        t0 = time.perf_counter()
        errors: dict = {}
        if fit:
            settings = s.train_settings(first)
            self.log(f"iteration {k}: training on {len(training)} configurations "
                     f"({sum(len(c) for c in training)} atoms), {settings.max_iter} iterations max, "
                     f"init {settings.init}")
            prepare_intervals(pot, training, s, first, self.log)
            result = train(pot, training, settings, comm=self.comm, log=self.log)
            pot = result.potential
            errors = dict(result.train_errors)
        else:
            self.log(f"iteration {k}: {s.potential.file} is trained; no pre-training")
        pot.species_names = list(species)
        if self.root:
            attach_active_set(pot, training, mode=s.select.mode)
            d = iteration_dir(self.workdir, k)
            d.mkdir(parents=True, exist_ok=True)
            save_potential(pot, d / "potential.almtp")
            _write_json(d / "train.json", {"errors": errors, "training_size": len(training),
                                           "wall_s": time.perf_counter() - t0})
            save_potential(pot, self.current_path)
        rec.update(errors=errors, training_size=len(training))

    # ------------------------------------------------------------------ output
    def log_iteration(self, rec: dict) -> None:
        self.log(f"iteration {rec['iteration']} done: " + _record_line(rec))

    def finish(self, state: LearnState) -> None:
        self.log(f"mmtp learn: {state.stop_reason}")
        if self.root:
            table = summary_table(state.history)
            self.log(table)
            header = f"# mmtp learn {self.settings.source}: {state.stop_reason}\n"
            (self.workdir / SUMMARY_FILE).write_text(header + table + "\n", encoding="utf-8")
            try:
                plot_history(state.history, self.workdir / PLOT_FILE, self.settings.select.threshold,
                             self.settings.select.break_)
                self.log(f"figure: {self.workdir / PLOT_FILE}")
            except ImportError:  # pragma: no cover - matplotlib is a dependency
                self.log("note: matplotlib is not available; no figure")
        if state.finished and self.settings.train.final_max_iter and state.final_refit is None \
                and self.training_path.exists() and self.current_path.exists():
            state.final_refit = self.final_refit(state)
            self.save_state(state)
        if self.root and self.training_path.exists() and self.current_path.exists():
            self.write_card(state)
        if self.settings.train.ensemble and state.finished:
            self.train_ensemble(state)
        report = None
        if self.settings.report.lattice is not None:
            report = self.magnetisation_report() if self.root else None
            report = self._bcast(report)
            if report is not None:
                state.report = report
                self.save_state(state)
        self.log(f"potential: {self.current_path}; training set: {self.training_path}")

    def final_refit(self, state: LearnState) -> dict:
        """``[train] final_max_iter`` iterations from the current coefficients on the final training
        set: the loop's short warm refits stop before the fit has settled. The refit potential
        becomes current.almtp (the loop's last one is kept as final/before.almtp)."""
        import shutil

        from mmtp_hpc.active.maxvol import attach_active_set
        from mmtp_hpc.io.trainingset import read_trainingset_h5
        from mmtp_hpc.potentials.mtp.mlip_io import load_potential, save_potential
        from mmtp_hpc.training.fit import train

        s = self.settings
        training = read_trainingset_h5(self.training_path)
        settings = s.train_settings(first=False, final=True)
        self.log(f"final refit: {len(training)} configurations, {settings.max_iter} iterations max, "
                 "from the current coefficients")
        t0 = time.perf_counter()
        result = train(load_potential(self.current_path), training, settings, comm=self.comm, log=self.log)
        pot = result.potential
        pot.species_names = list(self.species())
        record = {"max_iter": settings.max_iter, "training_size": len(training),
                  "errors": dict(result.train_errors), "wall_s": time.perf_counter() - t0,
                  "loss_start": result.history[0]["loss"] if result.history else None,
                  "loss_end": result.history[-1]["loss"] if result.history else None}
        if self.root:
            attach_active_set(pot, training, mode=s.select.mode)
            d = self.workdir / "final"
            d.mkdir(parents=True, exist_ok=True)
            with atomic_path(d / "before.almtp") as tmp:
                shutil.copyfile(self.current_path, tmp)
            save_potential(pot, d / "potential.almtp")
            _write_json(d / "train.json", record)
            save_potential(pot, self.current_path)
            errs = record["errors"]
            self.log("final refit done: " + ", ".join(f"{k} {v:.4g}" for k, v in errs.items()
                                                      if isinstance(v, (int, float))))
        return self._bcast(record)

    def write_card(self, state: LearnState) -> None:
        """current.almtp.card.json: the training range and who labelled the data (mmtp info)."""
        from mmtp_hpc.io.potential_card import training_range, write_card
        from mmtp_hpc.io.trainingset import read_trainingset_h5

        training = read_trainingset_h5(self.training_path)
        oracle = dict(self.settings.oracle) if isinstance(self.settings.oracle, dict) else {}
        card = {"description": f"mmtp learn {self.settings.source}: {state.stop_reason}",
                "training": training_range(training, self.species()),
                "oracle": {k: v for k, v in oracle.items() if k not in ("env", "command")}}
        totals = dft_totals(state.history)
        if totals["runs"]:
            card["labels_computed"] = {**totals, "iterations": state.iteration}
        if state.final_refit:
            card["final_refit"] = {k: state.final_refit[k] for k in ("max_iter", "training_size", "errors")
                                   if k in state.final_refit}
        path = write_card(self.current_path, card)
        self.log(f"potential card (training range, labels' provenance): {path}")

    def train_ensemble(self, state: LearnState) -> None:
        """``[train] ensemble`` members in workdir/ensemble (see :func:`train_ensemble`)."""
        from mmtp_hpc.io.trainingset import read_trainingset_h5

        train_ensemble(self.current_path, read_trainingset_h5(self.training_path), self.settings,
                       self.species(), self.workdir / "ensemble", comm=self.comm, log=self.log)

    def magnetisation_report(self) -> dict | None:
        """⟨m⟩ vs lattice parameter, moments relaxed, with the potential and with the oracle's
        model (analytic oracles only): table, max |Δ⟨m⟩|, PNG and CSV in the work directory."""
        from mmtp_hpc.analysis.scan import scan_lattice
        from mmtp_hpc.potentials.mtp.engine import MTPEngine
        from mmtp_hpc.potentials.mtp.mlip_io import load_potential

        r = self.settings.report
        model = getattr(self.oracle(), "model", None)
        if model is None or not hasattr(model, "relax_moments"):
            self.log("magnetisation check: the oracle is not an analytic model; skipped")
            return None
        species = self.species()
        pot = load_potential(self.current_path)
        a = np.asarray(r.a, dtype=float)
        kw = {"repeat": r.repeat, "relax": True, "tol": 1e-6}
        mine = scan_lattice(MTPEngine(pot), r.lattice, a, species, label="potential", **kw)
        ref = scan_lattice(model, r.lattice, a, species, label="oracle", **kw)
        lines = [f"magnetisation vs lattice parameter ({r.lattice}, moments relaxed), potential vs oracle:",
                 "      a_A " + " ".join(f"{'m_' + n + '_pot':>10} {'m_' + n + '_orc':>10} {'diff':>7}"
                                         for n in mine.moment_mean)]
        worst = 0.0
        for i, x in enumerate(a):
            cells = []
            for n in mine.moment_mean:
                p, q = mine.moment_mean[n][i], ref.moment_mean[n][i]
                worst = max(worst, abs(p - q))
                cells.append(f"{p:10.4f} {q:10.4f} {p - q:+7.4f}")
            lines.append(f"  {x:8.4f} " + " ".join(cells))
        ok = worst <= r.tolerance
        lines.append(f"max |Δ⟨m⟩| = {worst:.4f} μB/atom (tolerance {r.tolerance:g}): "
                     f"{'PASS' if ok else 'FAIL'}")
        for line in lines:
            self.log(line)
        try:
            from mmtp_hpc.analysis.csvtable import write_csv
            from mmtp_hpc.analysis.plots import plot_scan

            table = mine.table()
            table.update({key: v for key, v in ref.table(prefix="oracle_").items() if key != "a_A"})
            write_csv(self.workdir / MAGNETISATION_CSV, table, comment="\n".join(lines))
            plot_scan([mine, ref], self.workdir / MAGNETISATION_PLOT, "mmtp learn: potential vs oracle")
            self.log(f"figure: {self.workdir / MAGNETISATION_PLOT}")
        except ImportError:  # pragma: no cover
            pass
        return {"lattice": r.lattice, "a": a.tolist(),
                "potential": {n: v.tolist() for n, v in mine.moment_mean.items()},
                "oracle": {n: v.tolist() for n, v in ref.moment_mean.items()},
                "max_abs_diff": worst, "tolerance": r.tolerance, "pass": ok}


# --------------------------------------------------------------------------- summary
def _fmt(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, fmt)


def _record_line(rec: dict) -> str:
    e = rec.get("errors") or {}
    parts = [f"candidates {rec.get('candidates', 0)}", f"selected {rec.get('selected', 0)}",
             f"training set {rec.get('training_size', '-')}"]
    if "max_grade" in rec:
        parts.append(f"max grade {_fmt(rec['max_grade'], '.3g')}")
    if e:
        parts.append(f"RMSE E {_fmt(e.get('energy_rmse'), '.3f')} meV/atom, "
                     f"F {_fmt(e.get('force_rmse'), '.4f')} eV/Å, "
                     f"dE/dm {_fmt(e.get('magnetic_rmse'), '.4f')} eV/μB")
    parts.append(f"{sum(rec.get('wall_s', {}).values()):.1f} s")
    return "; ".join(parts)


def summary_table(history: list[dict]) -> str:
    """One line per iteration: candidates, selected, training-set size, max MD grade, runs
    stopped at γ_break, training RMSEs, wall time."""
    head = (f"{'iter':>4} {'runs':>4} {'broke':>5} {'max_grade':>9} {'cands':>6} {'select':>6} "
            f"{'train':>6} {'E_meV/at':>9} {'F_eV/A':>8} {'S_GPa':>7} {'dEdm':>7} {'wall_s':>7}")
    dft = any("dft_runs" in rec for rec in history)
    if dft:
        head += f" {'dft':>4} {'fail':>4} {'dft_core_h':>10}"
    lines = [head]
    for rec in history:
        e = rec.get("errors") or {}
        lines.append(
            f"{rec['iteration']:>4} {len(rec.get('runs', [])):>4} {rec.get('broken', 0):>5} "
            f"{_fmt(rec.get('max_grade'), '9.3g'):>9} {rec.get('candidates', 0):>6} "
            f"{rec.get('selected', 0):>6} "
            f"{_fmt(rec.get('training_size'), '6d'):>6} {_fmt(e.get('energy_rmse'), '9.3f'):>9} "
            f"{_fmt(e.get('force_rmse'), '8.4f'):>8} {_fmt(e.get('stress_rmse'), '7.3f'):>7} "
            f"{_fmt(e.get('magnetic_rmse'), '7.4f'):>7} {sum(rec.get('wall_s', {}).values()):7.1f}"
            + (f" {rec.get('dft_runs', 0):>4} {len(rec.get('label_failures', [])):>4} "
               f"{rec.get('dft_core_s', 0.0) / 3600:>10.3f}" if dft else ""))
    total = sum(sum(r.get("wall_s", {}).values()) for r in history)
    lines.append(f"total wall time {total:.1f} s")
    if dft:
        runs = sum(r.get("dft_runs", 0) for r in history)
        failed = sum(len(r.get("label_failures", [])) for r in history)
        wall = sum(r.get("dft_wall_s", 0.0) for r in history)
        core = sum(r.get("dft_core_s", 0.0) for r in history)
        lines.append(f"DFT: {runs} labels ({failed} failed and skipped), {wall / 3600:.2f} h of "
                     f"program wall time, {core / 3600:.2f} core-h")
    return "\n".join(lines)


def plot_history(history: list[dict], path: Path, select: float, break_: float) -> None:
    """Selected configurations per iteration (bars) and the max MD grade per iteration (log
    scale, with γ_select and γ_break) — like Fig. 2 of arXiv 2605.26897."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = [r["iteration"] for r in history if r["iteration"] > 0]
    selected = [r.get("selected", 0) for r in history if r["iteration"] > 0]
    grades = [r.get("max_grade", math.nan) for r in history if r["iteration"] > 0]
    sizes = [r.get("training_size", math.nan) for r in history if r["iteration"] > 0]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(6.0, 6.0), sharex=True)
    ax1.bar(its, selected, color="tab:blue")
    ax1.set_ylabel("selected configurations")
    ax1b = ax1.twinx()
    ax1b.plot(its, sizes, "o-", color="tab:gray", ms=3)
    ax1b.set_ylabel("training-set size", color="tab:gray")
    ax2.semilogy(its, grades, "o-", color="tab:red", label="max grade in MD")
    ax2.axhline(select, ls="--", color="k", lw=0.8, label=f"γ_select = {select:g}")
    ax2.axhline(break_, ls=":", color="k", lw=0.8, label=f"γ_break = {break_:g}")
    ax2.set_xlabel("iteration")
    ax2.set_ylabel("extrapolation grade")
    ax2.legend(fontsize=8)
    if its:
        ax2.set_xticks(its)
    fig.suptitle("mmtp learn")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def dft_totals(history: list[dict]) -> dict:
    """DFT runs, core-hours and failed labels over a loop's history (for cards)."""
    return {"runs": sum(int(r.get("dft_runs", 0) or 0) for r in history),
            "core_hours": round(sum(float(r.get("dft_core_s", 0.0) or 0.0) for r in history) / 3600, 2),
            "failed": sum(len(r.get("label_failures", []) or []) for r in history)}


def train_ensemble(current: Path, training: list[Configuration], settings: LearnSettings,
                   species: list[str], directory: Path, comm: Any = None,
                   log: Callable[[str], None] = print, max_iter: int | None = None) -> None:
    """``[train] ensemble`` members fitted afresh (random starts, seeds seed+1, seed+2, …) to
    ``training`` with the basis and intervals of the potential ``current`` (``max_iter``, default
    ``[train] ensemble_max_iter`` or else ``max_iter``, iterations each), in ``directory``
    (member_NN.almtp, training errors in ensemble.json); each is saved as it is done, so a rerun
    trains only the missing ones."""
    import dataclasses as dc

    from mmtp_hpc.active.maxvol import attach_active_set
    from mmtp_hpc.parallel.comm import get_comm
    from mmtp_hpc.potentials.mtp.mlip_io import load_potential, save_potential
    from mmtp_hpc.training.fit import train

    comm = get_comm(comm)
    root = comm.Get_rank() == 0
    n = settings.train.ensemble
    base = dc.replace(settings.train_settings(first=True), init="random")
    if max_iter is None:
        max_iter = settings.train.ensemble_max_iter
    if max_iter:
        base = dc.replace(base, max_iter=int(max_iter))
    errors = {}
    for i in range(n):
        path = directory / f"member_{i:02d}.almtp"
        if path.exists():
            continue
        ts = dc.replace(base, seed=settings.train.seed + 1 + i)
        log(f"ensemble member {i + 1}/{n} (seed {ts.seed}): {len(training)} configurations, "
            f"{ts.max_iter} iterations max")
        result = train(load_potential(current), training, ts, comm=comm, log=log)
        pot = result.potential
        pot.species_names = list(species)
        errors[f"member_{i:02d}"] = dict(result.train_errors)
        if root:
            attach_active_set(pot, training, mode=settings.select.mode)
            directory.mkdir(parents=True, exist_ok=True)
            save_potential(pot, path)
    if root:
        summary = directory / "ensemble.json"
        old = json.loads(summary.read_text(encoding="utf-8")) if summary.exists() else {}
        old.update(errors)
        _write_json(summary, old)
        log(f"ensemble: {n} members in {directory} (training errors in {summary.name})")


def read_state(workdir: str | Path) -> LearnState:
    """The loop state of a work directory (for scripts and tests)."""
    return LearnState.load(Path(workdir) / STATE_FILE)


def run_learning(settings: LearnSettings, comm: Any = None, stream: TextIO | None = sys.stdout,
                 md_stream: TextIO | None | str = "default") -> LearnState:
    """Run (or resume) the loop of ``settings``; returns the final state."""
    return Learner(settings, comm=comm, stream=stream, md_stream=md_stream).run()


__all__ = ["LearnState", "Learner", "MDRun", "read_state", "run_learning", "summary_table",
           "plot_history", "prepare_intervals", "generate_initial", "provenance_tags"]
