"""Thermostats: Langevin (the O step of BAOAB), stochastic velocity rescaling, Nosé–Hoover chain.

Each thermostat acts on :class:`~mmtp_hpc.dynamics.state.MDState` velocities; the
integrator (:mod:`mmtp_hpc.dynamics.integrators`) decides where in the step it acts.
Random numbers come from counter-based streams keyed by (seed, purpose, step, atom id),
so a thermostat has no hidden state beyond the named variables it keeps in
``state.thermostat`` (checkpointed).

Energy bookkeeping: the stochastic thermostats add the kinetic energy they remove to
``state.heat``, so ``E_pot + E_kin + heat`` is conserved up to integration error; the
Nosé–Hoover chain has its own conserved extension (:meth:`NoseHooverChain.energy`).

References
----------
- Langevin O step: exact Ornstein–Uhlenbeck update ``v ← c₁ v + √((1 − c₁²) k_B T / m) ξ``,
  ``c₁ = exp(−Δt/τ)`` (Leimkuhler & Matthews, Appl. Math. Res. Express 2013, "BAOAB").
- Stochastic velocity rescaling: Bussi, Donadio & Parrinello, J. Chem. Phys. 126, 014101
  (2007), eq. (A7) — the kinetic energy is resampled as
  ``K' = K c + K̄/N_f (1 − c)(R₁² + Σ_{i=2}^{N_f} R_i²) + 2 R₁ √(c (1 − c) K K̄ / N_f)``,
  where the sum of N_f − 1 squared normals is 2·Gamma((N_f − 1)/2).
- Nosé–Hoover chain: Martyna, Tuckerman, Tobias & Klein, Mol. Phys. 87, 1117 (1996),
  Trotter factorisation of the chain propagator (one Suzuki–Yoshida weight); masses
  Q₁ = N_f k_B T τ², Q_j = k_B T τ².
"""

from __future__ import annotations

import math

import numpy as np

from mmtp_hpc.dynamics.rng import Purpose, Streams
from mmtp_hpc.dynamics.state import MDState
from mmtp_hpc.dynamics.units import KB_EV_PER_K, MVV2E


class Thermostat:
    """Base: no thermostat (NVE)."""

    name = "none"
    removes_momentum = False   # True if total momentum is not conserved (Langevin)

    def setup(self, state: MDState, dof: int) -> None:
        self.dof = dof

    def energy(self, state: MDState) -> float:
        """Energy of the thermostat's own variables (eV), part of the conserved quantity."""
        return 0.0


class Langevin(Thermostat):
    """The O step: exact Ornstein–Uhlenbeck velocity update over ``dt`` with time constant τ."""

    name = "langevin"
    removes_momentum = True

    def __init__(self, temperature_K: float, damping_fs: float, streams: Streams):
        self.kT = KB_EV_PER_K * temperature_K
        self.damping = damping_fs
        self.streams = streams

    def apply(self, state: MDState, dt: float) -> None:
        c1 = math.exp(-dt / self.damping)
        sigma = np.sqrt((1.0 - c1 * c1) * self.kT / (state.masses * MVV2E))
        noise = self.streams.normal(Purpose.LANGEVIN, state.step, state.ids, 3)
        before = state.kinetic_energy()
        state.velocities *= c1
        state.velocities += sigma[:, None] * noise
        state.heat += before - state.kinetic_energy()


class CSVR(Thermostat):
    """Stochastic velocity rescaling (Bussi–Donadio–Parrinello) over ``dt``."""

    name = "csvr"

    def __init__(self, temperature_K: float, damping_fs: float, streams: Streams):
        self.kT = KB_EV_PER_K * temperature_K
        self.damping = damping_fs
        self.streams = streams

    def apply(self, state: MDState, dt: float) -> None:
        kinetic = state.kinetic_energy()
        if kinetic <= 0.0:
            return
        nf = self.dof
        target = 0.5 * nf * self.kT
        c = math.exp(-dt / self.damping)
        r1 = float(self.streams.global_normal(Purpose.CSVR, state.step, 1)[0])
        rest = 0.0
        if nf > 1:   # Σ_{i=2}^{N_f} R_i² = 2 Gamma((N_f − 1)/2)
            rest = 2.0 * self.streams.global_gamma(Purpose.CSVR_GAMMA, state.step, 0.5 * (nf - 1))
        new = (kinetic * c + target / nf * (1.0 - c) * (r1 * r1 + rest)
               + 2.0 * r1 * math.sqrt(c * (1.0 - c) * kinetic * target / nf))
        alpha = math.sqrt(max(new, 0.0) / kinetic)
        state.velocities *= alpha
        state.heat += kinetic - alpha * alpha * kinetic


class NoseHooverChain(Thermostat):
    """Nosé–Hoover chain of length M; ``state.thermostat`` holds ``nhc_xi`` and ``nhc_v`` (M,)."""

    name = "nose-hoover"

    def __init__(self, temperature_K: float, damping_fs: float, chain: int = 3):
        self.kT = KB_EV_PER_K * temperature_K
        self.damping = damping_fs
        self.chain = int(chain)

    def setup(self, state: MDState, dof: int) -> None:
        super().setup(state, dof)
        tau2 = self.damping ** 2
        self.Q = np.full(self.chain, self.kT * tau2)
        self.Q[0] = dof * self.kT * tau2
        for key in ("nhc_xi", "nhc_v"):
            value = state.thermostat.get(key)
            if value is None or np.shape(value) != (self.chain,):
                state.thermostat[key] = np.zeros(self.chain)

    def half_step(self, state: MDState, dt: float) -> None:
        """Propagate chain and velocities over ``dt / 2``."""
        xi, v = state.thermostat["nhc_xi"], state.thermostat["nhc_v"]
        Q, M, kT, nf = self.Q, self.chain, self.kT, self.dof
        h = 0.5 * dt
        kin2 = 2.0 * state.kinetic_energy()
        if kin2 <= 0.0 and self.kT == 0.0:
            return

        def force(j: int, kin2_: float) -> float:
            return (kin2_ - nf * kT) / Q[0] if j == 0 else (Q[j - 1] * v[j - 1] ** 2 - kT) / Q[j]

        # chain from the top down
        v[M - 1] += 0.5 * h * force(M - 1, kin2)
        for j in range(M - 2, -1, -1):
            e = math.exp(-0.25 * h * v[j + 1])
            v[j] = (v[j] * e + 0.5 * h * force(j, kin2)) * e
        scale = math.exp(-h * v[0])
        state.velocities *= scale
        kin2 *= scale * scale
        xi += h * v
        for j in range(M - 1):
            e = math.exp(-0.25 * h * v[j + 1])
            v[j] = (v[j] * e + 0.5 * h * force(j, kin2)) * e
        v[M - 1] += 0.5 * h * force(M - 1, kin2)

    def energy(self, state: MDState) -> float:
        xi, v = state.thermostat["nhc_xi"], state.thermostat["nhc_v"]
        return float(0.5 * np.dot(self.Q, v * v) + self.dof * self.kT * xi[0] + self.kT * xi[1:].sum())
