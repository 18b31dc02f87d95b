"""``mmtp learn`` input settings: dataclasses loaded from TOML and validated with clear messages.

This module's single job is turning an active-learning input file into validated
:class:`LearnSettings` (CONVENTIONS item 7), declared and checked with
:mod:`mmtp_hpc.settings`, the machinery that ``mmtp md`` and the oracle tables share. Errors name
the file, the line, the key, what was expected and what was found. Relative paths are
relative to the directory of the input file.

Sections and keys (``mmtp learn --help-input`` prints them with defaults)::

    [learn]       workdir, species, max_iterations, seed
    [potential]   file | level, radial_basis_size, mag_basis_size, mag_interval, min_dist, max_dist
    [initial]     file | lattice, a, repeat, per_a, jitter, strain, magmoms, moment_spread,
                  flip_fraction, seed                       (the pre-training set)
    [oracle]      kind, … (read by mmtp_hpc.active.oracles.oracle_from_settings)
    [train]       weights, max_iter, retrain_max_iter, warm_start, symmetrize, … (TrainSettings)
    [select]      mode, threshold (γ_select), break (γ_break), maxvol_threshold, limit
    [[learn.md]]  explorations: name, a, temperature_K, pressure_GPa (lists expand into one
                  MD run per combination) and the sub-tables system, md, moments,
                  extrapolation, output of an ``mmtp md`` input (see ``mmtp md --help-input``)
    [report]      lattice, a, repeat, tolerance   (magnetisation vs lattice parameter check)

Each exploration is an ``mmtp md`` input without the parts the loop owns: the potential
file (the current potential), the extrapolation thresholds and ``save_to`` (from
[select] and the run directory) and the output paths (inside the run directory).
"""

from __future__ import annotations

import copy
import difflib
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmtp_hpc.dynamics.settings import _magmoms, _species, settings_from_dict
from mmtp_hpc.errors import InputError
from mmtp_hpc.settings import (
    Bad,
    Fail,
    boolean,
    build_section,
    check_sections,
    choice,
    describe_section,
    failer,
    float_list,
    integer,
    interval,
    key as _key,
    optional,
    path_with,
    read_toml,
    real,
    resolve_path,
    section_dict,
    section_table,
    text,
    type_name,
)

POTENTIAL_SUFFIXES = (".mtp", ".almtp", ".mtpr", ".h5", ".hdf5")
CONFIG_SUFFIXES = (".cfg", ".xyz", ".extxyz", ".h5", ".hdf5")


# --------------------------------------------------------------------------- checkers
def _limit(value: Any) -> int | None:
    if value is None:
        return None
    n = integer(0)(value)
    return None if n == 0 else n


# --------------------------------------------------------------------------- sections
@dataclass
class LoopSettings:
    """[learn]: where the loop keeps its state, and when it stops."""

    workdir: str = _key("learn", "work directory: state.json, training set, one folder per iteration",
                        text(optional=False))
    species: list[str] | None = _key(None, "chemical symbols of potential types 0, 1, … (default: the "
                                     "potential's names)", _species)
    max_iterations: int = _key(10, "learning iterations after the pre-training (the loop also stops "
                               "when an iteration selects nothing)", integer(1))
    seed: int = _key(2024, "base seed of the MD runs (run seeds are derived from it, the iteration "
                     "and the run)", integer(0, 2 ** 62))


@dataclass
class PotentialSpec:
    """[potential]: an existing file, or a new untrained potential of a given level."""

    file: str | None = _key(None, "potential to start from (.mtp, .almtp, .h5), trained or a template; "
                            "or give level", path_with(*POTENTIAL_SUFFIXES))
    level: int | None = _key(None, "level of a new potential (MLIP-3 template levels 2–28)",
                             optional(integer(2, 28)))
    radial_basis_size: int = _key(8, "radial basis size R of a new potential", integer(2, 32))
    mag_basis_size: int = _key(3, "magnetic basis size M of a new potential (1: non-magnetic)",
                               integer(1, 8))
    mag_interval: list[float] = _key([-3.0, 3.0], "initial magnetic interval [min, max] μB of a new "
                                     "potential (see train.magnetic_interval)", interval())
    min_dist: float = _key(2.0, "R_min (Å) of a new potential (see train.min_dist)", real(0.0, lo_open=True))
    max_dist: float = _key(5.0, "cutoff R_cut (Å) of a new potential", real(0.0, lo_open=True))


