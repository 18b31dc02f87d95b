"""Time integration: velocity Verlet with a thermostat and an optional barostat.

The driver calls :meth:`Integrator.first_half` before and :meth:`Integrator.second_half`
after the force evaluation of a step (see the hook order in
:mod:`mmtp_hpc.dynamics.driver`). With ``B`` a half kick ``v += Δt/2 · F/m``, ``A`` a
drift ``x += Δt v``, ``O`` the Langevin velocity update, ``N`` a Nosé–Hoover chain
half step, ``R`` stochastic velocity rescaling and ``P`` the barostat:

==============  =============================  ==============
thermostat      first half                     second half
==============  =============================  ==============
none (NVE)      B [P] A                        B
langevin        B [P] A½ O A½  (BAOAB)         B
csvr            B [P] A                        B R
nose-hoover     N B [P] A                      B N
==============  =============================  ==============

Every sub-step is a pure function of the state and of counter-based random numbers, so
the integration is deterministic and restartable bit for bit.

Degrees of freedom: 3N − 3 when the total momentum is conserved (initial velocities
have no centre-of-mass drift), 3N with the Langevin thermostat.
"""

from __future__ import annotations

import numpy as np

from mmtp_hpc.dynamics.barostat import StochasticCellRescaling
from mmtp_hpc.dynamics.state import Evaluation, MDState
from mmtp_hpc.dynamics.thermostats import CSVR, Langevin, NoseHooverChain, Thermostat
from mmtp_hpc.dynamics.units import MVV2E


class Integrator:
    def __init__(self, timestep_fs: float, thermostat: Thermostat | None = None,
                 barostat: StochasticCellRescaling | None = None):
        self.dt = float(timestep_fs)
        self.thermostat = thermostat if thermostat is not None else Thermostat()
        self.barostat = barostat
        self._inv_m: np.ndarray | None = None

    def setup(self, state: MDState) -> None:
        n = state.n_global
        self.dof = max(3 * n - (0 if self.thermostat.removes_momentum else 3), 1)
        self.thermostat.setup(state, self.dof)
        self.refresh(state)

    def refresh(self, state: MDState) -> None:
        """Per-atom constants (1/m) after the atoms of this rank changed (MPI migration)."""
        self._inv_m = (1.0 / (state.masses * MVV2E))[:, None]

    def kick(self, state: MDState, forces: np.ndarray) -> None:
        """B: v += Δt/2 · F/m."""
        state.velocities += (0.5 * self.dt) * forces * self._inv_m

    def first_half(self, state: MDState, evaluation: Evaluation) -> None:
        th = self.thermostat
        if isinstance(th, NoseHooverChain):
            th.half_step(state, self.dt)
        self.kick(state, evaluation.forces)
        if self.barostat is not None:
            self.barostat.apply(state, evaluation.virial, self.dt)
        if isinstance(th, Langevin):
            state.positions += (0.5 * self.dt) * state.velocities
            th.apply(state, self.dt)
            state.positions += (0.5 * self.dt) * state.velocities
        else:
            state.positions += self.dt * state.velocities

    def second_half(self, state: MDState, evaluation: Evaluation) -> None:
        self.kick(state, evaluation.forces)
        th = self.thermostat
        if isinstance(th, NoseHooverChain):
            th.half_step(state, self.dt)
        elif isinstance(th, CSVR):
            th.apply(state, self.dt)

    def conserved_energy(self, state: MDState, potential_energy: float) -> float:
        """E_pot + E_kin + thermostat energy + heat removed (eV); NaN with a barostat."""
        if self.barostat is not None:
            return float("nan")
        return potential_energy + state.kinetic_energy() + self.thermostat.energy(state) + state.heat

    def temperature(self, state: MDState) -> float:
        return state.temperature(self.dof)
