"""MMTPCalculator honours ASE's calculator contract: finite differences, optimisers, MD, phonopy,
and it gives exactly what `mmtp efs` gives."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from mpi_helpers import REPO

from mmtp_hpc.ase import MMTPCalculator
from mmtp_hpc.cli import main
from mmtp_hpc.errors import InputError
from mmtp_hpc.io.cfg import read_cfg, write_cfg
from mmtp_hpc.potentials.analytic import AnalyticMagneticModel
from mmtp_hpc.system.configuration import Configuration

FE = REPO / "inputs" / "potentials" / "fe_bcc_analytic_l16.almtp"
FEAL = REPO / "inputs" / "potentials" / "feal_b2_analytic_l16.almtp"
A_FE = 2.856          # equilibrium of fe_bcc_analytic_l16 (mmtp scan)


def fe_cell(rattle: float = 0.05, strain: bool = True, seed: int = 1, moments: bool = True) -> Atoms:
    atoms = bulk("Fe", "bcc", a=A_FE, cubic=True) * (2, 2, 2)
    if strain:   # a general (triclinic) cell exercises every stress component
        atoms.set_cell(atoms.cell.array @ np.array([[1.01, 0.02, 0.0], [0.0, 0.99, 0.015],
                                                    [0.01, 0.0, 1.0]]), scale_atoms=True)
    atoms.rattle(rattle, seed=seed)
    if moments:
        rng = np.random.default_rng(seed)
        atoms.set_initial_magnetic_moments(2.2 + rng.normal(0.0, 0.15, len(atoms)))
    return atoms


def feal_cell(seed: int = 2) -> Atoms:
    atoms = bulk("FeAl", "cesiumchloride", a=2.90) * (2, 2, 2)
    atoms.rattle(0.04, seed=seed)
    rng = np.random.default_rng(seed)
    m = np.where(np.array(atoms.get_chemical_symbols()) == "Fe", 1.1, -0.02)
    atoms.set_initial_magnetic_moments(m + rng.normal(0.0, 0.03, len(atoms)))
    return atoms


# ------------------------------------------------------------------ finite differences
@pytest.mark.parametrize("system", ["fe", "feal"])
def test_forces_and_stress_match_finite_differences_through_ase(system):
    atoms = fe_cell() if system == "fe" else feal_cell()
    atoms.calc = MMTPCalculator(FE if system == "fe" else FEAL)   # species from the file
    forces, stress = atoms.get_forces(), atoms.get_stress()
    assert np.abs(forces).max() > 0.05 and np.abs(stress).max() > 1e-3     # not trivially zero
    np.testing.assert_allclose(forces, calculate_numerical_forces(atoms, eps=1e-4), atol=2e-7)
    np.testing.assert_allclose(stress, calculate_numerical_stress(atoms, eps=1e-5), atol=2e-8)


def test_relaxed_moments_forces_are_derivatives_of_the_relaxed_energy():
    """Envelope theorem: with magmoms="relax", F = −dE(x, m*(x))/dx and σ = dE(m*)/dε / V."""
    atoms = fe_cell(rattle=0.04, strain=True)
    calc = MMTPCalculator(FE, magmoms="relax", relax_tol=1e-7)
    atoms.calc = calc
    forces, stress = atoms.get_forces(), atoms.get_stress()
    assert np.abs(calc.get_magnetic_gradient()).max() <= 1e-7
    moments = atoms.get_magnetic_moments()
    assert not np.allclose(moments, atoms.get_initial_magnetic_moments())   # they did relax
    assert 1.5 < moments.mean() < 3.0
    # forces on three atoms are enough to test the relaxed surface (the calculator re-relaxes
    # at every displaced geometry, warm-started)
    idx = [0, 5, 11]
    fd = np.zeros((3, 3))
    pos0 = atoms.positions.copy()
    for k, i in enumerate(idx):
        for d in range(3):
            energies = []
            for sign in (1, -1):
                atoms.positions = pos0
                atoms.positions[i, d] += sign * 1e-4
                energies.append(atoms.get_potential_energy())
            fd[k, d] = -(energies[0] - energies[1]) / 2e-4
    atoms.positions = pos0
    np.testing.assert_allclose(forces[idx], fd, atol=1e-6)
    np.testing.assert_allclose(stress, calculate_numerical_stress(atoms, eps=1e-5), atol=2e-7)


def test_results_keys_units_and_signs():
    atoms = fe_cell(strain=False)
    calc = MMTPCalculator(FE)
    atoms.calc = calc
    energy = atoms.get_potential_energy()
    assert atoms.get_potential_energy(force_consistent=True) == energy        # free_energy
    np.testing.assert_allclose(atoms.get_potential_energies().sum(), energy, rtol=1e-12)
    np.testing.assert_array_equal(atoms.get_magnetic_moments(), atoms.get_initial_magnetic_moments())
    assert atoms.get_magnetic_moment() == pytest.approx(atoms.get_initial_magnetic_moments().sum())
    assert calc.get_property("magnetic_gradient").shape == (len(atoms),)
    # compress: ASE stress is negative under compression
    atoms.set_cell(atoms.cell * 0.97, scale_atoms=True)
    assert np.all(atoms.get_stress()[:3] < 0)


def test_results_equal_mmtp_efs(tmp_path):
    atoms = feal_cell()
    atoms.calc = MMTPCalculator(FEAL, species=["Fe", "Al"])
    cfg = Configuration(cell=atoms.cell.array, positions=atoms.positions,
                        types=[{"Fe": 0, "Al": 1}[s] for s in atoms.get_chemical_symbols()],
                        magmoms=atoms.get_initial_magnetic_moments())
    write_cfg(tmp_path / "in.cfg", [cfg])
    assert main(["efs", str(FEAL), str(tmp_path / "in.cfg"), "-o", str(tmp_path / "out.cfg")]) == 0
    (ref,) = read_cfg(tmp_path / "out.cfg")
    assert atoms.get_potential_energy() == ref.energy
    np.testing.assert_array_equal(atoms.get_forces(), ref.forces)
    np.testing.assert_array_equal(atoms.get_potential_energies(), ref.site_energies)
    np.testing.assert_array_equal(atoms.calc.get_magnetic_gradient(), ref.magnetic_gradient)
    voigt = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    np.testing.assert_allclose(atoms.get_stress(), [-ref.virial[a, b] / atoms.get_volume() for a, b in voigt],
                               rtol=1e-13, atol=1e-15)


# ------------------------------------------------------------------ ASE workflows
def test_bfgs_relaxation_and_cell_relaxation_with_filter():
    from ase.filters import UnitCellFilter
    from ase.optimize import BFGS

    atoms = fe_cell(rattle=0.08, strain=False)
    atoms.calc = MMTPCalculator(FE, magmoms="relax", relax_tol=1e-6)
    e0 = atoms.get_potential_energy()
    opt = BFGS(atoms, logfile=None)
    assert opt.run(fmax=1e-3, steps=200)
    assert atoms.get_potential_energy() < e0
    assert np.abs(atoms.get_forces()).max() < 1e-3
    # the relaxed structure is bcc again: every atom has 8 neighbours at a√3/2
    d = atoms.get_all_distances(mic=True)
    np.testing.assert_allclose(np.sort(d, axis=1)[:, 1:9], A_FE * np.sqrt(3) / 2, atol=0.01)

    # cell relaxation from a 3 % expanded, sheared cell back to the zero-pressure lattice
    atoms = bulk("Fe", "bcc", a=A_FE * 1.03, cubic=True) * (2, 2, 2)
    atoms.set_cell(atoms.cell.array + [[0, 0.05, 0], [0, 0, 0], [0, 0, 0]], scale_atoms=True)
    atoms.calc = MMTPCalculator(FE, magmoms="relax", relax_tol=1e-6)
    opt = BFGS(UnitCellFilter(atoms), logfile=None)
    assert opt.run(fmax=1e-3, steps=300)
    assert np.abs(atoms.get_stress()).max() < 1e-4                    # eV/Å³ (0.016 GPa)
    a = (atoms.get_volume() / 16 * 2) ** (1 / 3)
    assert a == pytest.approx(A_FE, abs=0.01)
    assert atoms.get_magnetic_moments().mean() == pytest.approx(2.1, abs=0.2)


def test_ase_langevin_100_steps():
    from ase import units
    from ase.md.langevin import Langevin

    atoms = fe_cell(rattle=0.0, strain=False)
    atoms.calc = MMTPCalculator(FE, magmoms="relax")                 # relax_tol 1e-4 eV/μB
    kt = 600 * units.kB                                      # Maxwell–Boltzmann at 600 K
    masses = atoms.get_masses()[:, None]
    atoms.set_momenta(np.random.default_rng(3).normal(size=(len(atoms), 3)) * np.sqrt(kt * masses))
    dyn = Langevin(atoms, 1.0 * units.fs, temperature_K=300, friction=0.02, fixcm=False,
                   rng=np.random.default_rng(4))
    energies = []
    dyn.attach(lambda: energies.append(atoms.get_potential_energy()), interval=10)
    dyn.run(100)
    assert dyn.nsteps == 100 and len(energies) == 11 and np.all(np.isfinite(energies))
    assert 50 < atoms.get_temperature() < 1200
    moments = atoms.get_magnetic_moments()
    assert np.all((moments > 1.5) & (moments < 3.0))          # moments stayed ferromagnetic
    assert np.abs(atoms.calc.get_magnetic_gradient()).max() <= 1e-4


def test_analytic_oracle_through_the_same_calculator():
    atoms = bulk("Fe", "bcc", a=2.855, cubic=True) * (2, 2, 2)
    atoms.rattle(0.03, seed=5)
    atoms.calc = MMTPCalculator(AnalyticMagneticModel.default(), magmoms="relax", relax_tol=1e-7)
    np.testing.assert_allclose(atoms.get_magnetic_moments(), 2.25, atol=0.05)   # the model's bcc moment
    np.testing.assert_allclose(atoms.get_forces(), calculate_numerical_forces(atoms, eps=1e-4), atol=1e-6)


def test_errors_are_clear():
    atoms = fe_cell(moments=False)
    atoms.set_initial_magnetic_moments(None)        # ase.build gives Fe 2.3 μB by default
    atoms.calc = MMTPCalculator(FE)
    with pytest.raises(InputError, match="no initial magnetic moments"):
        atoms.get_potential_energy()
    atoms = bulk("Al", "fcc", a=4.05)
    atoms.set_initial_magnetic_moments([0.0])
    atoms.calc = MMTPCalculator(FE)
    with pytest.raises(InputError, match="not in the calculator's species"):
        atoms.get_potential_energy()
    with pytest.raises(InputError, match="has 2 species"):
        MMTPCalculator(FEAL, species=["Fe"])
    with pytest.raises(InputError, match="magmoms"):
        MMTPCalculator(FE, magmoms="guess")


def test_phonopy_through_ase_bcc_fe():
    phonopy = pytest.importorskip("phonopy", reason="phonopy is not installed (pip install phonopy)")
    from phonopy.structure.atoms import PhonopyAtoms

    unit = bulk("Fe", "bcc", a=A_FE, cubic=True)
    ph = phonopy.Phonopy(PhonopyAtoms(symbols=unit.get_chemical_symbols(), cell=unit.cell.array,
                                      scaled_positions=unit.get_scaled_positions()),
                         supercell_matrix=np.eye(3, dtype=int) * 3,
                         primitive_matrix=[[-0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.5, 0.5, -0.5]])
    ph.generate_displacements(distance=0.01)
    calc = MMTPCalculator(FE, magmoms="relax", relax_tol=1e-6)
    forces = []
    for sc in ph.supercells_with_displacements:
        atoms = Atoms(sc.symbols, cell=sc.cell, scaled_positions=sc.scaled_positions, pbc=True)
        atoms.calc = calc
        forces.append(atoms.get_forces())
    ph.forces = forces
    ph.produce_force_constants()
    # Γ, H, N, P and a point inside the zone (primitive reciprocal coordinates)
    ph.run_qpoints([[0, 0, 0], [0.5, -0.5, 0.5], [0, 0, 0.5], [0.25, 0.25, 0.25], [0.1, 0.2, 0.05]])
    freqs = ph.qpoints.frequencies                                  # THz, imaginary as negative
    np.testing.assert_allclose(freqs[0], 0.0, atol=1e-3)           # acoustic sum rule at Γ
    assert freqs[1:].min() > 0.5                                    # no imaginary modes
    assert 4.0 < freqs[1].max() < 12.0                              # a metal's THz scale (Fe: 8.6 at H)