@dataclass
class InitialSettings:
    """[initial]: the pre-training set, read from a file or generated and labelled by the oracle."""

    file: str | None = _key(None, "configurations (.cfg, .xyz, .h5); unlabelled ones go to the oracle; "
                            "or generate with lattice", path_with(*CONFIG_SUFFIXES))
    lattice: str | None = _key(None, "generated cells: bcc, fcc, b2, sc, l12",
                               optional(choice("bcc", "fcc", "b2", "sc", "l12")))
    a: list[float] | None = _key(None, "lattice parameter(s) (Å) of the generated cells",
                                 float_list("a lattice parameter in Å", 0.0, lo_open=True))
    repeat: int = _key(2, "repeats of the conventional cell", integer(1, 10))
    per_a: int = _key(4, "generated configurations per lattice parameter", integer(1))
    jitter: float = _key(0.05, "Gaussian displacement (Å)", real(0.0))
    strain: float = _key(0.01, "Gaussian symmetric strain (dimensionless)", real(0.0, 0.2))
    magmoms: float | list[float] | None = _key(None, "moments (μB) around which the generated ones "
                                               "scatter: one value or one per species", _magmoms)
    moment_spread: float = _key(0.2, "Gaussian scatter of the generated moments (μB)", real(0.0))
    flip_fraction: float = _key(0.0, "fraction of generated moments with flipped sign", real(0.0, 1.0))
    seed: int = _key(1, "seed of the generated cells", integer(0, 2 ** 62))


@dataclass
class LearnTrainSettings:
    """[train]: :class:`~mmtp_hpc.training.fit.TrainSettings` of the fits."""

    energy_weight: float = _key(1.0, "energy weight", real(0.0))
    force_weight: float = _key(0.01, "force weight", real(0.0))
    stress_weight: float = _key(0.001, "stress weight", real(0.0))
    magnetic_weight: float = _key(0.1, "∂E/∂m weight (what places the relaxed moments)", real(0.0))
    weight_scaling: int = _key(1, "divide energy and stress terms by N^k (MLIP-3)", integer(0, 2))
    max_iter: int = _key(300, "iterations of the first fit (pre-training)", integer(0))
    retrain_max_iter: int = _key(150, "iterations of each refit", integer(0))
    final_max_iter: int = _key(0, "iterations of a final refit (from the current coefficients) when the "
                               "loop ends, before the card and the ensemble; the short warm refits of "
                               "the loop leave the fit unfinished (0: none)", integer(0))
    warm_start: bool = _key(True, "refit from the current coefficients (init keep); false: every refit "
                            "starts from train.init", boolean())
    init: str = _key("random", "start of the first fit: random, default, keep",
                     choice("random", "default", "keep"))
    tolerance: float = _key(1e-8, "stop when a chunk lowers the loss by less than this fraction", real(0.0))
    linear_every: int = _key(50, "iterations between exact linear re-solves", integer(1))
    symmetrize: bool = _key(True, "fit the spin-symmetrised energy ½[E(M)+E(−M)]", boolean())
    magnetic_interval: str = _key("auto", "auto: ±max|m| per species of the data, widened (never "
                                  "narrowed) when new data need it; keep: the potential's",
                                  choice("auto", "keep"))
    min_dist: str = _key("auto", "auto: 0.99 × shortest distance of the first fit's data; keep",
                         choice("auto", "keep"))
    optimizer: str = _key("bfgs", "bfgs or lbfgs", choice("bfgs", "lbfgs"))
    seed: int = _key(0, "seed of the random start", integer(0, 2 ** 31 - 1))
    log_every: int = _key(50, "training log interval (iterations)", integer(1))
    threads: int = _key(0, "OpenMP threads of the kernels (0: OMP_NUM_THREADS or 1)", integer(0))
    ensemble: int = _key(0, "members of a final ensemble trained on the final training set when the loop "
                         "ends (fresh random starts, seeds seed+1, seed+2, …; 0: none): "
                         "workdir/ensemble/member_NN.almtp, for uncertainty (mmtp validate --ensemble)",
                         integer(0, 64))
    ensemble_max_iter: int = _key(0, "iterations of each ensemble member (0: max_iter); a member starts "
                                  "from random coefficients, so it needs about as many as the first fit "
                                  "and the refits together", integer(0))


