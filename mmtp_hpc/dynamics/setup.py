"""Build a :class:`~mmtp_hpc.dynamics.driver.Simulation` from validated settings.

This module's single job is turning :class:`~mmtp_hpc.dynamics.settings.RunSettings`
into objects, checking everything that can be checked before step 0: files exist, the
species fit the potential, moments are given for a magnetic potential and lie inside
the bounds, no two atoms are closer than :data:`MIN_DISTANCE`, no number is NaN.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
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
def build_configuration(settings: RunSettings, pot, streams: Streams,
                        forcefield=None) -> tuple[Configuration, list[str]]:
    """The starting configuration (types, positions, cell, moments) and the species list.

    ``forcefield``: a :class:`~mmtp_hpc.dynamics.domain.DomainForceField` for a distributed
    set-up; the configuration returned then holds a part of the atoms (see
    :func:`_build_system`)."""
    cfg, species, _ = _build_system(settings, pot, streams, forcefield)
    return cfg, species


def _build_system(settings: RunSettings, pot, streams: Streams,
                  forcefield=None) -> tuple[Configuration, list[str], int]:
    """(configuration, species, number of atoms over all ranks).

    Serial (``forcefield`` None): the whole system. Distributed: the rank grid is chosen
    from the cell first, then every rank holds only a part of the atoms, never all:

    - a lattice: the sites that lie, before jitter, in this rank's subdomain
      (:func:`mmtp_hpc.system.lattice.bulk_part`; ids as :func:`bulk`'s), jittered by their
      ids' streams (jittered atoms reach their owners when the caller calls
      ``forcefield.setup(state, replicated=False)``);
    - a ``.cfg`` structure: rank 0 reads the atoms a chunk (``[output] chunk_atoms``) at a time
      and sends each atom to its owner (:func:`_read_cfg_distributed`); other formats
      (extended XYZ, HDF5 training sets) are read whole by every rank, which keeps its own
      atoms (replicated reading, O(N) per rank at start-up);
    - composition, velocities and the checks use global reductions, so the result equals the
      serial one bit for bit.
    """
    from mmtp_hpc.system.lattice import bulk, bulk_part

    sy = settings.system
    species = resolve_species(settings, pot)
    comm = None if forcefield is None else forcefield.comm
    if sy.structure is not None:
        from mmtp_hpc.io.formats import read_configurations_and_species

        path = settings.path(sy.structure)
        if not path.is_file():
            raise InputError("structure file not found", path=str(path), field="system.structure")
        cfg = None
        file_species = None
        if forcefield is not None:
            cfg = _read_cfg_distributed(settings, path, forcefield)
        if cfg is None:
            configs, file_species = read_configurations_and_species(path, species=species)
            if sy.structure_index >= len(configs):
                raise InputError(f"structure_index {sy.structure_index} but the file holds {len(configs)} "
                                 "configuration(s)", path=settings.source, field="system.structure_index")
            cfg = configs[sy.structure_index].copy()
            del configs
            cfg.clear_labels()
            if forcefield is not None:          # replicated reading: keep this rank's atoms
                d = forcefield.decompose(cfg.cell, cfg.pbc)
                keep = d.owners(d.wrap(cfg.positions)[0]) == comm.Get_rank()
                cfg = _subset(cfg, keep)
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
        if forcefield is None:
            cfg = bulk(sy.lattice, sy.a, tuple(sy.repeat), sublattice_types=sub)
        else:
            shape = bulk(sy.lattice, sy.a, (1, 1, 1))          # checks the lattice's name and a
            cell = np.diag(np.broadcast_to(np.asarray(tuple(sy.repeat), dtype=int), (3,)) * sy.a).astype(float)
            d = forcefield.decompose(cell, shape.pbc)
            cfg = bulk_part(sy.lattice, sy.a, tuple(sy.repeat), sub, d.grid, d.coords)
        if sy.jitter > 0:
            cfg.positions += sy.jitter * streams.normal(Purpose.JITTER, 0, cfg.ids, 3)
    if species is None:
        raise InputError("chemical symbols are needed for the masses: give [system] species = [\"Fe\", …]",
                         path=settings.source, field="system.species")
    n = len(cfg) if comm is None else _global_int_sum(comm, len(cfg))
    if sy.composition is not None:
        unknown = sorted(set(sy.composition) - set(species))
        if unknown:
            raise InputError(f"composition names {unknown}, which are not in species {species}",
                             path=settings.source, field="system.composition")
        cfg.types = substitute(cfg.ids, species, sy.composition, streams, comm, n)
    if n == 0:
        raise InputError("the system has no atoms", path=settings.source, field="system")
    top = int(cfg.types.max()) if len(cfg) else -1
    if comm is not None:
        from mmtp_hpc.parallel.comm import allreduce_max_int

        top = allreduce_max_int(comm, [top])[0]
    if top >= len(species):
        raise _error(comm, f"the structure has atom types up to {top} but only "
                           f"{len(species)} species {species} are known", path=settings.source,
                     field="system.species")
    if top >= pot.species_count:
        raise _error(comm, f"the structure has atom types up to {top} but the potential "
                           f"has {pot.species_count} species", path=settings.source, field="system")
    if sy.magmoms is not None:
        values = np.atleast_1d(np.asarray(sy.magmoms, dtype=float))
        if values.size == 1:
            cfg.magmoms = np.full(len(cfg), values[0])
        elif values.size != len(species):
            raise InputError(f"{values.size} moments for {len(species)} species {species}",
                             path=settings.source, field="system.magmoms")
        else:
            cfg.magmoms = values[cfg.types]
    if pot.magnetic and cfg.magmoms is None:
        raise InputError("the potential is magnetic but the structure has no moments: give [system] "
                         "magmoms = value (or one per species)", path=settings.source, field="system.magmoms")
    if not pot.magnetic:
        cfg.magmoms = np.zeros(len(cfg))
    if comm is None:
        check_configuration(cfg, settings.source)
    else:
        _check_finite_distributed(cfg, settings.source, comm)   # distances: after the halo is built
    return cfg, list(species), n


def _subset(cfg: Configuration, keep: np.ndarray) -> Configuration:
    return Configuration(cell=cfg.cell, positions=cfg.positions[keep], types=cfg.types[keep], pbc=cfg.pbc,
                         magmoms=None if cfg.magmoms is None else cfg.magmoms[keep], ids=cfg.ids[keep])


def _global_int_sum(comm, value: int) -> int:
    from mmtp_hpc.parallel.comm import allreduce_int_sum

    return allreduce_int_sum(comm, [int(value)])[0]


def _error(comm, message: str, path: str | None = None, field: str | None = None,
           line: int | None = None) -> InputError:
    """An InputError; collective (reported once) when every rank of ``comm`` raises it."""
    if comm is not None and comm.Get_size() > 1:
        from mmtp_hpc.errors import CollectiveInputError

        return CollectiveInputError(message, path=path, line=line, field=field)
    return InputError(message, path=path, line=line, field=field)


def _agree(comm, error: BaseException | None) -> None:
    """Collective: if any rank has an ``error``, every rank raises the one of the lowest such rank."""
    flags = comm.allgather(error is not None)
    if not any(flags):
        return
    first = flags.index(True)
    info = None
    if comm.Get_rank() == first:
        info = ((error.reason, error.path, error.line, error.field) if isinstance(error, InputError)
                else (f"{type(error).__name__}: {error}", None, None, None))
    reason, path, line, field = comm.bcast(info, root=first)
    raise _error(comm, reason, path=path, field=field, line=line)


def _read_cfg_distributed(settings: RunSettings, path: Path, forcefield) -> Configuration | None:
    """This rank's atoms of configuration ``structure_index`` of a ``.cfg`` file: rank 0 reads
    the atom lines a chunk at a time (:class:`mmtp_hpc.io.cfg.CfgAtomStream`) and hands every
    chunk out to the owners (:func:`mmtp_hpc.parallel.halo.scatter_rows`), so no rank holds more
    than its own atoms plus one chunk. None when the file is not a ``.cfg`` file or its layout
    cannot be streamed (the caller reads it whole)."""
    from mmtp_hpc.io.cfg import CfgAtomStream
    from mmtp_hpc.io.formats import detect_format
    from mmtp_hpc.parallel.halo import scatter_rows

    comm = forcefield.comm
    root = comm.Get_rank() == 0
    if detect_format(path) != "cfg":
        return None
    chunk = int(getattr(settings.output, "chunk_atoms", 65536) or 65536)
    stream, header, error = None, None, None
    if root:
        try:
            stream = CfgAtomStream(path, settings.system.structure_index)
            header = (stream.size, stream.cell, stream.pbc, stream.has_moments)
        except CfgAtomStream.NotStreamable:
            header = "whole"
        except (InputError, OSError, UnicodeDecodeError) as exc:
            error = exc
    try:
        _agree(comm, error)
        header = comm.bcast(header, root=0)
        if header == "whole":
            return None
        size, cell, pbc, has_moments = header
        d = forcefield.decompose(cell, pbc)
        width = 6
        parts = []
        chunks = stream.chunks(chunk) if root else None
        for _ in range(-(-size // chunk) + 1):     # the chunks, then the block's end (checked)
            rows = owners = None
            error = None
            if root:
                try:
                    c = next(chunks, None)
                    if c is not None:
                        mag = c["magmoms"] if c["magmoms"] is not None else np.zeros(len(c["ids"]))
                        rows = np.column_stack([c["ids"].astype(np.float64), c["types"].astype(np.float64),
                                                c["positions"], mag])
                        owners = d.owners(d.wrap(c["positions"])[0])
                    else:
                        rows, owners = np.zeros((0, width)), np.zeros(0, dtype=np.int64)
                except (InputError, OSError, UnicodeDecodeError) as exc:
                    error = exc
            _agree(comm, error)
            parts.append(scatter_rows(comm, owners, rows, width))
    finally:
        if stream is not None:
            stream.close()
    rows = np.concatenate(parts) if parts else np.zeros((0, width))
    del parts
    ids = np.rint(rows[:, 0]).astype(np.int64)
    return Configuration(cell=cell, positions=rows[:, 2:5], types=np.rint(rows[:, 1]).astype(np.int64), pbc=pbc,
                         magmoms=rows[:, 5].copy() if has_moments else None, ids=ids)


def _check_finite_distributed(cfg: Configuration, source: str | None, comm) -> None:
    """:func:`check_configuration`'s checks that need no neighbours, over all ranks (collective)."""
    if not np.all(np.isfinite(cfg.cell)):
        raise _error(comm, "the cell has non-finite entries", path=source, field="system")
    if cfg.pbc.any() and abs(np.linalg.det(cfg.cell)) < 1e-9:
        raise _error(comm, "the cell has no volume", path=source, field="system")
    error = None
    bad = np.flatnonzero(~np.all(np.isfinite(cfg.positions), axis=1))
    if bad.size:
        error = InputError(f"atom {int(cfg.ids[bad[0]])} has a non-finite position "
                           f"{cfg.positions[bad[0]].tolist()}", path=source, field="system")
    elif cfg.magmoms is not None and not np.all(np.isfinite(cfg.magmoms)):
        k = int(np.flatnonzero(~np.isfinite(cfg.magmoms))[0])
        error = InputError(f"atom {int(cfg.ids[k])} has a non-finite moment", path=source, field="system.magmoms")
    _agree(comm, error)


