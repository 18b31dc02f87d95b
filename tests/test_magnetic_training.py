"""Magnetic training: the ∂E/∂m term, and the sign convention of real constrained-DFT data."""

import numpy as np
import pytest

from mmtp_hpc.io.cfg import read_cfg
from mmtp_hpc.potentials.analytic import AnalyticMagneticModel
from mmtp_hpc.potentials.mtp.basis import new_potential
from mmtp_hpc.system.lattice import bulk
from mmtp_hpc.training.fit import TrainSettings, train
from mmtp_hpc.training.report import error_report

MODEL = AnalyticMagneticModel.default()


def constrained_b2(n: int, seed: int) -> list:
    """B2 Fe–Al cells, displaced, with moments scattered around the relaxed ones (cDFT-like)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        cfg = bulk("b2", rng.uniform(2.82, 2.98), 2, sublattice_types=(0, 1))
        cfg.positions += rng.normal(scale=0.08, size=cfg.positions.shape)
        cfg.magmoms = MODEL.relax_moments(cfg) + rng.normal(scale=0.3, size=len(cfg)) * (cfg.types == 0)
        out.append(MODEL.label(cfg))
    return out


@pytest.mark.slow
def test_magnetic_gradient_term_lowers_its_error_without_hurting_e_and_f():
    """Fitting ∂E/∂m lowers its error by a large factor, and E and F stay well fitted.

    Asserted are properties of any reasonable end point of the optimisation, not where an
    800-iteration run happens to stop (that moves with NumPy/SciPy/BLAS versions and CPUs).
    Measured over training seeds 0–2 (NumPy 2.4, SciPy 1.17): the ∂E/∂m RMSE falls to
    0.011–0.034 of its value without the term (asserted: < 0.2); with the term the energy RMSE
    is 1.6–3.1 meV/atom = 0.07–0.14 of the spread of E/N in the validation data (asserted:
    < 0.3; a fresh machine stopped at 3.7 = 0.17) and the force RMSE 0.039–0.053 eV/Å =
    0.05–0.07 of the RMS force (asserted: < 0.15). The ratio E(with)/E(without) of two
    unconverged runs ranged from 0.3 to 1.15, so it is not asserted.
    """
    train_set, valid_set = constrained_b2(24, seed=1), constrained_b2(20, seed=2)
    pot = new_potential(10, 2, radial_basis_size=6, mag_basis_size=2, mag_interval=(-3, 3),
                        min_dist=1.8, max_dist=5.0, init="none")
    reports = {}
    for weight in (0.0, 0.002):
        result = train(pot, train_set, TrainSettings(max_iter=800, magnetic_weight=weight,
                                                     magnetic_interval="auto", log_every=10**6,
                                                     num_threads=1),
                       log=lambda m: None)
        with _no_warning_check():
            reports[weight] = error_report(result.potential, valid_set)
    without, with_term = reports[0.0], reports[0.002]
    energy_spread = 1000 * np.std([c.energy / len(c) for c in valid_set])          # meV/atom
    force_rms = np.sqrt(np.mean(np.concatenate([c.forces.ravel() for c in valid_set]) ** 2))
    assert with_term["magnetic_gradient"]["rmse"] < 0.2 * without["magnetic_gradient"]["rmse"]
    assert with_term["energy"]["rmse"] < 0.3 * energy_spread
    assert with_term["forces"]["rmse"] < 0.15 * force_rms


class _no_warning_check:
    """Validation moments may leave the training set's per-species interval slightly."""

    def __enter__(self):
        import warnings
        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        from mmtp_hpc.potentials.mtp.engine import MagneticRangeWarning
        warnings.simplefilter("ignore", MagneticRangeWarning)

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def test_feal_cdft_sample_signs_and_units(shared_data, tmp_path):
    """The published Fe–Al cDFT sample, end to end: the en_der sign is an explicit choice.

    Its en_der_* are documented as the magnetic force −∂E/∂m; imported with en_der_sign=-1 and
    written again (MLIP-3 convention, +∂E/∂m) the values are negated, and nothing is guessed.
    Note: the moment/en_der sign relation on the Al atoms cannot decide the convention by itself
    (an induced moment has a non-zero equilibrium m*, ∂E/∂m ≈ 2a(m − m*)), hence the option.
    """
    from mmtp_hpc.cli import main

    path = shared_data / "feal_cdft_sample" / "mtp.cfg"
    raw = read_cfg(path)
    out = tmp_path / "mlip3_sign.cfg"
    assert main(["convert", str(path), str(out), "--en-der-sign", "-1"]) == 0
    converted = read_cfg(out)
    for cfg_raw, cfg in zip(raw, converted, strict=True):
        np.testing.assert_array_equal(cfg.magnetic_gradient, -cfg_raw.magnetic_gradient)
        al = cfg.types == 0          # type 0 carries no moment in this data set (Al)
        assert np.abs(cfg.magmoms[al]).max() < 0.1 and np.abs(cfg.magmoms[~al]).min() > 1.5
        # units: eV for energies and the PlusStress virial; the pressure is a few GPa
        pressure_gpa = np.trace(cfg.virial) / 3 / cfg.volume * 160.21766208
        assert 0.1 < abs(pressure_gpa) < 50
        assert -2400 < cfg.energy / len(cfg) < -2100   # absolute (PAW) energies per atom, eV
        # ∂E/∂m of a few tenths of eV/μB at most, as for constrained moments near equilibrium
        assert np.abs(cfg.magnetic_gradient).max() < 1.0