@dataclass
class SelectSettings:
    """[select]: extrapolation thresholds of the MD runs and the MaxVol selection."""

    mode: str = _key("nbh", "grades and active set per neighbourhood (nbh) or configuration (cfg)",
                     choice("nbh", "cfg"))
    threshold: float = _key(2.0, "γ_select: MD saves configurations with a grade above this",
                            real(1.0))
    break_: float = _key(10.0, "γ_break: an MD run stops above this grade (the next run goes on)",
                         real(1.0), toml_name="break")
    maxvol_threshold: float = _key(1.001, "MaxVol swap threshold of the selection", real(1.0))
    limit: int | None = _key(20, "at most this many configurations selected per iteration (0: no limit)",
                             _limit)


@dataclass
class ReportSettings:
    """[report]: magnetisation vs lattice parameter, potential vs oracle (analytic oracles)."""

    lattice: str | None = _key(None, "cubic lattice of the check (none: no check)",
                               optional(choice("bcc", "fcc", "b2", "sc", "l12")))
    a: list[float] | None = _key(None, "lattice parameters (Å)",
                                 float_list("a lattice parameter in Å", 0.0, lo_open=True))
    repeat: int = _key(1, "repeats of the conventional cell", integer(1, 10))
    tolerance: float = _key(0.05, "largest acceptable |Δ⟨m⟩| (μB/atom), reported as pass/fail",
                            real(0.0, lo_open=True))


SECTIONS: dict[str, type] = {
    "learn": LoopSettings,
    "potential": PotentialSpec,
    "initial": InitialSettings,
    "train": LearnTrainSettings,
    "select": SelectSettings,
    "report": ReportSettings,
}
TABLE_SECTIONS = ("oracle",)   # passed through to their own readers
ORACLE_KINDS = ("analytic", "ase", "command")

# sub-tables of an exploration, validated by mmtp_hpc.dynamics.settings
MD_SUBTABLES = ("system", "md", "moments", "extrapolation", "output")
# keys the loop sets itself: (sub-table, key) → why
MD_OWNED = {
    ("potential", None): "the loop runs every iteration with its current potential",
    ("extrapolation", "select"): "set [select] threshold",
    ("extrapolation", "break"): "set [select] break",
    ("extrapolation", "save_to"): "the loop keeps the candidates in the run directory",
    ("extrapolation", "mode"): "set [select] mode",
    ("output", "checkpoint"): "a killed run is repeated from its start, no checkpoints",
    ("output", "checkpoint_every"): "a killed run is repeated from its start, no checkpoints",
    ("output", "log"): "the log goes to md.log in the run directory",
}
CONDITION_KEYS = ("a", "temperature_K", "pressure_GPa")
EXPLORATION_KEYS = ("name",) + CONDITION_KEYS + MD_SUBTABLES


@dataclass
class MDRun:
    """One MD run of an exploration: its name and its ``mmtp md`` input table (without the parts
    the loop fills in, see :func:`md_run_settings`)."""

    name: str
    exploration: int
    table: dict
    conditions: dict[str, float]