def check_distances_distributed(forcefield, source: str | None) -> None:
    """No two atoms closer than :data:`MIN_DISTANCE`, over all ranks (collective): pairs of owned
    atoms and ghosts of the forcefield's first build."""
    from mmtp_hpc.system.neighbors import find_pairs

    nl, comm = forcefield.nl, forcefield.comm
    n = nl.n_local
    offsets, neighbors = find_pairs(nl.positions, n, MIN_DISTANCE)
    mine = (math.inf, -1, -1)
    if len(neighbors):
        centres = np.repeat(np.arange(n), np.diff(offsets))
        dist = np.linalg.norm(nl.positions[neighbors] - nl.positions[centres], axis=1)
        k = int(np.argmin(dist))
        a, b = int(forcefield.ids_all[centres[k]]), int(forcefield.ids_all[neighbors[k]])
        mine = (float(dist[k]), min(a, b), max(a, b))
    best = min(comm.allgather(mine))
    if best[0] < MIN_DISTANCE:
        raise _error(comm, f"atoms {best[1]} and {best[2]} are {best[0]:.3f} Å apart "
                           f"(less than {MIN_DISTANCE} Å)", path=source, field="system")


def check_ids_distributed(comm, ids: np.ndarray, source: str | None) -> None:
    """Ids distinct and in [0, 2³² − 1) over all ranks (collective): each id is sent to rank
    ``id mod P``, which looks for repeats, so no rank sees more than its share."""
    from mmtp_hpc.parallel.halo import migrate

    ids = np.asarray(ids, dtype=np.int64)
    ok = bool(np.all(ids >= 0) and np.all(ids < 2 ** 32 - 1))
    if ok:
        mine = migrate(comm, ids % comm.Get_size(), ids.astype(np.float64).reshape(-1, 1))[:, 0]
        ok = len(np.unique(mine)) == len(mine)
    if not all(comm.allgather(ok)):
        raise _error(comm, "atom ids must be distinct and in [0, 2^32 − 1)", path=source, field="system")


