"""Moment updates: fixed, relax, overdamped longitudinal Langevin, Metropolis Monte Carlo.

Collinear moments m_i (μB) are extra degrees of freedom (spec §6). Where each mode acts
in the MD step (hook order in :mod:`mmtp_hpc.dynamics.driver`):

- ``fixed``: never.
- ``relax``: inside the force hook. At the new positions E(x, m) is minimised over m
  within bounds (spectral projected gradient, warm-started from the current moments,
  converged when the largest *projected* |∂E/∂m| is below ``relax_tol``), and the forces
  are those at the relaxed moments. By the envelope theorem ``dE(x, m*(x))/dx = ∂E/∂x``,
  so the atoms move on the Born–Oppenheimer-like surface E(x, m*(x)) and NVE conserves
  E_kin + E(x, m*(x)).
- ``langevin``: the moment-update hook after the second half kick, every ``every``
  steps, overdamped longitudinal Langevin with Euler–Maruyama (spec §6)::

      m ← m − Γ Δt ∂E/∂m + √(2 Γ k_B T Δt) · N(0, 1),   Δt = every × timestep

  with ∂E/∂m from the step's force evaluation and reflection at the bounds. Its
  stationary density is ∝ exp(−E/k_BT) up to O(Δt).
- ``mc``: the same hook; ``mc_sweeps`` Metropolis trial moves per atom, each a flip
  m → −m (probability ``mc_flip_fraction``) or a magnitude move m → m + δ,
  δ ~ U(−mc_max_change, mc_max_change); both proposals are symmetric, moves outside the
  bounds are rejected. ΔE is computed from the changed site energies only: a change of
  m_i changes E_i and E_k of every centre k with i (or a periodic image of i) among its
  neighbours, so only those are re-evaluated — in the kernels, incrementally
  (:meth:`MTPEngine.metropolis`: cached basic moments per centre, only the pair terms (k, i)
  updated; no Python per trial), or for other site models by :meth:`SiteModel.site_energies`.

After a ``langevin`` or ``mc`` update the forces and ∂E/∂m of the step are those of the
moments before the update; the next step's half kick uses them. This is a Lie
splitting — kick and moment update both use the state (x, m) they start from, then the
drift — and saves a second force evaluation per step. The site energies (and E_pot)
reported after an MC update are exact, and the energy MC exchanges with its heat bath is
added to ``state.heat`` (so E_pot + E_kin + heat stays nearly constant with MC moments); after
a Langevin update they are those before it, and the conserved-energy column is not
conserved with Langevin moments.

Every mode is a :class:`MomentUpdater` (like a LAMMPS fix): the driver calls the same hooks
on whichever it has, at fixed points of the step, and never tests its type —

- ``post_migrate(types)``   this rank's atoms changed (MPI migration): per-atom constants;
- ``forces(ff, state, due)`` hook 3: the step's evaluation (``relax`` minimises first);
- ``end_of_step(ff, state, evaluation, due)`` hook 6: the moment move; returns True when
  atoms changed ranks (parallel MC migrates first), so the driver runs ``post_migrate``;
- ``summary_line(state)``   one line for the run summary (collective under MPI).

``due`` is True on the steps the update runs (every ``moments.every`` steps).

Monte Carlo works on a :class:`SiteModel` (``set_moment``, ``site_energies``,
``affected``); :class:`MTPSiteModel` is the potential's, and tests use analytic ones. The
sweep belongs to :class:`MonteCarloMoments` on any layout: the force field only supplies
the sweep's layout (:meth:`ForceField.monte_carlo_layout`: the site model, the sectors
whose atoms may move at the same time, and how site energies are refreshed between them).
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from mmtp_hpc.dynamics.rng import Purpose, Streams
from mmtp_hpc.dynamics.state import Evaluation, MDState
from mmtp_hpc.dynamics.units import KB_EV_PER_K


class _TypeBounds:
    """Per-atom moment bounds ``lo``/``hi`` that follow the atoms' types (they change on an
    MPI rank when atoms migrate): ``type_bounds = (lo_t, hi_t)`` per type, or fixed arrays.

    ``frozen_types`` (per type, ``[moments] species``): atoms of these types keep their moments;
    ``moving`` is the per-atom mask (None: every atom moves). :meth:`pin` sets their bounds to
    their moments (relax, langevin); Monte Carlo leaves them out of its sweeps."""

    type_bounds: tuple[np.ndarray, np.ndarray] | None = None
    frozen_types: np.ndarray | None = None
    moving: np.ndarray | None = None

    def set_types(self, types: np.ndarray) -> None:
        if self.type_bounds is not None:
            self.lo = self.type_bounds[0][types]
            self.hi = self.type_bounds[1][types]
        if self.frozen_types is not None:
            self.moving = ~np.asarray(self.frozen_types, dtype=bool)[types]

    def n_moving(self, n: int) -> int:
        """How many of the ``n`` atoms move (all without ``frozen_types``)."""
        return n if self.moving is None else int(np.count_nonzero(self.moving))

    def pin(self, magmoms: np.ndarray) -> None:
        """Bounds of the atoms that keep their moments: [m, m] (idempotent: those never change)."""
        if self.moving is not None:
            self.lo = np.where(self.moving, self.lo, magmoms)
            self.hi = np.where(self.moving, self.hi, magmoms)


def _global_dot(comm, a: np.ndarray, b: np.ndarray) -> float:
    value = float(a @ b)
    if comm is None or comm.Get_size() == 1:
        return value
    from mmtp_hpc.parallel.comm import allreduce_sum
    return float(allreduce_sum(comm, np.array([value]))[0])


def _global_max(comm, a: np.ndarray) -> float:
    value = float(np.max(a, initial=0.0))
    if comm is None or comm.Get_size() == 1:
        return value
    from mmtp_hpc.parallel.comm import max_op
    return float(comm.allreduce(value, op=max_op()))


class MomentUpdater(_TypeBounds):
    """The hooks of a moment update (see the module docstring); the defaults keep the moments fixed."""

    name = "fixed"

    def post_migrate(self, types: np.ndarray) -> None:
        """This rank's atoms changed (migration): per-atom bounds follow the new types."""
        self.set_types(types)

    def forces(self, forcefield, state: MDState, due: bool) -> Evaluation:
        """Hook 3: the evaluation of the step at the current positions."""
        return forcefield.evaluate(state)

    def end_of_step(self, forcefield, state: MDState, evaluation: Evaluation, due: bool) -> bool:
        """Hook 6: move the moments; True when atoms changed ranks on the way."""
        return False

    def summary_line(self, state: MDState) -> str | None:
        """A line for the run summary, or None (called on every rank)."""
        return None

    def state_dict(self) -> dict:
        """What a bit-identical restart needs besides the MD state (stored in checkpoints)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` from a checkpoint."""


