"""Molecular dynamics with magnetic moments: driver, integrators, thermostats, moment updates.

Public API::

    from mmtp_hpc.dynamics import Simulation, load_settings

    sim = Simulation.from_settings(load_settings("input.toml"))
    sim.attach(lambda s: print(s.state.step, s.thermo()["temperature"]), interval=100)
    sim.run()

Module map: ``settings`` (TOML input), ``state`` (MDState, Evaluation), ``forcefield``
(neighbour list + potential), ``integrators``, ``thermostats``, ``barostat``, ``moments``,
``rng`` (counter-based random streams), ``observers`` (grades, log, trajectory,
checkpoint), ``driver`` (Simulation and the fixed hook order), ``setup`` (settings →
objects, checks before step 0), ``units``.
"""

from mmtp_hpc.dynamics.driver import Simulation
from mmtp_hpc.dynamics.forcefield import ForceField
from mmtp_hpc.dynamics.integrators import Integrator
from mmtp_hpc.dynamics.observers import (
                                         CallbackObserver,
                                         CheckpointObserver,
                                         ExtrapolationObserver,
                                         Observer,
                                         ThermoLog,
                                         TrajectoryObserver,
)
from mmtp_hpc.dynamics.settings import RunSettings, describe, load_settings, settings_from_dict
from mmtp_hpc.dynamics.state import Evaluation, MDState

__all__ = [
    "Simulation", "ForceField", "Integrator", "Observer", "CallbackObserver", "CheckpointObserver",
    "ExtrapolationObserver", "ThermoLog", "TrajectoryObserver", "RunSettings", "describe", "load_settings",
    "settings_from_dict", "Evaluation", "MDState",
]
