"""Bad input to the engine gets a clear error, never a silent wrong number."""

import numpy as np
import pytest
from util import bcc, random_potential

from mmtp_hpc.errors import InputError
from mmtp_hpc.potentials.mtp import reference
from mmtp_hpc.potentials.mtp.engine import MagneticRangeWarning, MTPEngine


@pytest.fixture(scope="module")
def magnetic():
    return MTPEngine(random_potential(level=8, species=2, mag_size=2, seed=1))


def test_magnetic_potential_needs_moments(magnetic):
    cfg = bcc(repeat=2, species=2, moment=None)
    with pytest.raises(InputError, match="without magnetic moments"):
        magnetic.evaluate(cfg)
    with pytest.raises(InputError, match="without magnetic moments"):
        reference.evaluate(magnetic.pot, cfg)
    # supplying them explicitly works
    out = magnetic.evaluate(cfg, np.full(len(cfg), 1.0))
    assert np.isfinite(out["energy"])


def test_wrong_species(magnetic):
    cfg = bcc(repeat=2, species=2)
    cfg.types[3] = 2
    with pytest.raises(InputError, match=r"types \[0, 1, 2\] but the potential has 2 species"):
        magnetic.evaluate(cfg)


def test_nan_position_and_moment(magnetic):
    cfg = bcc(repeat=2, species=2)
    cfg.positions[5, 1] = np.nan
    with pytest.raises(InputError, match="position of atom 5 is not finite"):
        magnetic.evaluate(cfg)
    cfg = bcc(repeat=2, species=2)
    cfg.magmoms[4] = np.inf
    with pytest.raises(InputError, match="moment of atom 4 is not finite"):
        magnetic.evaluate(cfg)


def test_moments_outside_interval_warn_but_are_not_clamped(magnetic):
    cfg = bcc(repeat=2, species=2)
    inside = magnetic.evaluate(cfg)["energy"]
    cfg.magmoms[0] = 4.0  # interval is [-2.5, 3.0]
    with pytest.warns(MagneticRangeWarning, match="atom 0: m = 4"):
        outside = magnetic.evaluate(cfg)["energy"]
    cfg.magmoms[0] = 3.0
    edge = magnetic.evaluate(cfg)["energy"]
    assert outside != edge and outside != inside  # no clamping to the interval edge


def test_untrained_potential_is_refused():
    pot = random_potential(level=8)
    pot.radial_coeffs = None
    with pytest.raises(InputError, match="untrained"):
        MTPEngine(pot)
