"""NVE: units against ASE's velocity Verlet, energy conservation (fixed and relaxed moments),
the envelope theorem behind relaxed moments, neighbour-list upkeep."""

import numpy as np
import pytest
from md_potential import md_settings

from mmtp_hpc.dynamics import Simulation
from mmtp_hpc.dynamics.units import KB_EV_PER_K, MVV2E
from mmtp_hpc.potentials.mtp.engine import MTPEngine
from mmtp_hpc.potentials.mtp.mlip_io import load_potential


def drift_per_ps(energies_per_atom: np.ndarray, dt_fs: float, skip: float = 0.2) -> tuple[float, float]:
    """Slope (eV/atom/ps) of a linear fit after the first ``skip`` fraction, and the rms residual."""
    t = np.arange(len(energies_per_atom)) * dt_fs / 1000.0
    k = int(skip * len(t))
    coeffs = np.polyfit(t[k:], energies_per_atom[k:], 1)
    residual = energies_per_atom[k:] - np.polyval(coeffs, t[k:])
    return float(coeffs[0]), float(np.sqrt(np.mean(residual ** 2)))


def record(sim, every=1):
    data = {"econs": [], "T": [], "m": []}

    def observe(s):
        th = s.thermo()
        data["econs"].append(th["conserved_energy"] / s.state.n_atoms)
        data["T"].append(th["temperature"])
        data["m"].append(s.state.magmoms.copy())
    sim.attach(observe, every)
    return data


