"""Counter-based random streams: Random123 known answers, keying, distributions."""

import numpy as np
import pytest

from mmtp_hpc.dynamics.rng import GLOBAL_ID, Purpose, Streams, philox4x32

# Random123 tests/kat_vectors for philox4x32_10
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_philox_known_answers(counter, key, expected):
    assert tuple(int(w) for w in philox4x32(counter, key)) == expected


def test_streams_keyed_by_atom_not_by_order_or_subset():
    s = Streams(2024)
    ids = np.arange(1, 101)
    full = s.normal(Purpose.LANGEVIN, 17, ids, 3)
    perm = np.random.default_rng(0).permutation(100)
    # a rank owning only some atoms, in another order, draws the same numbers for them
    assert np.array_equal(s.normal(Purpose.LANGEVIN, 17, ids[perm[:30]], 3), full[perm[:30]])
    # other step, purpose or seed: different numbers
    for other in (s.normal(Purpose.LANGEVIN, 18, ids, 3), s.normal(Purpose.CSVR, 17, ids, 3),
                  Streams(2025).normal(Purpose.LANGEVIN, 17, ids, 3)):
        assert not np.any(other == full)
    # asking for more numbers extends, never changes, the first ones
    assert np.array_equal(s.uniform(Purpose.MC_MOVE, 5, ids, 7)[:, :3], s.uniform(Purpose.MC_MOVE, 5, ids, 3))


def test_distributions():
    s = Streams(7)
    z = s.normal(Purpose.VELOCITY_INIT, 3, np.arange(200_000), 2)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1.0) < 0.01
    assert abs(np.corrcoef(z[:, 0], z[:, 1])[0, 1]) < 0.01
    # kurtosis of a normal is 3
    assert abs(np.mean(z ** 4) - 3.0) < 0.05
    u = s.uniform(Purpose.MC_MOVE, 3, np.arange(200_000), 1)[:, 0]
    assert u.min() > 0.0 and u.max() < 1.0
    hist, _ = np.histogram(u, bins=20, range=(0, 1))
    expected = len(u) / 20
    chi2 = float(np.sum((hist - expected) ** 2 / expected))
    assert chi2 < 45.0   # 19 degrees of freedom, p ≈ 1e-3


@pytest.mark.parametrize("shape", [0.4, 1.0, 2.5, 60.0])
def test_global_gamma_moments(shape):
    s = Streams(99)
    n = 4000
    g = np.array([s.global_gamma(Purpose.CSVR_GAMMA, k, shape) for k in range(n)])
    # Gamma(k, 1): mean k, variance k (excess kurtosis 6/k sets the error of the variance)
    assert abs(g.mean() - shape) < 4 * np.sqrt(shape / n)
    assert abs(g.var() / shape - 1.0) < 4 * np.sqrt((2 + 6 / shape) / n)
    assert s.global_gamma(Purpose.CSVR_GAMMA, 5, shape) == g[5]   # deterministic


def test_global_stream_is_separate_from_atoms():
    s = Streams(1)
    assert np.array_equal(s.global_normal(Purpose.BAROSTAT, 4, 3),
                          s.normal(Purpose.BAROSTAT, 4, np.array([GLOBAL_ID]), 3)[0])
    with pytest.raises(ValueError):
        Streams(-1)
