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
  neighbours, so only those are re-evaluated (:meth:`MTPEngine.site_energies_of`).

After a ``langevin`` or ``mc`` update the forces and ∂E/∂m of the step are those of the
moments before the update; the next step's half kick uses them. This is a Lie
splitting — kick and moment update both use the state (x, m) they start from, then the
drift — and saves a second force evaluation per step. The site energies (and E_pot)
reported after an MC update are exact, and the energy MC exchanges with its heat bath is
added to ``state.heat`` (so E_pot + E_kin + heat stays nearly constant with MC moments); after
a Langevin update they are those before it, and the conserved-energy column is not
conserved with Langevin moments.

Monte Carlo works on a :class:`SiteModel` (``set_moment``, ``site_energies``,
``affected``); :class:`MTPSiteModel` is the potential's, and tests use analytic ones.
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
    MPI rank when atoms migrate): ``type_bounds = (lo_t, hi_t)`` per type, or fixed arrays."""

    type_bounds: tuple[np.ndarray, np.ndarray] | None = None

    def set_types(self, types: np.ndarray) -> None:
        if self.type_bounds is not None:
            self.lo = self.type_bounds[0][types]
            self.hi = self.type_bounds[1][types]


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


def reflect(m: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Reflect values into [lo, hi] (once), then clip what is still outside."""
    m = np.where(m > hi, 2.0 * hi - m, m)
    m = np.where(m < lo, 2.0 * lo - m, m)
    return np.clip(m, lo, hi)


class RelaxMoments(_TypeBounds):
    """Bounded minimisation of E over the moments at fixed positions.

    Spectral projected gradient (Birgin, Martínez & Raydan, SIAM J. Optim. 10, 1196 (2000),
    algorithm SPG2): steps along the projected negative gradient with Barzilai–Borwein step
    lengths and a non-monotone Armijo line search over the last 10 energies. One
    evaluation per iteration in the usual case; the moment Hessian is nearly diagonal,
    where BB steps converge fast. The first step moves no moment by more than 0.1 μB.
    The solver keeps no state between relaxations (restarts stay bit-identical).
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

    def projected_gradient(self, m: np.ndarray, g: np.ndarray) -> float:
        """max |∂E/∂m| ignoring components that push against an active bound."""
        free = ~(((m <= self.lo) & (g > 0)) | ((m >= self.hi) & (g < 0)))
        return _global_max(self.comm, np.abs(g[free]))

    def minimize(self, fun, m0: np.ndarray) -> tuple[np.ndarray, object, float]:
        """Minimise ``fun(m) -> (energy, gradient, payload)`` within the bounds from ``m0``.

        Returns (m, payload at m, projected gradient at m).
        """
        m = np.clip(m0, self.lo, self.hi)
        f, g, payload = fun(m)
        self.relaxations += 1
        self.evaluations += 1
        history = [f]
        pg = self.projected_gradient(m, g)
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
                f_new, g_new, payload_new = fun(m_new)
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
            m, f, g, payload = m_new, f_new, g_new, payload_new
            history.append(f)
            pg = self.projected_gradient(m, g)
        return m, payload, pg

    def relax(self, forcefield, state: MDState) -> Evaluation:
        self.comm = state.comm

        def fun(m: np.ndarray):
            ev = forcefield.evaluate(state, m)
            return ev.energy, ev.magnetic_gradient, ev

        m, ev, pg = self.minimize(fun, state.magmoms)
        self.last_gradient = pg
        if pg > self.tol:
            self.unconverged += 1
        state.magmoms[:] = m
        return ev


class LangevinMoments(_TypeBounds):
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

    def update(self, state: MDState, evaluation: Evaluation) -> None:
        state.magmoms[:] = self.step(state.magmoms, evaluation.magnetic_gradient, state.ids, state.step)


class SiteModel(Protocol):
    """What Metropolis MC needs from an energy model E = Σ_k E_k(m)."""

    def affected(self, i: int) -> np.ndarray:
        """Centres k whose E_k depends on m_i (including i)."""

    def set_moment(self, i: int, value: float) -> None:
        """Set m_i for subsequent :meth:`site_energies` calls."""

    def site_energies(self, centers: np.ndarray) -> np.ndarray:
        """E_k (eV) of the listed centres at the current moments."""


class MTPSiteModel:
    """Site energies of the potential on the force field's current neighbour list.

    Keeps the per-entry moments (locals and ghosts) and, per atom, the entries that are
    its images and the centres that see it; symmetrised potentials average E_k(M) and
    E_k(−M) (the force field's ``site_energies_of``, one pass for symmetric intervals).
    """

    def __init__(self, forcefield, magmoms: np.ndarray, previous: MTPSiteModel | None = None):
        self.ff = forcefield
        nl = forcefield.nl
        self.generation = forcefield.generation
        self.mag_all = np.ascontiguousarray(np.asarray(magmoms)[nl.image_of], dtype=np.float64)
        if previous is not None and previous.generation == self.generation and previous.ff is forcefield:
            # same neighbour list: reuse the index maps
            self.image_entries, self.image_offsets = previous.image_entries, previous.image_offsets
            self.affected_centres = previous.affected_centres
            self.affected_offsets = previous.affected_offsets
            return
        n = nl.n_local
        order = np.argsort(nl.image_of, kind="stable")
        self.image_entries = order
        self.image_offsets = np.concatenate([[0], np.cumsum(np.bincount(nl.image_of, minlength=n))])
        owners = nl.image_of[nl.neighbors]
        centres = nl.pair_centers()
        key = np.unique(np.concatenate([owners * n + centres, np.arange(n, dtype=np.int64) * (n + 1)]))
        owner_sorted = key // n
        self.affected_centres = key % n
        self.affected_offsets = np.concatenate([[0], np.cumsum(np.bincount(owner_sorted, minlength=n))])

    def affected(self, i: int) -> np.ndarray:
        return self.affected_centres[self.affected_offsets[i]:self.affected_offsets[i + 1]]

    def set_moment(self, i: int, value: float) -> None:
        entries = self.image_entries[self.image_offsets[i]:self.image_offsets[i + 1]]
        self.mag_all[entries] = value

    def site_energies(self, centers: np.ndarray) -> np.ndarray:
        return self.ff.site_energies_of(self.mag_all, centers)


class MonteCarloMoments(_TypeBounds):
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
        self.tried += self.sweeps * n
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
        for i in atoms[np.argsort(order_keys[atoms, s], kind="stable")].tolist():
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

    def update(self, forcefield, state: MDState, evaluation: Evaluation) -> None:
        """One MC update of the MD step; the exact energy change is booked as heat (moment bath)."""
        if getattr(forcefield, "distributed", False):
            from mmtp_hpc.dynamics.domain import distributed_mc_update

            distributed_mc_update(self, forcefield, state, evaluation)
            return
        model = self._model = MTPSiteModel(forcefield, state.magmoms, self._model)
        self.sweep(model, state.magmoms, evaluation.site_energies, state.ids, state.step)
        energy = float(evaluation.site_energies.sum())
        state.heat -= energy - evaluation.energy
        evaluation.energy = energy