def test_units_match_ase_velocity_verlet(fe_potential, tmp_path):
    """Same trajectory as ASE's VelocityVerlet (its own unit system) to round-off."""
    from ase import Atoms, units
    from ase.calculators.calculator import Calculator, all_changes
    from ase.md.verlet import VelocityVerlet

    from mmtp_hpc.system.configuration import Configuration

    settings = md_settings(fe_potential, tmp_path, repeat=2, md={"steps": 30, "initial_temperature_K": 500},
                           system=fe_potential.system(2, jitter=0.05))
    sim = Simulation.from_settings(settings, stream=None)
    s = sim.state
    engine = MTPEngine(load_potential(fe_potential.path))
    magmoms = s.magmoms.copy()

    class Calc(Calculator):
        implemented_properties = ["energy", "forces"]

        def calculate(self, atoms=None, properties=None, system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            cfg = Configuration(cell=atoms.cell[:], positions=atoms.positions,
                                types=np.zeros(len(atoms), int), magmoms=magmoms)
            out = engine.evaluate(cfg)
            self.results = {"energy": out["energy"], "forces": out["forces"]}

    atoms = Atoms("Fe" * s.n_atoms, positions=s.positions, cell=s.cell, pbc=True)
    atoms.set_masses(s.masses)
    atoms.set_velocities(s.velocities / units.fs)        # Å/fs -> Å per ASE time unit
    atoms.calc = Calc()
    # kinetic energy and temperature agree with ASE's (ASE counts 3N degrees of freedom); ASE's
    # constants are CODATA 2014, ours CODATA 2018: they differ at the 1e-7 level
    assert s.kinetic_energy() == pytest.approx(atoms.get_kinetic_energy(), rel=1e-7)
    assert s.temperature(3 * s.n_atoms) == pytest.approx(atoms.get_temperature(), rel=1e-6)
    assert MVV2E == pytest.approx(units._amu * 1e10 / units._e, rel=1e-7)
    start = s.positions.copy()
    sim.run()
    VelocityVerlet(atoms, timestep=1.0 * units.fs).run(30)
    assert np.abs(s.positions - start).max() > 0.05            # the atoms did move
    assert np.abs(s.positions - atoms.positions).max() < 1e-8
    assert np.abs(s.velocities - atoms.get_velocities() * units.fs).max() < 1e-9


def test_initial_velocities_exact_temperature_no_drift(fe_potential, tmp_path):
    settings = md_settings(fe_potential, tmp_path, repeat=3, md={"initial_temperature_K": 450.0})
    sim = Simulation.from_settings(settings, stream=None)
    s = sim.state
    assert np.abs((s.masses[:, None] * s.velocities).sum(axis=0)).max() < 1e-12
    kinetic = 0.5 * MVV2E * np.sum(s.masses[:, None] * s.velocities ** 2)
    assert 2 * kinetic / ((3 * s.n_atoms - 3) * KB_EV_PER_K) == pytest.approx(450.0, rel=1e-12)
    assert sim.integrator.temperature(s) == pytest.approx(450.0, rel=1e-12)


def test_nve_fixed_moments_energy_drift(fe_potential, tmp_path):
    """250-atom bcc Fe at 300 K, 1 fs: |drift| < 1e-5 eV/atom/ps (measured ≈ 1e-8)."""
    settings = md_settings(fe_potential, tmp_path, repeat=5,
                           md={"steps": 3000, "timestep_fs": 1.0, "initial_temperature_K": 600.0})
    sim = Simulation.from_settings(settings, stream=None)
    data = record(sim)
    sim.run()
    assert sim.state.n_atoms == 250
    slope, noise = drift_per_ps(np.array(data["econs"]), 1.0)
    temperature = float(np.mean(data["T"][600:]))
    print(f"\nNVE fixed moments, 250 atoms, T = {temperature:.1f} K: drift {slope:.2e} eV/atom/ps, "
          f"rms fluctuation {noise:.1e} eV/atom")
    assert 250.0 < temperature < 350.0
    assert abs(slope) < 1e-5
    assert noise < 2e-5
    assert sim.forcefield.rebuilds >= 1


def test_nve_relaxed_moments_conserve_energy(fe_potential, tmp_path):
    """With moments relaxed every step the atoms move on E(x, m*(x)); E_kin + E is conserved."""
    settings = md_settings(fe_potential, tmp_path, repeat=3,
                           md={"steps": 1500, "initial_temperature_K": 800.0},
                           moments={"mode": "relax", "relax_tol": 1e-6})
    sim = Simulation.from_settings(settings, stream=None)
    data = record(sim)
    sim.run()
    slope, noise = drift_per_ps(np.array(data["econs"]), 1.0)
    moments = np.array(data["m"])
    print(f"\nNVE relaxed moments, 54 atoms: drift {slope:.2e} eV/atom/ps, rms {noise:.1e} eV/atom, "
          f"{sim.moments.evaluations / sim.moments.relaxations:.1f} evaluations per relaxation")
    # the moments really follow the atoms (otherwise the test would prove nothing)
    assert moments.std(axis=0).mean() > 5e-3
    assert sim.moments.unconverged == 0
    assert abs(slope) < 1e-5
    assert noise < 2e-5


def test_relaxed_moment_forces_are_total_derivatives(fe_potential, tmp_path):
    """Envelope theorem: F = −dE*(x)/dx with E*(x) = min_m E(x, m) (central differences)."""
    from mmtp_hpc.dynamics.moments import RelaxMoments

    settings = md_settings(fe_potential, tmp_path, repeat=2, system=fe_potential.system(2, jitter=0.08),
                           moments={"mode": "relax", "relax_tol": 1e-9, "relax_max_iter": 2000})
    sim = Simulation.from_settings(settings, stream=None)
    unrelaxed = sim.state.magmoms.copy()
    sim.initialize()
    forces = sim.evaluation.forces.copy()
    relax = sim.moments
    assert isinstance(relax, RelaxMoments)
    start_positions, start_moments = sim.state.positions.copy(), sim.state.magmoms.copy()
    ff = sim.forcefield

    def relaxed_energy(positions):
        sim.state.positions = positions
        sim.state.magmoms = start_moments.copy()
        ff.build(positions, sim.state.cell, sim.state.pbc, sim.state.types)
        return relax.relax(ff, sim.state).energy

    h = 1e-4
    for atom, d in ((0, 0), (5, 2), (11, 1)):
        plus, minus = start_positions.copy(), start_positions.copy()
        plus[atom, d] += h
        minus[atom, d] -= h
        numeric = -(relaxed_energy(plus) - relaxed_energy(minus)) / (2 * h)
        assert numeric == pytest.approx(forces[atom, d], abs=2e-6), (atom, d)
    # the relaxation mattered: forces at the starting moments are different
    sim.state.positions = start_positions
    ff.build(start_positions, sim.state.cell, sim.state.pbc, sim.state.types)
    assert np.abs(ff.evaluate(sim.state, unrelaxed).forces - forces).max() > 1e-3
    assert np.abs(start_moments - unrelaxed).max() > 1e-2


def test_neighbour_list_upkeep_matches_fresh_evaluation(fe_potential, tmp_path):
    """After many steps with ghost refreshes and rebuilds (NVT and NPT) the forces equal a
    fresh evaluation on the final configuration."""
    for ensemble in ("nvt", "npt"):
        settings = md_settings(fe_potential, tmp_path, repeat=3,
                               md={"steps": 400, "ensemble": ensemble, "temperature_K": 1200.0,
                                   "damping_fs": 20.0, "skin": 0.3, "pressure_GPa": 5.0,
                                   "barostat_damping_fs": 100.0})
        sim = Simulation.from_settings(settings, stream=None)
        sim.run()
        assert sim.forcefield.rebuilds > 2
        engine = MTPEngine(load_potential(fe_potential.path))
        cfg = sim.state.configuration()
        fresh = engine.evaluate(cfg)
        ev = sim.evaluation
        assert ev.energy == pytest.approx(fresh["energy"], abs=1e-9)
        assert np.abs(ev.forces - fresh["forces"]).max() < 1e-10
        assert np.abs(ev.virial - fresh["virial"]).max() < 1e-9
        assert np.abs(ev.magnetic_gradient - fresh["magnetic_gradient"]).max() < 1e-10
        if ensemble == "npt":
            assert not np.allclose(sim.state.cell, 3 * fe_potential.a * np.eye(3))