@dataclass
class LearnSettings:
    """All settings of ``mmtp learn``; ``source`` is the input file, ``base_dir`` resolves paths."""

    learn: LoopSettings = field(default_factory=LoopSettings)
    potential: PotentialSpec = field(default_factory=PotentialSpec)
    initial: InitialSettings = field(default_factory=InitialSettings)
    train: LearnTrainSettings = field(default_factory=LearnTrainSettings)
    select: SelectSettings = field(default_factory=SelectSettings)
    report: ReportSettings = field(default_factory=ReportSettings)
    oracle: dict = field(default_factory=dict)
    explorations: list[dict] = field(default_factory=list)
    runs: list[MDRun] = field(default_factory=list)
    source: str | None = None
    base_dir: str = "."
    text: str | None = field(default=None, repr=False)   # the input file's text (error lines)

    def path(self, value: str | None) -> Path | None:
        """A path from the input resolved against the input file's directory."""
        return resolve_path(self.base_dir, value)

    @property
    def workdir(self) -> Path:
        return self.path(self.learn.workdir)

    def to_dict(self) -> dict:
        """Resolved settings as a TOML-shaped dict (echoed into the log, the state and HDF5)."""
        out: dict[str, Any] = {}
        for name in SECTIONS:
            out[name] = section_dict(getattr(self, name))
        out["learn"]["md"] = copy.deepcopy(self.explorations)
        out["oracle"] = copy.deepcopy(self.oracle)
        return out

    def train_settings(self, first: bool, final: bool = False):
        """:class:`TrainSettings` of the first fit (``first``), of a refit, or of the final refit
        (``final``: ``final_max_iter`` iterations from the current coefficients)."""
        from mmtp_hpc.training.fit import TrainSettings

        t = self.train
        init = "keep" if final else (t.init if first or not t.warm_start else "keep")
        max_iter = t.final_max_iter if final else (t.max_iter if first else t.retrain_max_iter)
        return TrainSettings(
            energy_weight=t.energy_weight, force_weight=t.force_weight, stress_weight=t.stress_weight,
            magnetic_weight=t.magnetic_weight, weight_scaling=t.weight_scaling,
            max_iter=max_iter, tolerance=t.tolerance,
            linear_every=t.linear_every, symmetrize=t.symmetrize, seed=t.seed, init=init,
            # the loop handles both intervals itself (see learn.prepare_intervals)
            min_dist="keep", magnetic_interval="keep", log_every=t.log_every,
            num_threads=t.threads or None, optimizer=t.optimizer)


# --------------------------------------------------------------------------- loading
def load_learn_settings(path: str | Path) -> LearnSettings:
    """Read and validate an ``mmtp learn`` input file."""
    data, text_ = read_toml(path)
    return learn_settings_from_dict(data, source=str(path), base_dir=str(Path(path).parent), text=text_)


def learn_settings_from_dict(data: dict, source: str | None = None, base_dir: str = ".",
                             text: str | None = None) -> LearnSettings:
    """Validate a TOML-shaped dict into :class:`LearnSettings`."""
    fail = failer(source, text, array="learn.md")
    check_sections(data, list(SECTIONS) + list(TABLE_SECTIONS), fail)
    out = LearnSettings(source=source, base_dir=base_dir, text=text)
    explorations_raw: Any = []
    for name, cls in SECTIONS.items():
        values = section_table(data, name, fail)
        if name == "learn":
            values = dict(values)
            explorations_raw = values.pop("md", [])
        setattr(out, name, build_section(cls, name, values, fail))
    oracle = data.get("oracle")
    if oracle is None:
        raise fail("an [oracle] table is required, e.g. [oracle] kind = \"analytic\", model = \"default\"")
    if not isinstance(oracle, dict):
        raise fail(f"[oracle] must be a table, got {type_name(oracle)}", "oracle")
    if "kind" not in oracle:
        raise fail("the oracle needs kind = \"analytic\", \"ase\" or \"command\"", "oracle")
    try:
        choice(*ORACLE_KINDS)(oracle["kind"])
    except Bad as exc:
        raise fail(str(exc), "oracle", "kind") from None
    out.oracle = dict(oracle)
    _cross_check(out, fail)
    out.explorations, out.runs = _explorations(explorations_raw, out, fail)
    return out