def substitute(ids: np.ndarray, species: list[str], composition: dict[str, float],
               streams: Streams, comm=None, n_global: int | None = None) -> np.ndarray:
    """Random substitution: exact counts (largest remainders) over all sites; the sites are ordered
    by a keyed uniform number (ties by id) and filled in that order, the first ``counts[0]`` with
    the first species named, and so on.

    With ``comm`` (more than one rank) every rank passes the ids of its own sites and
    ``n_global``; the cut points of the global order are found by bisection with small
    reductions (:func:`mmtp_hpc.parallel.comm.order_statistics`) and each rank gets the types of
    its sites, the same as the serial result."""
    ids = np.asarray(ids, dtype=np.int64)
    n = len(ids) if n_global is None else int(n_global)
    names = list(composition)
    fractions = np.array([composition[s] for s in names])
    exact = fractions * n
    counts = np.floor(exact).astype(int)
    for k in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[k] += 1
    u = np.ascontiguousarray(streams.uniform(Purpose.COMPOSITION, 0, ids, 1)[:, 0])
    types = np.empty(len(ids), dtype=np.int64)
    if comm is None or comm.Get_size() == 1:
        order = np.lexsort((ids, u))
        start = 0
        for name, count in zip(names, counts, strict=True):
            types[order[start:start + count]] = species.index(name)
            start += count
        return types
    from mmtp_hpc.parallel.comm import order_statistics

    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    used = [j for j in range(len(names)) if counts[j] > 0 and starts[j] < n]
    bits = u.view(np.int64)                  # positive doubles: the bit patterns sort as the values
    cuts = order_statistics(comm, bits, ids, [starts[j] for j in used])
    for j, (primary, secondary) in zip(used, cuts, strict=True):
        at_or_after = (bits > primary) | ((bits == primary) & (ids >= secondary))
        types[at_or_after] = species.index(names[j])
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
                       remove_drift: bool = True, comm=None, n_global: int | None = None) -> np.ndarray:
    """Maxwell–Boltzmann velocities (Å/fs) without centre-of-mass drift, scaled so that the
    kinetic temperature (3N − 3 degrees of freedom) is exactly ``temperature_K``.

    The sums (momentum, mass, kinetic energy) are :func:`mmtp_hpc.parallel.comm.exact_sum`
    over the atoms of all ranks of ``comm`` (``n_global`` atoms in all), independent of the
    order and the rank count, so 1 and P ranks give bit-identical velocities."""
    from mmtp_hpc.parallel.comm import SerialComm, exact_sum

    comm = SerialComm() if comm is None else comm
    n = len(masses) if n_global is None else int(n_global)
    masses = np.asarray(masses, dtype=np.float64)
    if temperature_K <= 0 or n == 0:
        return np.zeros((len(masses), 3))
    kT = KB_EV_PER_K * temperature_K
    v = streams.normal(Purpose.VELOCITY_INIT, 0, ids, 3) * np.sqrt(kT / (masses * MVV2E))[:, None]
    if remove_drift and n > 1:
        sums = exact_sum(comm, np.column_stack([masses[:, None] * v, masses]))
        v -= sums[:3] / sums[3]
    dof = 3 * n - (3 if remove_drift and n > 1 else 0)
    twice = masses * (v[:, 0] * v[:, 0] + v[:, 1] * v[:, 1] + v[:, 2] * v[:, 2])
    kinetic = 0.5 * MVV2E * float(exact_sum(comm, twice))
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
    threads = settings.potential.threads or None
    engine = MTPEngine(pot, num_threads=threads)
    distributed = comm.Get_size() > 1
    if distributed:
        from mmtp_hpc.dynamics.domain import DomainForceField

        # parallel Monte Carlo needs subdomains of four cutoffs (its sectors) and the ghost
        # centres' rows from their owners (the force field's monte_carlo)
        forcefield = DomainForceField(engine, comm, settings.potential.symmetrize, skin=md.skin,
                                      grid=settings.parallel.grid, monte_carlo=mo.mode == "mc")
    else:
        forcefield = ForceField(engine, settings.potential.symmetrize, skin=md.skin)
    checkpoint = None
    if restart is not None:
        # under MPI every rank reads its slice of the rows; the atoms go to their owners in restore
        part = (comm.Get_rank(), comm.Get_size()) if distributed else None
        checkpoint = Simulation.read_checkpoint(restart, part)
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
        top = int(state.types.max()) if state.n_atoms else -1
        if distributed:
            from mmtp_hpc.parallel.comm import allreduce_max_int

            top = allreduce_max_int(comm, [top])[0]
        if top >= pot.species_count:
            raise _error(comm if distributed else None,
                         f"checkpoint has atom types up to {top}, the potential "
                         f"{pot.species_count} species", path=str(restart))
    else:
        cfg, species, n_global = _build_system(settings, pot, streams, forcefield if distributed else None)
        masses = masses_of(species, cfg.types)
        velocities = (initial_velocities(masses, cfg.ids, settings.initial_temperature, streams,
                                         comm=comm if distributed else None, n_global=n_global)
                      if md.velocities == "maxwell" else np.zeros((len(cfg), 3)))
        state = MDState(positions=cfg.positions, velocities=velocities, masses=masses, types=cfg.types,
                        ids=cfg.ids, magmoms=cfg.magmoms, cell=cfg.cell, pbc=cfg.pbc, species=species)
        del cfg, masses, velocities
    if distributed:
        check_ids_distributed(comm, state.ids, settings.source)
        if checkpoint is None:
            forcefield.setup(state, replicated=False)     # parts of the system → owners; halo and list
            check_distances_distributed(forcefield, settings.source)
    else:
        ids_ok = np.all(state.ids >= 0) and np.all(state.ids < 2 ** 32 - 1)
        if not ids_ok or len(np.unique(state.ids)) != len(state.ids):
            raise InputError("atom ids must be distinct and in [0, 2^32 − 1)", path=settings.source,
                             field="system")

    lo, hi = moment_bounds(settings, pot, species, state.types)
    if pot.magnetic and restart is None:
        _check_moment_bounds(state, lo, hi, mo.mode, settings.source, stream, comm if distributed else None)

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
        if mo.species is not None:
            unknown = [s for s in mo.species if s not in species]
            if unknown:
                raise InputError(f"species {unknown} are not in the system's species {species}",
                                 path=settings.source, field="moments.species")
            moments.frozen_types = np.array([s not in mo.species for s in species]
                                            + [True] * (pot.species_count - len(species)), dtype=bool)
            moments.set_types(state.types)

    sim = Simulation(state, forcefield, integrator, moments=moments, moment_every=mo.every,
                     seed=streams.seed, settings=settings, potential_path=str(pot_path))
    sim.target_step = md.steps
    if forcefield.distributed and checkpoint is None:
        sim._after_migration()       # the state holds this rank's atoms since forcefield.setup

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
        trajectory = TrajectoryObserver(path, out.store, out.chunk_atoms, out.compress)
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
    if checkpoint is None:
        _warn_outside_range(stream, pot_path, state, species, comm)
    return sim


