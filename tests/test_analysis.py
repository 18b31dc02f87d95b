"""The analyses state physics they must get right: DOS of known harmonic systems, bcc shells in
g(r), diffusion of a known random walk, equation-of-state consistency — and the plots are
real PNG pictures."""

from __future__ import annotations

import numpy as np
import pytest
from mpi_helpers import REPO
from plot_helpers import png_ok

from mmtp_hpc.analysis import plots
from mmtp_hpc.analysis.csvtable import read_csv, write_csv
from mmtp_hpc.analysis.magnetisation import magnetisation_table, time_average
from mmtp_hpc.analysis.msd import diffusion_coefficient, mean_squared_displacement, unwrap
from mmtp_hpc.analysis.rdf import peak_positions, radial_distribution
from mmtp_hpc.analysis.scan import scan_lattice
from mmtp_hpc.analysis.thermo import thermo_table
from mmtp_hpc.analysis.vacf import (
    frame_spacing,
    power_spectrum_dos,
    velocity_autocorrelation,
    vibrational_dos,
)
from mmtp_hpc.errors import InputError
from mmtp_hpc.potentials.analytic import AnalyticMagneticModel
from mmtp_hpc.potentials.mtp.engine import MTPEngine
from mmtp_hpc.potentials.mtp.mlip_io import load_potential
from mmtp_hpc.system.lattice import bulk

KB = 8.617333262e-5 / 103.642691       # k_B in amu Å²/fs² per K (1 eV = 103.64 amu Å²/fs²)


# ================================================================== harmonic systems → DOS
def oscillators(freqs_THz: np.ndarray, masses: np.ndarray, n_frames: int, dt: float,
                temperature: float = 300.0, seed: int = 0) -> np.ndarray:
    """Velocities (F, N, 3) Å/fs of independent 3D harmonic oscillators, exact in time, each
    Cartesian component with energy k_B T (equipartition) and a random phase."""
    rng = np.random.default_rng(seed)
    n = len(freqs_THz)
    omega = 2 * np.pi * np.asarray(freqs_THz) / 1000.0                    # rad/fs
    amp = np.sqrt(2 * KB * temperature / (masses[:, None] * omega[:, None] ** 2)) * np.ones((n, 3))
    phase = rng.uniform(0, 2 * np.pi, (n, 3))
    t = np.arange(n_frames)[:, None, None] * dt
    return -amp * omega[:, None] * np.sin(omega[:, None] * t + phase)


def test_dos_of_independent_oscillators_peaks_and_integrates_to_3n():
    n_a, n_b = 20, 12                                  # "Fe" at 5 THz, lighter "Al" at 9 THz
    spread = 1 + np.random.default_rng(1).normal(0, 0.01, n_a + n_b)
    freqs = np.r_[np.full(n_a, 5.0), np.full(n_b, 9.0)] * spread
    masses = np.r_[np.full(n_a, 55.845), np.full(n_b, 26.98)]
    types = np.r_[np.zeros(n_a, int), np.ones(n_b, int)]
    dt = 2.0
    v = oscillators(freqs, masses, 2000, dt)
    vacf = velocity_autocorrelation(v, dt, types, ["Fe", "Al"], masses)
    dos = vibrational_dos(vacf)
    n = n_a + n_b
    assert dos.integral() == pytest.approx(3 * n, rel=1e-10)
    # equipartition: each species gets its share of the modes
    assert dos.integral(dos.partial["Fe"]) == pytest.approx(3 * n_a, rel=0.03)
    assert dos.integral(dos.partial["Al"]) == pytest.approx(3 * n_b, rel=0.03)
    assert dos.peak_THz(dos.partial["Fe"]) == pytest.approx(5.0, abs=dos.resolution_THz)
    assert dos.peak_THz(dos.partial["Al"]) == pytest.approx(9.0, abs=dos.resolution_THz)
    # nothing far from the two frequencies
    far = (np.abs(dos.freq_THz - 5) > 2) & (np.abs(dos.freq_THz - 9) > 2)
    assert np.trapezoid(np.where(far, dos.total, 0), dos.freq_THz) < 0.01 * 3 * n
    # the frequency-domain route (periodogram of the velocities) sees the same spectrum
    spec = power_spectrum_dos(v, dt, types, ["Fe", "Al"], masses)
    assert spec.integral() == pytest.approx(3 * n, rel=1e-10)
    assert spec.peak_THz(spec.partial["Fe"]) == pytest.approx(5.0, abs=spec.resolution_THz)
    assert spec.peak_THz(spec.partial["Al"]) == pytest.approx(9.0, abs=spec.resolution_THz)
    # C(0) is the mass-weighted mean square velocity: 3 N k_B T
    assert vacf.total[0] == pytest.approx(3 * n * KB * 300.0, rel=0.05)