def _cross_check(s: LearnSettings, fail: Fail) -> None:
    p = s.potential
    if (p.file is None) == (p.level is None):
        raise fail("give either file = \"pot.almtp\" (a potential to start from) or level = 10 (a new "
                   "untrained potential), exactly one", "potential",
                   "file" if p.file is not None else None)
    if p.level is not None and p.min_dist >= p.max_dist:
        raise fail(f"min_dist ({p.min_dist:g}) must be smaller than max_dist ({p.max_dist:g})",
                   "potential", "min_dist")
    if p.level is not None and s.learn.species is None:
        raise fail("a new potential needs the chemical symbols: [learn] species = [\"Fe\"]", "learn")
    if p.file is not None and not s.path(p.file).is_file():
        raise fail(f"potential file {s.path(p.file)} not found", "potential", "file")
    ini = s.initial
    if ini.file is not None and ini.lattice is not None:
        raise fail("give either file = … or lattice = … (generated cells), not both", "initial",
                   "lattice")
    if ini.file is not None and not s.path(ini.file).is_file():
        raise fail(f"file {s.path(ini.file)} not found", "initial", "file")
    if ini.lattice is not None:
        if ini.a is None:
            raise fail("generated cells need the lattice parameter(s) a (Å)", "initial", "lattice")
        if ini.magmoms is None:
            raise fail("generated cells need magmoms (μB), one value or one per species", "initial",
                       "lattice")
        if isinstance(ini.magmoms, list) and s.learn.species is not None \
                and len(ini.magmoms) != len(s.learn.species):
            raise fail(f"{len(ini.magmoms)} moments for {len(s.learn.species)} species "
                       f"{s.learn.species}", "initial", "magmoms")
    if ini.file is None and ini.lattice is None:
        raise fail("an initial training set is needed: [initial] file = … or lattice = \"bcc\", "
                   "a = [...], magmoms = … (generated and labelled by the oracle)", "initial")
    sel = s.select
    if not sel.threshold < sel.break_:
        raise fail(f"threshold ({sel.threshold:g}) must be smaller than break ({sel.break_:g})",
                   "select", "threshold")
    r = s.report
    if (r.lattice is None) != (r.a is None):
        raise fail("the magnetisation check needs both lattice and a", "report",
                   "a" if r.a is None else "lattice")


def _explorations(raw: Any, s: LearnSettings, fail: Fail
                  ) -> tuple[list[dict], list[MDRun]]:
    """Validate the [[learn.md]] tables and expand their condition lists into MD runs."""
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list) or not raw or not all(isinstance(e, dict) for e in raw):
        raise fail("at least one exploration is needed: [[learn.md]] with [learn.md.system], "
                   "[learn.md.md], … like an mmtp md input", "learn.md")
    explorations, runs, names = [], [], set()
    for i, ex in enumerate(raw):
        for key in ex:
            if key not in EXPLORATION_KEYS:
                hint = difflib.get_close_matches(key, EXPLORATION_KEYS, n=1)
                extra = (" (the potential is the loop's current one)" if key == "potential" else "")
                raise fail(f"unknown key {key!r}; allowed in [[learn.md]]: {', '.join(EXPLORATION_KEYS)}"
                           + (f" (did you mean {hint[0]!r}?)" if hint else "") + extra,
                           "learn.md", key, i)
        name = ex.get("name", f"md{i}")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise fail(f"expected a name of letters, digits, '_', '.', '-', got {name!r}", "learn.md",
                       "name", i)
        if name in names:
            raise fail(f"two explorations are named {name!r}", "learn.md", "name", i)
        names.add(name)
        table: dict[str, Any] = {}
        for sub in MD_SUBTABLES:
            value = ex.get(sub, {})
            if not isinstance(value, dict):
                raise fail(f"must be a table, got {type_name(value)}", f"learn.md.{sub}", None, i)
            for key in value:
                if (sub, key) in MD_OWNED:
                    raise fail(f"{key!r} is set by the loop: {MD_OWNED[(sub, key)]}", f"learn.md.{sub}",
                               key, i)
            table[sub] = copy.deepcopy(value)
        conditions: dict[str, list[float]] = {}
        for key in CONDITION_KEYS:
            if key in ex:
                check = (float_list("a lattice parameter in Å", 0.0, lo_open=True) if key == "a" else
                         float_list("a temperature in K", 0.0) if key == "temperature_K" else
                         float_list("a pressure in GPa"))
                try:
                    conditions[key] = check(ex[key])
                except Bad as exc:
                    raise fail(str(exc), "learn.md", key, i) from None
        if "a" in conditions and "a" in table["system"]:
            raise fail("give the lattice parameter(s) once: as a = [...] of the exploration or in "
                       "[learn.md.system]", "learn.md.system", "a", i)
        if "temperature_K" in conditions and "temperature_K" in table["md"]:
            raise fail("give the temperature(s) once: as temperature_K = [...] of the exploration or in "
                       "[learn.md.md]", "learn.md.md", "temperature_K", i)
        if "pressure_GPa" in conditions and "pressure_GPa" in table["md"]:
            raise fail("give the pressure(s) once", "learn.md.md", "pressure_GPa", i)
        sy = table["system"]
        if "structure" in sy and isinstance(sy["structure"], str):
            sy["structure"] = str(s.path(sy["structure"]))
        if "species" not in sy and s.learn.species is not None:
            sy["species"] = list(s.learn.species)
        ext = table["extrapolation"]
        ext.setdefault("every", 10)
        if isinstance(ext["every"], int) and not isinstance(ext["every"], bool) and ext["every"] < 1:
            raise fail("an exploration needs grades: every >= 1", "learn.md.extrapolation", "every", i)
        explorations.append({"name": name, **{k: v for k, v in conditions.items()}, **table})
        keys = list(conditions)
        combos = list(itertools.product(*(conditions[k] for k in keys))) or [()]
        for combo in combos:
            cond = dict(zip(keys, combo, strict=True))
            run_table = copy.deepcopy(table)
            if "a" in cond:
                run_table["system"]["a"] = cond["a"]
            if "temperature_K" in cond:
                run_table["md"]["temperature_K"] = cond["temperature_K"]
            if "pressure_GPa" in cond:
                run_table["md"]["pressure_GPa"] = cond["pressure_GPa"]
            label = "_".join([name] + [f"{_short(k)}{v:g}" for k, v in cond.items()])
            run = MDRun(label, i, run_table, cond)
            # validate now (with a stand-in potential file), so mistakes cost nothing
            try:
                md_run_settings(run, s, potential="potential.almtp", run_dir=Path(s.base_dir), seed=0)
            except InputError as exc:
                fieldname = exc.field or ""
                sub, _, key = fieldname.partition(".")
                section = f"learn.md.{sub}" if sub else "learn.md"
                where_cond = f" (run {label})" if cond else ""
                raise fail(exc.reason + where_cond, section, key or None, i) from None
            runs.append(run)
    return explorations, runs