def _warn_outside_range(stream: TextIO | None, pot_path, state: MDState, species: Sequence[str],
                        comm) -> None:
    """Warnings where the starting system lies outside the training range on the potential's
    card (collective under MPI: moments reduced over the ranks)."""
    from mmtp_hpc.io.potential_card import range_warnings, read_card

    try:
        card = read_card(pot_path)
    except InputError as exc:
        _note(stream, f"warning: {exc}")
        return
    if not card:
        return
    local = {}
    for t, sym in enumerate(species):
        m = state.magmoms[state.types == t]
        if len(m):
            local[sym] = (float(m.min()), float(m.max()))
    ranges = local
    if comm is not None and comm.Get_size() > 1:
        ranges = {}
        for part in comm.allgather(local):
            for sym, (lo, hi) in part.items():
                old = ranges.get(sym, (lo, hi))
                ranges[sym] = (min(old[0], lo), max(old[1], hi))
    volume = float(abs(np.linalg.det(state.cell))) if np.all(state.pbc) else None
    for line in range_warnings(card, state.n_global, volume, ranges):
        _note(stream, "warning: " + line)


def _check_moment_bounds(state: MDState, lo: np.ndarray, hi: np.ndarray, mode: str, source: str | None,
                         stream: TextIO | None, comm) -> None:
    """Initial moments inside the bounds: an error unless moments are fixed (then a warning on
    ``stream``). Under MPI (``comm``) the count and the first atom (lowest id) are global."""
    outside = (state.magmoms < lo) | (state.magmoms > hi)
    count = int(outside.sum())
    first = None
    if count:
        k = int(np.flatnonzero(outside)[np.argmin(state.ids[outside])])
        first = (int(state.ids[k]), float(state.magmoms[k]), float(lo[k]), float(hi[k]))
    if comm is not None:
        count = _global_int_sum(comm, count)
        if count == 0:
            return
        first = min(f for f in comm.allgather(first) if f is not None)
    if count == 0:
        return
    atom, m, low, high = first
    message = (f"initial moment of atom {atom} is {m:.4g} μB, outside "
               f"[{low:.4g}, {high:.4g}] ({count} atoms outside)")
    if mode != "fixed":
        raise _error(comm, message + "; adjust [system] magmoms or [moments] bounds", path=source,
                     field="moments.bounds")
    _note(stream, "warning: " + message + "; evaluated without clamping")


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
