"""MD input settings: dataclasses loaded from TOML and validated with clear messages.

This module's single job is turning an ``mmtp md`` input file into validated
:class:`RunSettings` (CONVENTIONS item 7). Every key is declared once, in the dataclasses
below, with its type, default, allowed values and a one-line description; the same
declarations drive validation, ``mmtp md --help-input`` and :meth:`RunSettings.to_dict`
(the resolved settings echoed into logs and HDF5 files). The declaring, reading and checking
machinery is :mod:`mmtp_hpc.settings`, shared with ``mmtp learn`` and the oracle tables.

Errors name the file, the line, the key, what was expected and what was found; an
unknown or mistyped key names the allowed keys of its section (and the closest match).
Relative paths are relative to the directory of the input file.

Sections and keys (defaults in brackets; ``mmtp md --help-input`` prints this table from
the declarations)::

    [system]       structure | lattice, a, repeat, species, magmoms, composition, jitter
    [potential]    file, symmetrize, threads
    [md]           steps, timestep_fs, ensemble, temperature_K, initial_temperature_K,
                   pressure_GPa, thermostat, damping_fs, nh_chain, barostat,
                   barostat_damping_fs, compressibility_per_GPa, seed, velocities, skin
    [moments]      mode, every, relax_tol, relax_max_iter, gamma, mc_sweeps,
                   mc_flip_fraction, mc_max_change, bounds
    [extrapolation] every, mode, select, break, save_to
    [output]       trajectory, every, store, checkpoint, checkpoint_every, log, log_every
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmtp_hpc.settings import (
    Bad as _Bad,
    Fail,
    boolean,
    build_section,
    check_sections,
    choice,
    describe_section,
    failer,
    integer,
    key as _key,
    number as _number,
    path_with as _path_with,
    read_toml,
    real,
    resolve_path,
    section_dict,
    section_table,
    text,
)

__all__ = ["RunSettings", "SECTIONS", "describe", "load_settings", "read_toml", "resolve_path",
           "settings_from_dict"]


# --------------------------------------------------------------------------- checkers
def _repeat(value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value] * 3
    if not (isinstance(value, list) and len(value) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise _Bad(f"expected an integer or three integers, got {value!r}")
    if min(value) < 1:
        raise _Bad(f"expected repeats >= 1, got {value}")
    return [int(v) for v in value]


def _species(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
        raise _Bad(f"expected a list of chemical symbols such as [\"Fe\", \"Al\"], got {value!r}")
    from ase.data import atomic_numbers
    for s in value:
        if s not in atomic_numbers:
            raise _Bad(f"{s!r} is not a chemical symbol")
    if len(set(value)) != len(value):
        raise _Bad(f"species must be distinct, got {value}")
    return list(value)


def _magmoms(value: Any) -> float | list[float] | None:
    if value is None:
        return None
    if isinstance(value, list):
        return [_number(v, "a moment in μB") for v in value]
    return _number(value, "a moment in μB (one number, or one per species)")


def _composition(value: Any) -> dict[str, float] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise _Bad(f"expected a table of species fractions such as {{Fe = 0.75, Al = 0.25}}, got {value!r}")
    out = {str(k): _number(v, "a fraction") for k, v in value.items()}
    if any(v < 0 for v in out.values()):
        raise _Bad(f"fractions must be >= 0, got {out}")
    total = sum(out.values())
    if abs(total - 1.0) > 1e-6:
        raise _Bad(f"fractions must add up to 1, they add up to {total:g}")
    return out


def _pressure(value: Any) -> float | list[float]:
    if isinstance(value, list):
        if len(value) != 3:
            raise _Bad(f"expected one pressure or three (xx, yy, zz), got {len(value)} values")
        return [_number(v, "a pressure in GPa") for v in value]
    return _number(value, "a pressure in GPa (one number, or three for an anisotropic barostat)")


def _bounds(value: Any) -> list[float] | list[list[float]] | None:
    if value is None:
        return None
    if isinstance(value, list) and len(value) == 2 and not any(isinstance(v, list) for v in value):
        lo, hi = (_number(v, "a moment in μB") for v in value)
        if not lo < hi:
            raise _Bad(f"expected [min, max] with min < max, got {value}")
        return [lo, hi]
    if isinstance(value, list) and value and all(isinstance(v, list) and len(v) == 2 for v in value):
        pairs = [[_number(a), _number(b)] for a, b in value]
        if any(not lo < hi for lo, hi in pairs):
            raise _Bad(f"every [min, max] needs min < max, got {value}")
        return pairs
    raise _Bad(f"expected [min, max] in μB, or one [min, max] per species, got {value!r}")


def _species_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not (isinstance(value, list) and value and all(isinstance(v, str) and v for v in value)):
        raise _Bad(f"expected a non-empty list of species names, got {value!r}")
    if len(set(value)) != len(value):
        raise _Bad(f"a species is named twice in {value}")
    return list(value)


TRAJECTORY_QUANTITIES = ("positions", "velocities", "magmoms", "forces", "site_energies",
                         "magnetic_gradient", "nbh_grades")


def _store(value: Any) -> list[str]:
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise _Bad(f"expected a list of names from {list(TRAJECTORY_QUANTITIES)}, got {value!r}")
    for v in value:
        if v not in TRAJECTORY_QUANTITIES:
            hint = difflib.get_close_matches(v, TRAJECTORY_QUANTITIES, n=1)
            raise _Bad(f"unknown quantity {v!r}; allowed: {', '.join(TRAJECTORY_QUANTITIES)}"
                       + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    return list(dict.fromkeys(value))


# --------------------------------------------------------------------------- sections
@dataclass
class SystemSettings:
    """The atoms: a structure file or a generated lattice."""

    structure: str | None = _key(None, "structure file (.cfg, extended XYZ, .h5, POSCAR, …); "
                                 "or give lattice", text())
    structure_index: int = _key(0, "which configuration of the structure file (0 = first)", integer(0))
    lattice: str | None = _key(None, "generated lattice: bcc, fcc, b2, sc, l12",
                               lambda v: None if v is None else choice("bcc", "fcc", "b2", "sc", "l12")(v))
    a: float | None = _key(None, "lattice parameter (Å) of the generated lattice",
                           real(0.0, lo_open=True, optional=True))
    repeat: list[int] = _key([1, 1, 1], "repeats of the conventional cell (one integer or three)", _repeat)
    species: list[str] | None = _key(None, "chemical symbols of potential types 0, 1, … (default: "
                                     "the potential's species names)", _species)
    magmoms: float | list[float] | None = _key(None, "initial moments (μB): one value, or one per species; "
                                               "default: the structure file's", _magmoms)
    composition: dict[str, float] | None = _key(None, "random substitution on all sites, e.g. "
                                                "{Fe = 0.75, Al = 0.25} (seeded by md.seed)", _composition)
    jitter: float = _key(0.0, "Gaussian displacement (Å) added to the generated lattice", real(0.0))


@dataclass
class PotentialSettings:
    file: str | None = _key(None, "potential file (.mtp, .almtp, .mtpr, .h5); required", text())
    symmetrize: bool | None = _key(None, "spin-symmetrised energy ½[E(M)+E(−M)] (default: the "
                                   "potential's flag)", boolean(optional=True))
    threads: int = _key(0, "OpenMP threads for the kernels (0: OMP_NUM_THREADS or 1)", integer(0))


@dataclass
class MDSettings:
    steps: int = _key(1000, "total number of steps of the run (a restart continues up to this step)",
                      integer(0))
    timestep_fs: float = _key(1.0, "time step (fs)", real(0.0, 20.0, lo_open=True))
    ensemble: str = _key("nvt", "nve, nvt or npt", choice("nve", "nvt", "npt"))
    temperature_K: float = _key(300.0, "target temperature (K) of thermostat and moment dynamics", real(0.0))
    initial_temperature_K: float | None = _key(None, "temperature of the initial Maxwell–Boltzmann "
                                               "velocities (default: temperature_K)",
                                               real(0.0, optional=True))
    pressure_GPa: float | list[float] = _key(0.0, "target pressure (GPa, positive = compression); three "
                                             "values (xx, yy, zz) with barostat = anisotropic", _pressure)
    thermostat: str = _key("langevin", "langevin (BAOAB), csvr (Bussi) or nose-hoover (chain)",
                           choice("langevin", "csvr", "nose-hoover"))
    damping_fs: float = _key(100.0, "thermostat time constant (fs)", real(0.0, lo_open=True))
    nh_chain: int = _key(3, "Nosé–Hoover chain length", integer(1, 10))
    barostat: str = _key("isotropic", "stochastic cell rescaling: isotropic or anisotropic (x, y, z apart)",
                         choice("isotropic", "anisotropic"))
    barostat_damping_fs: float = _key(1000.0, "barostat time constant (fs)", real(0.0, lo_open=True))
    compressibility_per_GPa: float = _key(0.006, "isothermal compressibility (1/GPa) used by the barostat",
                                          real(0.0, lo_open=True))
    seed: int = _key(12345, "seed of all random streams", integer(0, 2 ** 63 - 1))
    velocities: str = _key("maxwell", "initial velocities: maxwell (scaled to initial_temperature_K "
                           "exactly, no drift) or zero", choice("maxwell", "zero"))
    skin: float = _key(1.0, "neighbour-list skin (Å); lists are rebuilt when an atom moved > skin/2",
                       real(0.0))


@dataclass
class MomentSettings:
    mode: str = _key("fixed", "fixed, relax (minimise E over m), langevin (overdamped longitudinal) or mc",
                     choice("fixed", "relax", "langevin", "mc"))
    every: int = _key(1, "update moments every this many steps", integer(1))
    relax_tol: float = _key(1e-4, "relax: convergence on max |∂E/∂m| (eV/μB)", real(0.0, lo_open=True))
    relax_max_iter: int = _key(200, "relax: iterations per relaxation", integer(1))
    gamma: float = _key(0.01, "langevin: mobility Γ (μB²/(eV·fs)); Δt = every × timestep_fs",
                        real(0.0, lo_open=True))
    mc_sweeps: int = _key(1, "mc: trial moves per atom per update", integer(1))
    mc_flip_fraction: float = _key(0.5, "mc: fraction of trial moves that are flips m → −m", real(0.0, 1.0))
    mc_max_change: float = _key(0.3, "mc: largest magnitude change of a trial move (μB)",
                                real(0.0, lo_open=True))
    bounds: list | None = _key(None, "[min, max] μB (or one pair per species) for relax, langevin and mc "
                               "(default: the potential's magnetic interval)", _bounds)
    species: list[str] | None = _key(None, "the species whose moments relax, langevin and mc change, e.g. "
                                     "[\"Fe\"] (default: all); the others keep their moments, like a "
                                     "LAMMPS fix on a group", _species_list)


@dataclass
class ExtrapolationSettings:
    every: int = _key(0, "compute extrapolation grades every this many steps (0: never)", integer(0))
    mode: str = _key("auto", "cfg (per configuration), nbh (per neighbourhood) or auto (as the active "
                     "set was built)", choice("auto", "cfg", "nbh"))
    select: float = _key(2.0, "save configurations with grade > select", real(0.0))
    break_: float = _key(10.0, "stop the run (with a checkpoint) at grade > break", real(0.0),
                         toml_name="break")
    save_to: str | None = _key("extrapolative.cfg", "where saved configurations go (.cfg or .h5)",
                               _path_with(".cfg", ".h5", ".hdf5"))


@dataclass
class OutputSettings:
    trajectory: str | None = _key("trajectory.h5", "HDF5 trajectory (\"\" for none)",
                                  _path_with(".h5", ".hdf5"))
    every: int = _key(100, "trajectory frame interval (steps)", integer(1))
    store: list[str] = _key(["positions", "velocities", "magmoms", "site_energies"],
                            f"per-atom data in frames, from {list(TRAJECTORY_QUANTITIES)}", _store)
    checkpoint: str | None = _key("checkpoint.h5", "checkpoint file, written atomically (\"\" for none)",
                                  _path_with(".h5", ".hdf5"))
    checkpoint_every: int = _key(1000, "checkpoint interval (steps); one is always written at the end",
                                 integer(1))
    log: str | None = _key(None, "log file (the log also goes to standard output)", text())
    log_every: int = _key(100, "log interval (steps)", integer(1))
    speed_log: str | None = _key("md_speed.json", "speed of each finished run of this input by rank count "
                                 "(JSON); the summary states the speed-up and parallel efficiency "
                                 "over the 1-rank run (\"\" for none)", text())
    compress: bool = _key(True, "gzip (level 1, shuffled) the per-atom trajectory data: about 40 % smaller, "
                                "but one core compresses about 30-60 MB/s; false writes at the file "
                                "system's speed (large runs)", boolean())
    chunk_atoms: int = _key(65536, "MPI: atoms per message when frames and checkpoints stream to rank 0 "
                                   "(bounds the memory of the writing rank; the files do not depend on it)",
                            integer(1, 2 ** 24))


def _grid(value: Any) -> list[int] | None:
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
        raise _Bad(f"expected three positive integers [px, py, pz], got {value!r}")
    return [int(v) for v in value]


@dataclass
class ParallelSettings:
    grid: list[int] | None = _key(None, "MPI rank grid [px, py, pz] of the domain decomposition "
                                  "(default: MPI.Compute_dims, most ranks along the longest axis)", _grid)


SECTIONS: dict[str, type] = {
    "system": SystemSettings,
    "potential": PotentialSettings,
    "md": MDSettings,
    "moments": MomentSettings,
    "extrapolation": ExtrapolationSettings,
    "output": OutputSettings,
    "parallel": ParallelSettings,
}


@dataclass
class RunSettings:
    """All settings of one MD run; ``source`` is the input file, ``base_dir`` resolves paths."""

    system: SystemSettings = field(default_factory=SystemSettings)
    potential: PotentialSettings = field(default_factory=PotentialSettings)
    md: MDSettings = field(default_factory=MDSettings)
    moments: MomentSettings = field(default_factory=MomentSettings)
    extrapolation: ExtrapolationSettings = field(default_factory=ExtrapolationSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    parallel: ParallelSettings = field(default_factory=ParallelSettings)
    source: str | None = None
    base_dir: str = "."

    def path(self, value: str | None) -> Path | None:
        """A path from the input resolved against the input file's directory."""
        return resolve_path(self.base_dir, value)

    def to_dict(self) -> dict:
        """Resolved settings as a TOML-shaped dict (key names as written in the input)."""
        out: dict[str, dict] = {}
        for name in SECTIONS:
            out[name] = section_dict(getattr(self, name))
        return out

    @property
    def initial_temperature(self) -> float:
        t = self.md.initial_temperature_K
        return self.md.temperature_K if t is None else t


