"""Thermostats reach and hold the target temperature; the barostat reaches the target pressure.

54-atom bcc Fe, 1 fs, 20 ps per thermostat; averages over the second half (10 ps).
"""

import numpy as np
import pytest
from md_potential import md_settings

from mmtp_hpc.dynamics import Simulation
from mmtp_hpc.dynamics.units import KB_EV_PER_K

TARGET = 300.0


def run_recording(settings):
    sim = Simulation.from_settings(settings, stream=None)
    data = {"T": [], "K": [], "E": [], "P": [], "cell": []}

    def observe(s):
        th = s.thermo()
        data["T"].append(th["temperature"])
        data["K"].append(th["kinetic_energy"])
        data["E"].append(th["conserved_energy"] / s.state.n_atoms)
        data["P"].append(np.diag(s.state.pressure_tensor(s.evaluation.virial)))
        data["cell"].append(np.diag(s.state.cell).copy())
    sim.attach(observe, 1)
    sim.run()
    return sim, {k: np.array(v) for k, v in data.items()}


@pytest.mark.slow
@pytest.mark.parametrize("thermostat,damping", [("langevin", 25.0), ("csvr", 25.0), ("nose-hoover", 50.0)])
def test_thermostat_reaches_and_holds_temperature(fe_potential, tmp_path, thermostat, damping):
    # start cold (half the target), so "reaches" is part of the test
    settings = md_settings(fe_potential, tmp_path, repeat=3,
                           md={"steps": 20000, "timestep_fs": 1.0, "ensemble": "nvt", "temperature_K": TARGET,
                               "initial_temperature_K": 0.5 * TARGET, "thermostat": thermostat,
                               "damping_fs": damping, "seed": 5})
    sim, d = run_recording(settings)
    half = len(d["T"]) // 2
    mean = d["T"][half:].mean()
    print(f"\n{thermostat}: <T> over the second half of 20 ps = {mean:.2f} K "
          f"({100 * (mean / TARGET - 1):+.2f} %), std {d['T'][half:].std():.1f} K")
    assert d["T"][:3].mean() < 0.8 * TARGET
    assert abs(mean / TARGET - 1.0) < 0.02
    dof = sim.integrator.dof
    kT = KB_EV_PER_K * TARGET
    if thermostat in ("langevin", "csvr"):
        # canonical kinetic-energy fluctuations: var K = (N_f / 2) (k_B T)²
        ratio = d["K"][half:].var() / (0.5 * dof * kT ** 2)
        assert 0.8 < ratio < 1.2, ratio
    # the extended energy of the thermostatted dynamics is conserved
    t_ps = np.arange(len(d["E"])) / 1000.0
    slope = np.polyfit(t_ps[half:], d["E"][half:], 1)[0]   # eV/atom/ps
    print(f"extended-energy drift {slope:.2e} eV/atom/ps")
    assert abs(slope) < 1e-5, slope


@pytest.mark.slow
def test_npt_isotropic_reaches_target_pressure(fe_potential, tmp_path):
    """From a cell compressed by 1.4 % (≈ 9 GPa) to 0 GPa: <P> within its fluctuation."""
    settings = md_settings(fe_potential, tmp_path, system=fe_potential.system(3, a=fe_potential.a - 0.04),
                           md={"steps": 10000, "ensemble": "npt", "temperature_K": TARGET,
                               "thermostat": "langevin", "damping_fs": 50.0, "pressure_GPa": 0.0,
                               "barostat_damping_fs": 300.0, "seed": 3})
    sim, d = run_recording(settings)
    pressure = d["P"].mean(axis=1)
    half = len(pressure) // 2
    mean, sigma = pressure[half:].mean(), pressure[half:].std()
    print(f"\nNPT isotropic: P starts at {pressure[0]:.2f} GPa, <P> = {mean:.3f} ± {sigma:.3f} GPa "
          f"(target 0), <T> = {d['T'][half:].mean():.1f} K, a = {d['cell'][half:, 0].mean() / 3:.4f} Å")
    assert pressure[0] > 5 * sigma                     # it really had to move
    assert abs(mean) < sigma
    assert abs(d["T"][half:].mean() / TARGET - 1.0) < 0.03
    assert d["cell"][half:, 0].mean() > d["cell"][0, 0] * 1.01   # expanded
    cells = d["cell"][half:]
    assert np.allclose(cells[:, 0], cells[:, 1]) and np.allclose(cells[:, 0], cells[:, 2])


@pytest.mark.slow
def test_npt_anisotropic_reaches_target_stress(fe_potential, tmp_path):
    """Targets (0, 0, 3) GPa: each diagonal pressure reaches its target within its fluctuation,
    and the cell turns tetragonal (shorter along z)."""
    target = np.array([0.0, 0.0, 3.0])
    settings = md_settings(fe_potential, tmp_path, repeat=3,
                           md={"steps": 8000, "ensemble": "npt", "temperature_K": TARGET,
                               "thermostat": "csvr", "damping_fs": 50.0, "pressure_GPa": target.tolist(),
                               "barostat": "anisotropic", "barostat_damping_fs": 100.0, "seed": 3})
    sim, d = run_recording(settings)
    half = len(d["P"]) // 2
    mean, sigma = d["P"][half:].mean(axis=0), d["P"][half:].std(axis=0)
    cell = d["cell"][half:].mean(axis=0)
    print(f"\nNPT anisotropic: <P_aa> = {np.round(mean, 3)} ± {np.round(sigma, 3)} GPa, target {target}; "
          f"<L> = {np.round(cell, 4)} Å")
    assert np.all(np.abs(mean - target) < sigma)
    assert cell[2] < min(cell[0], cell[1]) - 0.05