def _short(key: str) -> str:
    return {"a": "a", "temperature_K": "T", "pressure_GPa": "P"}[key]


def md_run_settings(run: MDRun, s: LearnSettings, potential: str | Path, run_dir: Path, seed: int):
    """The :class:`~mmtp_hpc.dynamics.settings.RunSettings` of one MD run of the loop: the
    exploration's table with the current potential, the [select] thresholds, the candidates
    saved to ``run_dir/extrapolative.cfg``, output files inside ``run_dir``."""
    table = copy.deepcopy(run.table)
    table["potential"] = {"file": str(potential)}
    table["md"]["seed"] = seed   # derived by the loop from md.seed or learn.seed (learn.run_seed)
    ext = table["extrapolation"]
    ext["select"] = s.select.threshold
    ext["break"] = s.select.break_
    ext["mode"] = s.select.mode
    ext["save_to"] = "extrapolative.cfg"
    out = table["output"]
    out.setdefault("trajectory", "")
    out["checkpoint"] = ""       # a run killed midway is repeated from its start (same seed)
    out["log"] = "md.log"
    return settings_from_dict(table, source=str(run_dir / "input.toml"), base_dir=str(run_dir))


# --------------------------------------------------------------------------- help
def describe() -> str:
    """The input format as text: every section and key with default and description."""
    lines = ["mmtp learn input (TOML). Paths are relative to the input file.", ""]
    for name, cls in SECTIONS.items():
        lines += describe_section(name, cls)
        lines.append("")
    from mmtp_hpc.active.oracles import describe_oracle

    lines += [*describe_oracle(), "",
              "[[learn.md]]                          # one or more explorations",
              "  name                 = \"md0\"          # run directories are named after it",
              "  a                    = [2.8, 3.0]     # lattice parameters (Å): one run per value …",
              "  temperature_K        = [300, 900]     # … and per temperature (all combinations)",
              "  pressure_GPa         = [0.0]          # … and per pressure (npt)",
              "[learn.md.system] [learn.md.md] [learn.md.moments] [learn.md.extrapolation] [learn.md.output]",
              "  as in an mmtp md input (mmtp md --help-input), except the keys the loop sets:",
              *(f"    {sub}{'.' + key if key else ''}: {why}" for (sub, key), why in MD_OWNED.items()),
              "  extrapolation.every defaults to 10 steps here.", ""]
    return "\n".join(lines)
