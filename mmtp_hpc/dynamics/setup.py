"""Build a :class:`~mmtp_hpc.dynamics.driver.Simulation` from validated settings.

This module's single job is turning :class:`~mmtp_hpc.dynamics.settings.RunSettings`
into objects, checking everything that can be checked before step 0: files exist, the
species fit the potential, moments are given for a magnetic potential and lie inside
the bounds, no two atoms are closer than :data:`MIN_DISTANCE`, no number is NaN.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TextIO

import numpy as np

from mmtp_hpc.dynamics.barostat import StochasticCellRescaling
from mmtp_hpc.dynamics.driver import Simulation
from mmtp_hpc.dynamics.forcefield import ForceField
from mmtp_hpc.dynamics.integrators import Integrator
from mmtp_hpc.dynamics.moments import LangevinMoments, MonteCarloMoments, RelaxMoments
from mmtp_hpc.dynamics.observers import (
    CheckpointObserver,
    ExtrapolationObserver,
    ThermoLog,
    TrajectoryObserver,
    require_path_writable,
)
from mmtp_hpc.dynamics.rng import Purpose, Streams
from mmtp_hpc.dynamics.settings import RunSettings
from mmtp_hpc.dynamics.state import MDState
from mmtp_hpc.dynamics.thermostats import CSVR, Langevin, NoseHooverChain, Thermostat
from mmtp_hpc.dynamics.units import KB_EV_PER_K, MVV2E
from mmtp_hpc.errors import InputError
from mmtp_hpc.system.configuration import Configuration

MIN_DISTANCE = 0.5
"""Å; closer atoms are rejected before step 0."""


# --------------------------------------------------------------------------- potential
def load_md_potential(settings: RunSettings):
    from mmtp_hpc.potentials.mtp.mlip_io import load_potential

    path = settings.path(settings.potential.file)
    if not path.is_file():
        raise InputError("potential file not found", path=str(path), field="potential.file")
    return load_potential(path), path


def resolve_species(settings: RunSettings, pot) -> list[str] | None:
    given = settings.system.species
    names = pot.species_names
    if given is not None and len(given) > pot.species_count:
        known = f" ({list(names)})" if names is not None else ""
        raise InputError(f"{len(given)} species {given} but the potential has only {pot.species_count}"
                         f"{known}", path=settings.source, field="system.species")
    if given is not None and names is not None and list(names[: len(given)]) != list(given):
        raise InputError(f"species {given} do not match the potential's species {list(names)} "
                         "(types 0, 1, … in this order)", path=settings.source, field="system.species")
    return given if given is not None else (list(names) if names is not None else None)


# --------------------------------------------------------------------------- system
def build_configuration(settings: RunSettings, pot, streams: Streams) -> tuple[Configuration, list[str]]:
    """The starting configuration (types, positions, cell, moments) and the species list."""
    from mmtp_hpc.system.lattice import bulk

    sy = settings.system
    species = resolve_species(settings, pot)
    if sy.structure is not None:
        from mmtp_hpc.io.formats import read_configurations_and_species

        path = settings.path(sy.structure)
        if not path.is_file():
            raise InputError("structure file not found", path=str(path), field="system.structure")
        configs, file_species = read_configurations_and_species(path, species=species)
        if sy.structure_index >= len(configs):
            raise InputError(f"structure_index {sy.structure_index} but the file holds {len(configs)} "
                             "configuration(s)", path=settings.source, field="system.structure_index")
        cfg = configs[sy.structure_index].copy()
        cfg.clear_labels()
        if species is None and file_species is not None:
            species = list(file_species)
    else:
        if species is None:
            raise InputError("chemical symbols are needed for the masses: give [system] species = "
                             "[\"Fe\", …] (the potential has no species names)", path=settings.source,
                             field="system.species")
        if sy.lattice in ("b2", "l12") and len(species) < 2 and sy.composition is None:
            raise InputError(f"lattice {sy.lattice!r} has two sublattices; give two species",
                             path=settings.source, field="system.species")
        sub = (0, 1) if len(species) >= 2 else (0, 0)
        cfg = bulk(sy.lattice, sy.a, tuple(sy.repeat), sublattice_types=sub)
        if sy.jitter > 0:
            cfg.positions += sy.jitter * streams.normal(Purpose.JITTER, 0, cfg.ids, 3)
    if species is None:
        raise InputError("chemical symbols are needed for the masses: give [system] species = [\"Fe\", …]",
                         path=settings.source, field="system.species")
    if sy.composition is not None:
        unknown = sorted(set(sy.composition) - set(species))
        if unknown:
            raise InputError(f"composition names {unknown}, which are not in species {species}",
                             path=settings.source, field="system.composition")
        cfg.types = substitute(cfg.ids, species, sy.composition, streams)
    n = len(cfg)
    if n == 0:
        raise InputError("the system has no atoms", path=settings.source, field="system")
    if cfg.types.max() >= len(species):
        raise InputError(f"the structure has atom types up to {int(cfg.types.max())} but only "
                         f"{len(species)} species {species} are known", path=settings.source,
                         field="system.species")
    if cfg.types.max() >= pot.species_count:
        raise InputError(f"the structure has atom types up to {int(cfg.types.max())} but the potential "
                         f"has {pot.species_count} species", path=settings.source, field="system")
    if sy.magmoms is not None:
        values = np.atleast_1d(np.asarray(sy.magmoms, dtype=float))
        if values.size == 1:
            cfg.magmoms = np.full(n, values[0])
        elif values.size != len(species):
            raise InputError(f"{values.size} moments for {len(species)} species {species}",
                             path=settings.source, field="system.magmoms")
        else:
            cfg.magmoms = values[cfg.types]
    if pot.magnetic and cfg.magmoms is None:
        raise InputError("the potential is magnetic but the structure has no moments: give [system] "
                         "magmoms = value (or one per species)", path=settings.source, field="system.magmoms")
    if not pot.magnetic:
        cfg.magmoms = np.zeros(n)
    check_configuration(cfg, settings.source)
    return cfg, list(species)


def substitute(ids: np.ndarray, species: list[str], composition: dict[str, float],
               streams: Streams) -> np.ndarray:
    """Random substitution: exact counts (largest remainders), sites chosen by a keyed shuffle."""
    n = len(ids)
    names = list(composition)
    fractions = np.array([composition[s] for s in names])
    exact = fractions * n
    counts = np.floor(exact).astype(int)
    for k in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[k] += 1
    order = np.argsort(streams.uniform(Purpose.COMPOSITION, 0, ids, 1)[:, 0], kind="stable")
    types = np.empty(n, dtype=np.int64)
    start = 0
    for name, count in zip(names, counts, strict=True):
        types[order[start:start + count]] = species.index(name)
        start += count
    return types


def check_configuration(cfg: Configuration, source: str | None) -> None:
    from mmtp_hpc.system.neighbors import build_neighbor_list, min_distance

    if not np.all(np.isfinite(cfg.cell)):
        raise InputError("the cell has non-finite entries", path=source, field="system")
    bad = np.flatnonzero(~np.all(np.isfinite(cfg.positions), axis=1))
    if bad.size:
        raise InputError(f"atom {int(cfg.ids[bad[0]])} has a non-finite position "
                         f"{cfg.positions[bad[0]].tolist()}", path=source, field="system")
    if cfg.magmoms is not None:
        bad = np.flatnonzero(~np.isfinite(cfg.magmoms))
        if bad.size:
            raise InputError(f"atom {int(cfg.ids[bad[0]])} has a non-finite moment", path=source,
                             field="system.magmoms")
    if cfg.pbc.any() and abs(np.linalg.det(cfg.cell)) < 1e-9:
        raise InputError("the cell has no volume", path=source, field="system")
    nl = build_neighbor_list(cfg.cell, cfg.pbc, cfg.positions, MIN_DISTANCE)
    dist, i, j = min_distance(nl)
    if dist < MIN_DISTANCE:
        jj = int(nl.image_of[j])
        raise InputError(f"atoms {int(cfg.ids[i])} and {int(cfg.ids[jj])} are {dist:.3f} Å apart "
                         f"(less than {MIN_DISTANCE} Å)", path=source, field="system")


def masses_of(species: list[str], types: np.ndarray) -> np.ndarray:
    from ase.data import atomic_masses, atomic_numbers

    return np.array([atomic_masses[atomic_numbers[s]] for s in species])[types]


def moment_bounds(settings: RunSettings, pot, species: list[str],
                  types: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-atom bounds (μB): [moments] bounds, or the potential's magnetic interval."""
    b = settings.moments.bounds
    if b is None:
        if not pot.magnetic:
            return np.full(len(types), -np.inf), np.full(len(types), np.inf)
        return pot.mag_min[types].copy(), pot.mag_max[types].copy()
    arr = np.asarray(b, dtype=float)
    if arr.ndim == 1:
        return np.full(len(types), arr[0]), np.full(len(types), arr[1])
    if len(arr) != len(species):
        raise InputError(f"{len(arr)} [min, max] pairs for {len(species)} species {species}",
                         path=settings.source, field="moments.bounds")
    return arr[types, 0].copy(), arr[types, 1].copy()