def test_dos_of_a_harmonic_chain_has_its_band_edge_and_arcsine_distribution():
    """Monatomic ring of N atoms, springs K: ω(q) = 2√(K/m)|sin(qa/2)|. The DOS is
    g(ν) ∝ 1/√(ν_max² − ν²): no states above ν_max, a van Hove peak at ν_max and the
    cumulative fraction (2/π) arcsin(ν/ν_max), so half the modes lie below ν_max/√2."""
    n_atoms, mass, nu_max = 200, 55.845, 10.0                 # THz
    rng = np.random.default_rng(2)
    j = np.arange(n_atoms)
    # orthonormal real normal modes: cos and sin for 0 < q < π, the alternating mode at q = π
    ns = np.arange(1, n_atoms // 2)
    q = np.r_[2 * np.pi * ns / n_atoms, 2 * np.pi * ns / n_atoms, np.pi]
    shape = np.c_[np.cos(np.outer(j, q[:len(ns)])), np.sin(np.outer(j, q[len(ns):2 * len(ns)])),
                  np.cos(np.pi * j)[:, None] / np.sqrt(2)] * np.sqrt(2.0 / n_atoms)   # (atoms, modes)
    np.testing.assert_allclose(shape.T @ shape, np.eye(len(q)), atol=1e-12)
    omega = 2 * np.pi * nu_max / 1000.0 * np.abs(np.sin(q / 2))
    dt, n_frames = 2.0, 3000
    t = np.arange(n_frames) * dt
    amp = np.sqrt(2 * KB * 300.0 / (mass * omega ** 2))        # equal energy in every mode
    phi = rng.uniform(0, 2 * np.pi, len(q))
    vx = -(np.sin(np.outer(t, omega) + phi) * amp * omega) @ shape.T    # (frames, atoms)
    v = np.zeros((n_frames, n_atoms, 3))
    v[:, :, 0] = vx
    vacf = velocity_autocorrelation(v, dt, np.zeros(n_atoms, int), ["Fe"], np.full(n_atoms, mass))
    dos = vibrational_dos(vacf, n_dof=n_atoms - 1)                       # one direction, N−1 modes
    assert dos.integral() == pytest.approx(n_atoms - 1, rel=1e-10)
    above = dos.freq_THz > nu_max + 3 * dos.resolution_THz
    assert np.trapezoid(np.where(above, dos.total, 0), dos.freq_THz) < 0.02 * (n_atoms - 1)
    assert dos.peak_THz() == pytest.approx(nu_max, abs=2 * dos.resolution_THz)
    cum = np.cumsum(dos.total) / np.sum(dos.total)
    median = dos.freq_THz[np.searchsorted(cum, 0.5)]
    assert median == pytest.approx(nu_max / np.sqrt(2), rel=0.05)


def test_vacf_matches_direct_average_and_checks_input():
    rng = np.random.default_rng(3)
    v = rng.normal(size=(40, 5, 3))
    masses = rng.uniform(10, 60, 5)
    vacf = velocity_autocorrelation(v, 1.0, np.array([0, 0, 1, 1, 1]), ["A", "B"], masses, max_lag=10)
    direct = [np.mean([np.sum(masses[:, None] * v[t0] * v[t0 + k]) for t0 in range(40 - k)])
              for k in range(10)]
    np.testing.assert_allclose(vacf.total, direct, rtol=1e-10)
    with pytest.raises(InputError, match="not equally spaced"):
        frame_spacing(np.array([0.0, 2.0, 4.0, 8.0]))
    assert frame_spacing(np.arange(5) * 2.5) == 2.5
    with pytest.raises(InputError, match="NaN"):
        velocity_autocorrelation(np.full((10, 2, 3), np.nan), 1.0, [0, 0], ["A"])


# ================================================================== RDF
def test_rdf_of_bcc_fe_has_peaks_at_the_shells_with_8_6_12_neighbours():
    a = 2.87
    cfg = bulk("bcc", a, repeat=4, jitter=0.03, seed=1)
    frames = np.stack([cfg.positions, bulk("bcc", a, repeat=4, jitter=0.03, seed=2).positions])
    rdf = radial_distribution(frames, cfg.cell, cfg.types, ["Fe"], r_max=4.4, n_bins=220)
    peaks = peak_positions(rdf.r, rdf.total)
    np.testing.assert_allclose(peaks[:3], [a * np.sqrt(3) / 2, a, a * np.sqrt(2)], atol=0.03)
    n = rdf.coordination["total"]
    for r_between, count in ((2.7, 8), (3.4, 14), (4.3, 26)):           # 8, +6, +12
        assert n[np.searchsorted(rdf.r, r_between)] == pytest.approx(count, abs=0.05)
    assert np.all(rdf.total[rdf.r < 2.0] == 0)


def test_rdf_partials_of_b2_and_ideal_gas_limit():
    a = 2.9
    cfg = bulk("b2", a, repeat=3)
    rdf = radial_distribution(cfg.positions, cfg.cell, cfg.types, ["Fe", "Al"], r_max=3.2, n_bins=160)
    assert set(rdf.partial) == {"Fe-Fe", "Fe-Al", "Al-Al"}
    assert peak_positions(rdf.r, rdf.partial["Fe-Al"])[0] == pytest.approx(a * np.sqrt(3) / 2, abs=0.02)
    assert peak_positions(rdf.r, rdf.partial["Fe-Fe"])[0] == pytest.approx(a, abs=0.02)
    assert rdf.coordination["Fe-Al"][-1] == pytest.approx(8)            # 8 Al around each Fe
    assert rdf.coordination["Fe-Fe"][-1] == pytest.approx(6)
    # uncorrelated points: g → 1
    rng = np.random.default_rng(0)
    box = np.eye(3) * 12.0
    gas = rng.uniform(0, 12.0, (20, 400, 3))
    g = radial_distribution(gas, box, np.zeros(400, int), ["X"], r_max=5.0, n_bins=10).total
    np.testing.assert_allclose(g[3:], 1.0, atol=0.03)


# ================================================================== MSD
def test_msd_of_a_random_walk_gives_its_diffusion_coefficient_and_unwraps():
    rng = np.random.default_rng(4)
    sigma, dt = 0.05, 10.0                            # Å per component per frame, fs
    steps = rng.normal(0, sigma, (4000, 50, 3))
    pos = np.cumsum(steps, axis=0)
    msd = mean_squared_displacement(pos, dt, np.zeros(50, int), ["Ar"], max_lag=200, drift=True)
    # ⟨Δr²⟩ = 3σ²k exactly in expectation; D = σ²/(2Δt)
    np.testing.assert_allclose(msd.total[1:] / (3 * sigma ** 2 * np.arange(1, 200)), 1.0, atol=0.08)
    d, d_cgs = diffusion_coefficient(msd.time_fs, msd.total)
    assert d == pytest.approx(sigma ** 2 / (2 * dt) * 1000, rel=0.1)      # Å²/ps
    assert d_cgs == pytest.approx(d * 1e-4)
    # direct average for a few lags
    for k in (1, 7, 50):
        direct = np.mean(np.sum((pos[k:] - pos[:-k]) ** 2, axis=2))
        assert msd.total[k] == pytest.approx(direct, rel=1e-9)
    # a rigid translation of everything is drift, not diffusion: removed by default
    moved = pos[:, :1, :] + np.arange(50)[None, :, None] * 0.1       # all atoms follow atom 0
    assert np.abs(mean_squared_displacement(moved, dt, np.zeros(50, int), ["Ar"]).total).max() < 1e-12
    # wrapping into a 3 Å box and unwrapping restores the path (up to a constant lattice shift)
    cell = np.eye(3) * 3.0
    wrapped = pos - np.floor(pos / 3.0) * 3.0
    restored = unwrap(wrapped, cell)
    np.testing.assert_allclose(restored - restored[0], pos - pos[0], atol=1e-9)


# ================================================================== thermo / magnetisation
def test_thermo_and_magnetisation_tables():
    scalars = {"temperature": np.array([300.0, 310.0]), "potential_energy": np.array([-10.0, -9.0]),
               "kinetic_energy": np.array([0.5, 0.6]), "pressure": np.array([1.0, 2.0]),
               "magnetization": np.array([4.0, 3.0]), "grade": np.array([np.nan, 1.5])}
    table = thermo_table([0, 10], [0.0, 10.0], scalars, n_atoms=2)
    np.testing.assert_allclose(table["total_energy_eV_per_atom"], [-4.75, -4.2])
    np.testing.assert_allclose(table["magnetization_per_atom_uB"], [2.0, 1.5])
    np.testing.assert_allclose(table["time_ps"], [0.0, 0.01])
    grades = np.array([[1.0, 2.5], [np.nan, np.nan]])
    assert thermo_table([0, 1], [0, 1], scalars, 2, nbh_grades=grades)["max_grade"][0] == 2.5

    m = np.array([[2.0, -2.0, 0.1], [2.2, 2.0, -0.1]])
    mt = magnetisation_table(m, np.array([0, 0, 1]), ["Fe", "Al"])
    np.testing.assert_allclose(mt["mean_Fe_uB"], [0.0, 2.1])
    np.testing.assert_allclose(mt["abs_mean_Fe_uB"], [2.0, 2.1])
    np.testing.assert_allclose(mt["mean_Al_uB"], [0.1, -0.1])
    np.testing.assert_allclose(mt["abs_M_uB"], [0.1, 4.1])
    mean, err = time_average(np.r_[np.ones(50), 3 * np.ones(50)], n_blocks=5)
    assert mean == 2.0 and err > 0


# ================================================================== lattice scan
def test_scan_oracle_and_potential_agree_and_pressure_is_minus_dE_dV():
    a = np.linspace(2.75, 2.95, 9)          # fe_bcc_analytic_l16 is trained for a ≲ 2.9 Å (its moment drops above)
    oracle = scan_lattice(AnalyticMagneticModel.default(), "bcc", a, ["Fe", "Al"], label="oracle")
    mtp = scan_lattice(MTPEngine(load_potential(REPO / "inputs/potentials/fe_bcc_analytic_l16.almtp")), "bcc", a,
                       ["Fe"], label="fe_bcc_analytic_l16")
    a0, e0 = oracle.equilibrium()
    assert a0 == pytest.approx(2.855, abs=0.005) and e0 == pytest.approx(-4.246, abs=0.002)
    k = int(np.argmin(np.abs(a - 2.85)))
    assert oracle.moment_mean["Fe"][k] == pytest.approx(2.25, abs=0.02)   # the model's documented moment
    assert np.all(np.diff(oracle.moment_mean["Fe"]) > 0)                     # moments grow with volume
    assert mtp.equilibrium()[0] == pytest.approx(a0, abs=0.02)
    np.testing.assert_allclose(mtp.moment_mean["Fe"][a <= 2.9], oracle.moment_mean["Fe"][a <= 2.9], atol=0.2)
    for scan in (oracle, mtp):
        assert np.all(scan.max_gradient < 1e-5)
        # P = −dE/dV along the relaxed-moment curve (envelope theorem), GPa
        dE_dV = np.gradient(scan.energy_per_atom, scan.volume_per_atom)
        np.testing.assert_allclose(scan.pressure[1:-1], -dE_dV[1:-1] * 160.21766208, atol=0.6)


# ================================================================== plots and CSV
def test_plots_are_real_pngs_with_content(tmp_path):
    t = np.linspace(0, 2, 200)
    table = {"time_ps": t, "temperature_K": 300 + 10 * np.sin(9 * t),
             "potential_energy_eV_per_atom": -4.2 + 0.01 * np.cos(9 * t),
             "total_energy_eV_per_atom": -4.16 + 0.0 * t, "pressure_GPa": 0.5 * np.sin(5 * t),
             "magnetization_per_atom_uB": 2.2 + 0.02 * np.sin(3 * t), "max_grade": 1 + 0.1 * t}
    png_ok(plots.plot_thermo(table, tmp_path / "thermo.png", "test"))
    moments = 2.2 + 0.05 * np.random.default_rng(0).normal(size=(200, 4))
    m = magnetisation_table(moments, np.array([0, 0, 1, 1]), ["Fe", "Al"], np.arange(200), t * 1000)
    png_ok(plots.plot_magnetisation(m, ["Fe", "Al"], tmp_path / "mag.png"))
    cfg = bulk("b2", 2.9, repeat=3, jitter=0.05)
    rdf = radial_distribution(cfg.positions, cfg.cell, cfg.types, ["Fe", "Al"])
    png_ok(plots.plot_rdf(rdf.r, rdf.total, rdf.partial, tmp_path / "rdf.png", markers=[2.51, 2.9]))
    freq = np.linspace(0, 20, 300)
    dos = {"Fe": np.exp(-(freq - 6) ** 2), "Al": np.exp(-(freq - 9) ** 2)}
    png_ok(plots.plot_dos(freq, dos["Fe"] + dos["Al"], dos, tmp_path / "dos.png",
                          vacf_time_fs=t * 100, vacf={"total": np.cos(t * 5) * np.exp(-t)}))
    png_ok(plots.plot_msd(t, 0.1 * t, {"Fe": 0.1 * t, "Al": 0.12 * t}, tmp_path / "msd.png"))
    a = np.linspace(2.75, 2.95, 5)
    scan = scan_lattice(AnalyticMagneticModel.default(), "bcc", a, ["Fe", "Al"], label="oracle")
    png_ok(plots.plot_scan([scan], tmp_path / "scan.png"))
    n = write_csv(tmp_path / "t.csv", {"x": np.arange(3), "y": np.array([0.5, np.nan, 2.0])}, comment="c")
    back = read_csv(tmp_path / "t.csv")
    assert n == 3 and list(back) == ["x", "y"] and back["y"][2] == 2.0 and np.isnan(back["y"][1])