class FixedMoments(MomentUpdater):
    """Moments stay as they are."""


def reflect(m: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Reflect values into [lo, hi] (once), then clip what is still outside."""
    m = np.where(m > hi, 2.0 * hi - m, m)
    m = np.where(m < lo, 2.0 * lo - m, m)
    return np.clip(m, lo, hi)


class RelaxMoments(MomentUpdater):
    """Bounded minimisation of E over the moments at fixed positions.

    Spectral projected gradient (Birgin, Martínez & Raydan, SIAM J. Optim. 10, 1196 (2000),
    algorithm SPG2): steps along the projected negative gradient with Barzilai–Borwein step
    lengths and a non-monotone Armijo line search over the last 10 energies. One
    evaluation per iteration in the usual case; the moment Hessian is nearly diagonal,
    where BB steps converge fast. Warm start: the moments are those relaxed at the previous
    step, and the first step length is the last BB step length of the previous relaxation
    (an inverse curvature, so the first step is close to a Newton step); the first
    relaxation of a run moves no moment by more than 0.1 μB in its first step. That step
    length is the solver's only state and is stored in checkpoints (restarts stay
    bit-identical). The warm start is evaluated without forces (energies and ∂E/∂m only, about
    a third cheaper); the trial points with them, since each may be the last: the usual
    relaxation costs one such evaluation and one full one.
    """

    def __init__(self, tol: float, max_iter: int, lo: np.ndarray, hi: np.ndarray):
        self.tol = float(tol)
        self.max_iter = int(max_iter)
        self.lo = np.asarray(lo, dtype=float)
        self.hi = np.asarray(hi, dtype=float)
        self.evaluations = 0
        self.relaxations = 0
        self.unconverged = 0
        self.last_gradient = 0.0
        self.comm = None      # set from the state: sums and maxima over MPI ranks
        self.alpha = None     # the last BB step length (μB²/eV): the next relaxation's first step

    def state_dict(self) -> dict:
        return {} if self.alpha is None else {"alpha": float(self.alpha)}

    def load_state_dict(self, state: dict) -> None:
        alpha = state.get("alpha")
        self.alpha = float(alpha) if alpha is not None and math.isfinite(float(alpha)) and float(alpha) > 0 \
            else None

    def projected_gradient(self, m: np.ndarray, g: np.ndarray) -> float:
        """max |∂E/∂m| ignoring components that push against an active bound."""
        free = ~(((m <= self.lo) & (g > 0)) | ((m >= self.hi) & (g < 0)))
        return _global_max(self.comm, np.abs(g[free]))

    def minimize(self, fun, m0: np.ndarray) -> tuple[np.ndarray, object, float]:
        """Minimise ``fun(m, full) -> (energy, gradient, payload)`` within the bounds from ``m0``
        (``full``: the payload is needed, else only the energy and gradient).

        Returns (m, payload at m, projected gradient at m).
        """
        m = np.clip(m0, self.lo, self.hi)
        f, g, payload = fun(m, False)
        full = False
        self.relaxations += 1
        self.evaluations += 1
        history = [f]
        pg = self.projected_gradient(m, g)
        if self.alpha is not None:
            alpha = self.alpha
        else:
            gmax = _global_max(self.comm, np.abs(g))
            alpha = 0.1 / gmax if gmax > 0 else 1.0
        for _ in range(self.max_iter):
            if pg <= self.tol:
                break
            d = np.clip(m - alpha * g, self.lo, self.hi) - m
            slope = _global_dot(self.comm, g, d)
            if slope >= 0.0:
                break
            f_ref = max(history[-10:])
            lam = 1.0
            while True:
                m_new = m + lam * d
                f_new, g_new, payload_new = fun(m_new, True)
                self.evaluations += 1
                if f_new <= f_ref + 1e-4 * lam * slope or lam < 1e-10:
                    break
                # safeguarded quadratic interpolation of the step
                denom = 2.0 * (f_new - f - lam * slope)
                lam_q = -slope * lam * lam / denom if denom > 0 else 0.5 * lam
                lam = min(max(lam_q, 0.1 * lam), 0.5 * lam)
            s_vec = m_new - m
            y_vec = g_new - g
            sy = _global_dot(self.comm, s_vec, y_vec)
            alpha = min(max(_global_dot(self.comm, s_vec, s_vec) / sy, 1e-6), 1e6) if sy > 0 else 1e6
            if sy > 0:
                self.alpha = alpha
            m, f, g, payload = m_new, f_new, g_new, payload_new
            full = True
            history.append(f)
            pg = self.projected_gradient(m, g)
        if not full:                 # stopped at the warm start: its payload with everything
            f, g, payload = fun(m, True)
            self.evaluations += 1
        return m, payload, pg

    name = "relax"

    def forces(self, forcefield, state: MDState, due: bool) -> Evaluation:
        """Hook 3: relax the moments at the new positions (when due), then evaluate there."""
        return self.relax(forcefield, state) if due else forcefield.evaluate(state)

    def summary_line(self, state: MDState) -> str | None:
        return (f"  moments relaxed {self.relaxations} times, {self.evaluations} evaluations, "
                f"{self.unconverged} not converged to {self.tol:g} eV/μB")

    def relax(self, forcefield, state: MDState) -> Evaluation:
        self.comm = state.comm
        self.pin(state.magmoms)

        def fun(m: np.ndarray, full: bool):
            ev = forcefield.evaluate(state, m, derivatives=True if full else "magnetic")
            return ev.energy, ev.magnetic_gradient, ev

        m, ev, pg = self.minimize(fun, state.magmoms)
        self.last_gradient = pg
        if pg > self.tol:
            self.unconverged += 1
        state.magmoms[:] = m
        return ev


class LangevinMoments(MomentUpdater):
    """Overdamped longitudinal Langevin moment dynamics (Euler–Maruyama, reflecting bounds)."""

    def __init__(self, gamma: float, dt_fs: float, temperature_K: float, lo: np.ndarray, hi: np.ndarray,
                 streams: Streams):
        self.gamma = float(gamma)
        self.dt = float(dt_fs)
        self.kT = KB_EV_PER_K * temperature_K
        self.lo = np.asarray(lo, dtype=float)
        self.hi = np.asarray(hi, dtype=float)
        self.streams = streams

    def step(self, magmoms: np.ndarray, gradient: np.ndarray, ids: np.ndarray, step: int) -> np.ndarray:
        """New moments from moments (N,) μB and +∂E/∂m (N,) eV/μB; a pure function of its inputs."""
        noise = self.streams.normal(Purpose.MOMENT_LANGEVIN, step, ids, 1)[:, 0]
        m = (magmoms - self.gamma * self.dt * gradient
             + math.sqrt(2.0 * self.gamma * self.kT * self.dt) * noise)
        return reflect(m, self.lo, self.hi)

    name = "langevin"

    def update(self, state: MDState, evaluation: Evaluation) -> None:
        self.pin(state.magmoms)
        state.magmoms[:] = self.step(state.magmoms, evaluation.magnetic_gradient, state.ids, state.step)

    def end_of_step(self, forcefield, state: MDState, evaluation: Evaluation, due: bool) -> bool:
        if due:
            self.update(state, evaluation)
        return False


class SiteModel(Protocol):
    """What Metropolis MC needs from an energy model E = Σ_k E_k(m)."""

    def affected(self, i: int) -> np.ndarray:
        """Centres k whose E_k depends on m_i (including i)."""

    def set_moment(self, i: int, value: float) -> None:
        """Set m_i for subsequent :meth:`site_energies` calls."""

    def site_energies(self, centers: np.ndarray) -> np.ndarray:
        """E_k (eV) of the listed centres at the current moments."""


class NativeMetropolis:
    """Metropolis sweeps of a site model in the kernels (:meth:`MTPEngine.metropolis`): a trial
    updates only the pair terms and site energies it changes, from per-centre caches, and no
    Python runs per trial. A model sets ``engine``, ``nl``, ``types``, ``mag`` (per entry),
    ``maps`` and ``symmetric``, then calls :meth:`_native_setup`; it sets ``maps`` and ``_pairs``
    together (:meth:`MTPEngine.metropolis_maps`) whenever the positions change."""

    _pairs: tuple | None = None       # the pair terms each move changes (None: found per call)

    native = True      # False: every model runs the Python loop (reference runs in tests and benchmarks)

    def _native_setup(self) -> None:
        self._cache = self.engine.metropolis_cache(self.nl.n_local, self.symmetric) if self.native else None
        self._reset_native()

    def _reset_native(self) -> None:
        """Nothing in the caches is current (new positions): the next moves redo everything."""
        self._init = 1                       # the kernels redo before the next moves: 1 everything, 0 nothing
        self._touched: np.ndarray | None = None   # (n_centres,) uint8 the moves mark, where kept

    def metropolis(self, moves: np.ndarray, draws: np.ndarray, col: int, lo: np.ndarray, hi: np.ndarray,
                   flip_fraction: float, max_change: float, beta: float, magmoms: np.ndarray,
                   site_energies: np.ndarray, incremental: bool = True,
                   trial_delta: np.ndarray | None = None) -> int | None:
        """The moves of :meth:`MonteCarloMoments.moves` in the kernels; None where they cannot
        (the caller then runs them in Python). ``site_energies`` (n_centres,) are brought up to
        date with the caches first where they are not (the same array every call)."""
        if self._cache is None:
            return None
        accepted = self.engine.metropolis(
            self.nl, self.types, self.mag, self.maps, moves, draws, col, lo, hi, flip_fraction,
            max_change, beta, magmoms, site_energies, self._cache, self._init,
            self.symmetric, incremental, trial_delta, pairs=self._pairs if incremental else None,
            touched=self._touched)
        self._init = 0
        return accepted

    def seed(self, generation: int, basic: np.ndarray) -> None:
        """Start the next sweep from the basic moments of the step's force evaluation
        (``Evaluation.basic``: this model's list, its moments, taken over) instead of a pass of
        its own; ignored where they do not fit. The site energies the moves will be given must
        be that evaluation's too (the same numbers to rounding): no pass recomputes them."""
        if (self._cache is not None and generation == getattr(self, "generation", None)
                and basic.shape == self._cache.shape):
            self._cache = basic
            self._init = 0

    def update_site_energies(self, out: np.ndarray) -> None:
        """Bring ``out`` (the centres' energies, kept by the caller between calls) up to date
        with what :attr:`_init` says changed."""
        empty = np.zeros(0, dtype=np.int64)
        self.metropolis(empty, np.zeros((1, 3)), 0, np.zeros(1), np.zeros(1), 0.0, 0.0, 1.0,
                        np.zeros(1), out)


class MTPSiteModel(NativeMetropolis):
    """Site energies of the potential on the force field's current neighbour list.

    Keeps the per-entry moments (locals and ghosts) and, per atom, the entries that are
    its images and the centres that see it inside the cutoff (at the current positions);
    symmetrised potentials average E_k(M) and
    E_k(−M) (the force field's ``site_energies_of``, one pass for symmetric intervals).
    """

    def __init__(self, forcefield, magmoms: np.ndarray, previous: MTPSiteModel | None = None):
        self.ff = forcefield
        nl = forcefield.nl
        self.generation = forcefield.generation
        self.mag_all = np.ascontiguousarray(forcefield.spread(np.asarray(magmoms, dtype=np.float64)))
        self.engine, self.nl, self.types, self.mag = forcefield.engine, nl, forcefield.types_all, self.mag_all
        self.symmetric = bool(forcefield.symmetric)
        n = nl.n_local
        if (previous is not None and getattr(previous, "generation", None) == self.generation
                and previous.ff is forcefield):
            # same neighbour list: reuse the image maps
            self.image_entries, self.image_offsets = previous.image_entries, previous.image_offsets
        else:
            order = np.argsort(nl.image_of, kind="stable")
            self.image_entries = order
            self.image_offsets = np.concatenate([[0], np.cumsum(np.bincount(nl.image_of, minlength=n))])
        # centres that see atom i (or an image) inside the cutoff at the current positions, and i:
        # pairs in the skin change no energy (a hair's margin keeps every borderline pair)
        self.affected_centres, self.affected_offsets, self._pairs = self.engine.metropolis_maps(nl, nl.image_of, n)
        self._set_maps()

    def _set_maps(self) -> None:
        self.maps = {"entry_owner": self.nl.image_of, "image_entries": self.image_entries,
                     "image_offsets": self.image_offsets, "affected_centres": self.affected_centres,
                     "affected_offsets": self.affected_offsets}
        self._native_setup()

    def affected(self, i: int) -> np.ndarray:
        return self.affected_centres[self.affected_offsets[i]:self.affected_offsets[i + 1]]

    def set_moment(self, i: int, value: float) -> None:
        entries = self.image_entries[self.image_offsets[i]:self.image_offsets[i + 1]]
        self.mag_all[entries] = value
        self._init = 1

    def site_energies(self, centers: np.ndarray) -> np.ndarray:
        return self.ff.site_energies_of(self.mag_all, centers)


class MonteCarloMoments(MomentUpdater):
    """Metropolis moves on the moments: flips and bounded magnitude changes."""

    def __init__(self, sweeps: int, flip_fraction: float, max_change: float, temperature_K: float,
                 lo: np.ndarray, hi: np.ndarray, streams: Streams):
        self.sweeps = int(sweeps)
        self.flip_fraction = float(flip_fraction)
        self.max_change = float(max_change)
        self.kT = KB_EV_PER_K * temperature_K
        self.lo = np.asarray(lo, dtype=float)
        self.hi = np.asarray(hi, dtype=float)
        self.streams = streams
        self.tried = 0
        self.accepted = 0
        self._model: MTPSiteModel | None = None

    def sweep(self, model: SiteModel, magmoms: np.ndarray, site_energies: np.ndarray,
              ids: np.ndarray, step: int) -> int:
        """``sweeps`` trial moves per atom, in place on ``magmoms`` and ``site_energies``.

        The order of atoms in a sweep and every random number are keyed by atom id and
        step. Returns the number of accepted moves.
        """
        n = len(magmoms)
        order_keys, draws = self.random_numbers(ids, step)
        accepted = 0
        for s in range(self.sweeps):
            accepted += self.moves(model, magmoms, site_energies, np.arange(n), order_keys, draws, s)
        self.tried += self.sweeps * self.n_moving(n)
        self.accepted += accepted
        return accepted

    def random_numbers(self, ids: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-atom (keyed by id and step) ordering keys (n, sweeps) and move draws (n, 3·sweeps)."""
        return (self.streams.uniform(Purpose.MC_ORDER, step, ids, self.sweeps),
                self.streams.uniform(Purpose.MC_MOVE, step, ids, 3 * self.sweeps))

    def moves(self, model: SiteModel, magmoms: np.ndarray, site_energies: np.ndarray, atoms: np.ndarray,
              order_keys: np.ndarray, draws: np.ndarray, s: int) -> int:
        """Metropolis moves of sweep ``s`` on ``atoms`` (indices into ``magmoms``) in the order of
        their keys; ``site_energies`` is indexed by the model's centres. Returns accepted moves."""
        accepted = 0
        beta = 1.0 / self.kT if self.kT > 0 else math.inf
        atoms = np.asarray(atoms, dtype=np.int64)
        if self.moving is not None:
            atoms = atoms[self.moving[atoms]]          # [moments] species: the others keep theirs
        order = atoms[np.argsort(order_keys[atoms, s], kind="stable")]
        native = getattr(model, "metropolis", None)   # models that sweep in the kernels
        if native is not None:
            done = native(order, draws, 3 * s, self.lo, self.hi, self.flip_fraction, self.max_change, beta,
                          magmoms, site_energies)
            if done is not None:
                return done
        for i in order.tolist():
            u_kind, u_delta, u_accept = draws[i, 3 * s:3 * s + 3]
            old = float(magmoms[i])
            if u_kind < self.flip_fraction:
                new = -old
            else:
                new = old + self.max_change * (2.0 * u_delta - 1.0)
            if not self.lo[i] <= new <= self.hi[i]:
                continue
            centres = model.affected(i)
            before = site_energies[centres]
            model.set_moment(i, new)
            after = model.site_energies(centres)
            delta = float(np.sum(after - before))
            if delta <= 0.0 or u_accept < math.exp(-beta * delta):
                magmoms[i] = new
                site_energies[centres] = after
                accepted += 1
            else:
                model.set_moment(i, old)
        return accepted

    name = "mc"

    def forces(self, forcefield, state: MDState, due: bool) -> Evaluation:
        """Hook 3: the step's evaluation, with the basic moments the sweep of hook 6 starts from
        when it is due (where the force field's layout allows)."""
        return forcefield.evaluate(state, basic=due)

    def end_of_step(self, forcefield, state: MDState, evaluation: Evaluation, due: bool) -> bool:
        if not due:
            return False
        return self.update(forcefield, state, evaluation)

    def update(self, forcefield, state: MDState, evaluation: Evaluation) -> bool:
        """One MC update of the MD step on the force field's layout; the exact energy change is
        booked as heat (moment bath). Returns True when atoms changed ranks first (MPI)."""
        layout = forcefield.monte_carlo_layout(state, evaluation, self._model)
        if layout.migrated:
            self.set_types(state.types)
        self._model = layout.model
        order_keys, draws = self.random_numbers(state.ids, state.step)
        accepted = 0
        for s in range(self.sweeps):
            for phase, atoms in enumerate(layout.sectors):
                energies = layout.site_energies(state.magmoms, first=s == 0 and phase == 0)
                accepted += self.moves(layout.model, state.magmoms, energies, atoms, order_keys, draws, s)
        self.tried += self.sweeps * self.n_moving(state.n_atoms)
        self.accepted += accepted
        energy = layout.finish(state, evaluation)
        state.heat -= energy - evaluation.energy
        evaluation.energy = energy
        return layout.migrated

    def summary_line(self, state: MDState) -> str | None:
        sums = state.global_sum(np.array([float(self.accepted), float(self.tried)]))
        accepted, tried = (int(x) for x in sums)
        if not tried:
            return None
        return f"  moment MC: {accepted}/{tried} moves accepted ({100.0 * accepted / tried:.1f} %)"


class SerialSweepLayout:
    """The MC layout of a serial force field: one sector (all atoms), the site energies of the
    step's evaluation updated in place move by move, periodic images through the list."""

    migrated = False

    def __init__(self, forcefield, state: MDState, evaluation: Evaluation, previous=None):
        self.model = MTPSiteModel(forcefield, state.magmoms, previous)
        if evaluation.basic is not None:
            self.model.seed(*evaluation.basic)   # the sweep's energies are the step's
            evaluation.basic = None
        self.sectors = [np.arange(state.n_atoms, dtype=np.int64)]
        self.evaluation = evaluation

    def site_energies(self, magmoms: np.ndarray, first: bool) -> np.ndarray:
        return self.evaluation.site_energies

    def finish(self, state: MDState, evaluation: Evaluation) -> float:
        return float(evaluation.site_energies.sum())