def initial_velocities(masses: np.ndarray, ids: np.ndarray, temperature_K: float, streams: Streams,
                       remove_drift: bool = True) -> np.ndarray:
    """Maxwell–Boltzmann velocities (Å/fs) without centre-of-mass drift, scaled so that the
    kinetic temperature (3N − 3 degrees of freedom) is exactly ``temperature_K``."""
    n = len(masses)
    if temperature_K <= 0 or n == 0:
        return np.zeros((n, 3))
    kT = KB_EV_PER_K * temperature_K
    v = streams.normal(Purpose.VELOCITY_INIT, 0, ids, 3) * np.sqrt(kT / (masses * MVV2E))[:, None]
    if remove_drift and n > 1:
        v -= (masses[:, None] * v).sum(axis=0) / masses.sum()
    dof = 3 * n - (3 if remove_drift and n > 1 else 0)
    kinetic = 0.5 * MVV2E * float(np.einsum("i,ij,ij->", masses, v, v))
    if kinetic > 0:
        v *= math.sqrt(0.5 * dof * kT / kinetic)
    return v


# --------------------------------------------------------------------------- simulation
def build_simulation(settings: RunSettings, restart: str | Path | None = None,
                     stream: TextIO | None = sys.stdout, comm=None) -> Simulation:
    from mmtp_hpc.potentials.mtp.engine import MTPEngine

    from mmtp_hpc.parallel.comm import get_comm

    md, mo, ex, out = settings.md, settings.moments, settings.extrapolation, settings.output
    comm = get_comm(comm)      # a SerialComm runs the whole system here, also under mpirun
    root = comm.Get_rank() == 0
    if not root:
        stream = None          # rank 0 reports for everyone
    pot, pot_path = load_md_potential(settings)
    if mo.mode != "fixed" and not pot.magnetic:
        raise InputError(f"moments.mode = {mo.mode!r} needs a magnetic potential; {pot_path} is not magnetic",
                         path=settings.source, field="moments.mode")
    streams = Streams(md.seed)
    checkpoint = None
    if restart is not None:
        checkpoint = Simulation.read_checkpoint(restart)
        species = list(checkpoint.species)
        state = MDState(positions=checkpoint.state["positions"], velocities=checkpoint.state["velocities"],
                        masses=checkpoint.state["masses"], types=checkpoint.state["types"],
                        ids=checkpoint.state["ids"], magmoms=checkpoint.state["magmoms"],
                        cell=checkpoint.state["cell"], pbc=checkpoint.state["pbc"], species=species)
        if checkpoint.seed != md.seed:
            _note(stream, f"restart: md.seed {md.seed} differs from the checkpoint's {checkpoint.seed}; "
                          "using the checkpoint's")
            streams = Streams(checkpoint.seed)
        _report_changes(stream, checkpoint.settings, settings.to_dict())
        if int(state.types.max()) >= pot.species_count:
            raise InputError(f"checkpoint has atom types up to {int(state.types.max())}, the potential "
                             f"{pot.species_count} species", path=str(restart))
    else:
        cfg, species = build_configuration(settings, pot, streams)
        masses = masses_of(species, cfg.types)
        velocities = (initial_velocities(masses, cfg.ids, settings.initial_temperature, streams)
                      if md.velocities == "maxwell" else np.zeros((len(cfg), 3)))
        state = MDState(positions=cfg.positions, velocities=velocities, masses=masses, types=cfg.types,
                        ids=cfg.ids, magmoms=cfg.magmoms, cell=cfg.cell, pbc=cfg.pbc, species=species)
    ids_ok = np.all(state.ids >= 0) and np.all(state.ids < 2 ** 32 - 1)
    if not ids_ok or len(np.unique(state.ids)) != len(state.ids):
        raise InputError("atom ids must be distinct and in [0, 2^32 − 1)", path=settings.source,
                         field="system")

    lo, hi = moment_bounds(settings, pot, species, state.types)
    if pot.magnetic and restart is None:
        outside = (state.magmoms < lo) | (state.magmoms > hi)
        if np.any(outside):
            k = int(np.argmax(outside))
            message = (f"initial moment of atom {int(state.ids[k])} is {state.magmoms[k]:.4g} μB, outside "
                       f"[{lo[k]:.4g}, {hi[k]:.4g}] ({int(outside.sum())} atoms outside)")
            if mo.mode != "fixed":
                raise InputError(message + "; adjust [system] magmoms or [moments] bounds",
                                 path=settings.source, field="moments.bounds")
            _note(stream, "warning: " + message + "; evaluated without clamping")

    threads = settings.potential.threads or None
    engine = MTPEngine(pot, num_threads=threads)
    if comm.Get_size() > 1:
        from mmtp_hpc.dynamics.domain import DomainForceField

        # parallel Monte Carlo needs the site energies of ghost centres: a halo twice as wide
        forcefield = DomainForceField(engine, comm, settings.potential.symmetrize, skin=md.skin,
                                      grid=settings.parallel.grid, monte_carlo=mo.mode == "mc")
    else:
        forcefield = ForceField(engine, settings.potential.symmetrize, skin=md.skin)

    thermostat: Thermostat | None = None
    if md.ensemble in ("nvt", "npt"):
        if md.thermostat == "langevin":
            thermostat = Langevin(md.temperature_K, md.damping_fs, streams)
        elif md.thermostat == "csvr":
            thermostat = CSVR(md.temperature_K, md.damping_fs, streams)
        else:
            thermostat = NoseHooverChain(md.temperature_K, md.damping_fs, md.nh_chain)
    barostat = None
    if md.ensemble == "npt":
        if not state.pbc.all():
            raise InputError("npt needs a cell periodic in all three directions", path=settings.source,
                             field="md.ensemble")
        barostat = StochasticCellRescaling(md.pressure_GPa, md.temperature_K, md.barostat_damping_fs,
                                           md.compressibility_per_GPa, streams,
                                           anisotropic=md.barostat == "anisotropic")
    integrator = Integrator(md.timestep_fs, thermostat, barostat)

    moments = None
    if mo.mode == "relax":
        moments = RelaxMoments(mo.relax_tol, mo.relax_max_iter, lo, hi)
    elif mo.mode == "langevin":
        moments = LangevinMoments(mo.gamma, mo.every * md.timestep_fs, md.temperature_K, lo, hi, streams)
    elif mo.mode == "mc":
        moments = MonteCarloMoments(mo.mc_sweeps, mo.mc_flip_fraction, mo.mc_max_change, md.temperature_K,
                                    lo, hi, streams)
    if moments is not None:
        moments.type_bounds = moment_bounds(settings, pot, species, np.arange(pot.species_count))

    sim = Simulation(state, forcefield, integrator, moments=moments, moment_every=mo.every,
                     seed=streams.seed, settings=settings, potential_path=str(pot_path))
    sim.target_step = md.steps
    if forcefield.distributed and checkpoint is None:
        forcefield.setup(state)      # keep this rank's atoms; the rest of the set-up sees local arrays
        sim._after_migration()

    # observers, in their fixed order
    extrapolation = None
    if ex.every > 0:
        from mmtp_hpc.potentials.mtp.grades import ActiveSet

        active = ActiveSet.from_potential(pot)
        save_to = settings.path(ex.save_to)
        require_path_writable(save_to, "extrapolative configurations")
        extrapolation = ExtrapolationObserver(active, ex.mode, ex.select, ex.break_, save_to, species, root=root)
        sim.attach(extrapolation, ex.every)
    log_path = settings.path(out.log) if root else None
    if log_path is not None:
        require_path_writable(log_path, "log")
    sim.attach(ThermoLog(stream, log_path, append=checkpoint is not None), out.log_every)
    trajectory = None
    if out.trajectory is not None:
        path = settings.path(out.trajectory)
        require_path_writable(path, "trajectory")
        trajectory = TrajectoryObserver(path, out.store, out.chunk_atoms)
        sim.attach(trajectory, out.every)
    if out.checkpoint is not None:
        path = settings.path(out.checkpoint)
        require_path_writable(path, "checkpoint")
        sim.attach(CheckpointObserver(path), out.checkpoint_every)

    if checkpoint is not None:
        sim.restore(checkpoint)
        if checkpoint.stop_reason and stream is not None:
            _note(stream, f"restart: the checkpoint's run had stopped early ({checkpoint.stop_reason})")
    if extrapolation is not None:
        extrapolation.start(restart=checkpoint is not None)
    if trajectory is not None:
        trajectory.open(sim, None if checkpoint is None else checkpoint.step)
    if stream is not None:
        what = (f"restart from {restart} at step {state.step}" if checkpoint is not None
                else f"{state.n_global} atoms")
        if comm.Get_size() > 1:
            what += f"; MPI {forcefield.decomp.describe()}"
        _note(stream, f"mmtp md: {what}; {md.ensemble} {md.temperature_K:g} K, dt {md.timestep_fs:g} fs, "
                      f"moments {mo.mode}; potential {pot_path} (level {pot.level}, "
                      f"{'magnetic' if pot.magnetic else 'non-magnetic'}"
                      f"{', symmetrised' if forcefield.symmetric else ''}); run to step {md.steps}")
    return sim


def _note(stream: TextIO | None, line: str) -> None:
    if stream is not None:
        print(line, file=stream, flush=True)


def _report_changes(stream: TextIO | None, old: dict, new: dict) -> None:
    changes = []
    for section, values in new.items():
        for key, value in values.items():
            before = old.get(section, {}).get(key, value)
            if _normalise(before) != _normalise(value):
                changes.append(f"{section}.{key}: {before!r} → {value!r}")
    if changes:
        _note(stream, "restart: settings differ from the checkpoint's: " + "; ".join(changes))


def _normalise(value):
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value