# --------------------------------------------------------------------------- loading
def load_settings(path: str | Path) -> RunSettings:
    """Read and validate an ``mmtp md`` input file."""
    data, text_ = read_toml(path)
    return settings_from_dict(data, source=str(path), base_dir=str(Path(path).parent), text=text_)


def settings_from_dict(data: dict, source: str | None = None, base_dir: str = ".",
                       text: str | None = None) -> RunSettings:
    """Validate a TOML-shaped dict (``{"md": {"steps": 10}, ...}``) into :class:`RunSettings`."""
    fail = failer(source, text)
    check_sections(data, SECTIONS, fail)
    out = RunSettings(source=source, base_dir=base_dir)
    for name, cls in SECTIONS.items():
        setattr(out, name, build_section(cls, name, section_table(data, name, fail), fail))
    _cross_check(out, fail)
    return out


def _cross_check(s: RunSettings, fail: Fail) -> None:
    """Checks that involve more than one key."""
    sy = s.system
    if (sy.structure is None) == (sy.lattice is None):
        raise fail("give either structure = \"file\" or lattice = \"bcc\"/\"fcc\"/\"b2\"/… (exactly one)",
                   "system", "structure" if sy.structure is not None else None)
    if sy.lattice is not None and sy.a is None:
        raise fail("a generated lattice needs the lattice parameter a (Å)", "system", "lattice")
    if sy.structure is not None:
        if sy.a is not None:
            raise fail("a is only used with lattice = …, not with a structure file", "system", "a")
        if sy.jitter != 0.0:
            raise fail("jitter is only used with lattice = …", "system", "jitter")
    if sy.composition is not None and sy.species is not None:
        unknown = sorted(set(sy.composition) - set(sy.species))
        if unknown:
            raise fail(f"composition names {unknown}, which are not in species {sy.species}",
                       "system", "composition")
    if isinstance(sy.magmoms, list) and sy.species is not None and len(sy.magmoms) != len(sy.species):
        raise fail(f"{len(sy.magmoms)} moments for {len(sy.species)} species {sy.species}",
                   "system", "magmoms")
    if s.potential.file is None:
        raise fail("the potential file is required: [potential] file = \"pot.mtp\"", "potential", "file")
    md = s.md
    if md.ensemble == "npt":
        if md.barostat == "isotropic" and isinstance(md.pressure_GPa, list):
            raise fail("three pressures need barostat = \"anisotropic\"", "md", "pressure_GPa")
    ex = s.extrapolation
    if ex.every > 0:
        if not ex.select < ex.break_:
            raise fail(f"select ({ex.select:g}) must be smaller than break ({ex.break_:g})",
                       "extrapolation", "select")
        if ex.save_to is None:
            raise fail("save_to is needed to keep the extrapolative configurations", "extrapolation",
                       "save_to")


def describe() -> str:
    """The input format as text: every section and key with default and description."""
    lines = ["mmtp md input (TOML). Paths are relative to the input file.", ""]
    for name, cls in SECTIONS.items():
        lines += describe_section(name, cls, key_width=24, default_width=22)
        lines.append("")
    return "\n".join(lines)
