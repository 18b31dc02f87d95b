"""NPT barostat: stochastic cell rescaling (C-rescale), isotropic or anisotropic.

Bernetti & Bussi, J. Chem. Phys. 153, 114107 (2020), eq. (5)–(7): the logarithm of the
volume ε = ln V follows the overdamped Langevin equation

    dε = −(β_T/τ_p) (P₀ − P − k_B T/V) dt + √(2 k_B T β_T / (V τ_p)) dW,

with P the instantaneous pressure (kinetic + virial), β_T the isothermal
compressibility and τ_p the barostat time constant; positions and the cell are scaled by
μ = exp(Δε/3) and velocities by 1/μ. It samples the isothermal–isobaric ensemble (with
measure dV) when combined with any canonical thermostat, has no cell "mass" to tune and
cannot oscillate.

Anisotropic variant (this module's extension, same derivation per axis): the three
diagonal strains ε_α = ln L_α move independently with mobility β_T/(3 V τ_p),

    dε_α = (β_T/(3τ_p)) (P_αα − P₀_α + k_B T/V) dt + √(2 k_B T β_T / (3 V τ_p)) dW_α,

which samples the ensemble with measure dL_x dL_y dL_z and reduces to the isotropic
equation for the volume when the axes move together. Cell rows are scaled column-wise,
``h[:, α] *= μ_α``, so a triclinic cell keeps its shape angles only approximately; use it
for orthorhombic cells.

Units: pressures in GPa (positive under compression), β_T in 1/GPa, τ_p in fs,
k_B T/V converted from eV/Å³ to GPa.
"""

from __future__ import annotations

import math

import numpy as np

from mmtp_hpc.dynamics.rng import Purpose, Streams
from mmtp_hpc.dynamics.state import MDState
from mmtp_hpc.dynamics.units import GPA_PER_EV_A3, KB_EV_PER_K


class StochasticCellRescaling:
    def __init__(self, pressure_GPa: float | list[float], temperature_K: float, damping_fs: float,
                 compressibility_per_GPa: float, streams: Streams, anisotropic: bool = False):
        self.anisotropic = bool(anisotropic)
        self.target = np.broadcast_to(np.asarray(pressure_GPa, dtype=float), (3,)).copy()
        if not self.anisotropic and not np.all(self.target == self.target[0]):
            raise ValueError("an isotropic barostat takes one target pressure")
        self.kT = KB_EV_PER_K * temperature_K
        self.damping = float(damping_fs)
        self.beta = float(compressibility_per_GPa)
        self.streams = streams

    def apply(self, state: MDState, virial: np.ndarray, dt: float) -> None:
        """Rescale cell, positions and velocities over ``dt`` using the current pressure."""
        volume = state.volume
        ptensor = state.pressure_tensor(virial)
        kT_over_V = self.kT / volume * GPA_PER_EV_A3
        if self.anisotropic:
            rate = self.beta / (3.0 * self.damping)
            noise = self.streams.global_normal(Purpose.BAROSTAT, state.step, 3)
            deps = (rate * (np.diag(ptensor) - self.target + kT_over_V) * dt
                    + np.sqrt(2.0 * kT_over_V * rate * dt) * noise)
            mu = np.exp(deps)
            state.cell *= mu[None, :]
            state.positions *= mu[None, :]
            state.velocities /= mu[None, :]
        else:
            rate = self.beta / self.damping
            pressure = float(np.trace(ptensor)) / 3.0
            noise = float(self.streams.global_normal(Purpose.BAROSTAT, state.step, 1)[0])
            deps = (rate * (pressure - self.target[0] + kT_over_V) * dt
                    + math.sqrt(2.0 * kT_over_V * rate * dt) * noise)
            mu = math.exp(deps / 3.0)
            state.cell *= mu
            state.positions *= mu
            state.velocities /= mu
