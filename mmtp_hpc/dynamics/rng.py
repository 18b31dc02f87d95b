"""Counter-based random streams: every random number is a pure function of its key.

A number is addressed by ``(seed, purpose, step, atom id, block)`` and computed with the
Philox4x32-10 bijection (Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy
as 1, 2, 3", SC'11), implemented here with NumPy ``uint64`` arithmetic on arrays of
atoms. Consequences:

- There is no generator state to save: a checkpoint stores the seed and the step counter
  and a restart draws exactly the same numbers (bit-identical continuation).
- The numbers an atom gets do not depend on which MPI rank owns it or in which order
  atoms are visited, so results will not depend on the rank count (spec §6).

Layout of one Philox block (four 32-bit counter words, two key words)::

    key     = (seed mod 2³², seed div 2³²)
    counter = (atom id, step mod 2³², (step div 2³²) mod 2¹⁶ | purpose · 2¹⁶, block)

Global (not per-atom) draws, such as the stochastic velocity-rescaling thermostat or the
barostat noise, use the reserved atom id :data:`GLOBAL_ID`. Each block gives two
doubles with 53 random bits in the open interval (0, 1); normals come from the
Box–Muller transform of such a pair.
"""

from __future__ import annotations

import math

import numpy as np

_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = 0x9E3779B9
_W1 = 0xBB67AE85
_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)

GLOBAL_ID = 0xFFFFFFFF
"""Atom id reserved for draws that belong to the whole system."""


class Purpose:
    """Purpose codes: independent streams for each use of randomness (16 bits)."""

    VELOCITY_INIT = 1
    LANGEVIN = 2
    CSVR = 3
    BAROSTAT = 4
    MOMENT_LANGEVIN = 5
    MC_ORDER = 6
    MC_MOVE = 7
    COMPOSITION = 8
    JITTER = 9
    CSVR_GAMMA = 10


def philox4x32(counter: tuple, key: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Philox4x32-10 on arrays: ``counter`` 4 arrays (or ints) < 2³², ``key`` 2 ints < 2³².

    Returns the four 32-bit output words (as uint64 arrays). Random123's known-answer
    vectors are reproduced (tests/test_md_rng.py).
    """
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) & _MASK32 for c in counter)
    k0, k1 = int(key[0]) & 0xFFFFFFFF, int(key[1]) & 0xFFFFFFFF
    for _ in range(10):
        p0 = _M0 * c0
        p1 = _M1 * c2
        c0, c1, c2, c3 = ((p1 >> _SHIFT32) ^ c1 ^ np.uint64(k0), p1 & _MASK32,
                          (p0 >> _SHIFT32) ^ c3 ^ np.uint64(k1), p0 & _MASK32)
        k0 = (k0 + _W0) & 0xFFFFFFFF
        k1 = (k1 + _W1) & 0xFFFFFFFF
    return c0, c1, c2, c3


def _doubles(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """53-bit doubles strictly inside (0, 1) from two 32-bit words."""
    a = (hi >> np.uint64(5)).astype(np.float64)   # 27 bits
    b = (lo >> np.uint64(6)).astype(np.float64)   # 26 bits
    return (a * 67108864.0 + b + 0.5) * (1.0 / 9007199254740992.0)


class Streams:
    """Counter-based random numbers for one seed.

    ``uniform(purpose, step, ids, n)`` returns an array (len(ids), n) whose row k
    depends only on (seed, purpose, step, ids[k]); the same call always returns the
    same numbers.
    """

    def __init__(self, seed: int):
        seed = int(seed)
        if not 0 <= seed < 2 ** 64:
            raise ValueError(f"seed must be in [0, 2^64), got {seed}")
        self.seed = seed
        self._key = (seed & 0xFFFFFFFF, seed >> 32)

    def _counters(self, purpose: int, step: int, ids: np.ndarray, blocks: int):
        step = int(step)
        if step < 0 or step >= 2 ** 48:
            raise ValueError(f"step {step} outside [0, 2^48)")
        ids = np.asarray(ids, dtype=np.uint64).reshape(-1, 1)
        c0 = np.broadcast_to(ids, (ids.shape[0], blocks))
        c1 = np.uint64(step & 0xFFFFFFFF)
        c2 = np.uint64(((step >> 32) & 0xFFFF) | ((int(purpose) & 0xFFFF) << 16))
        c3 = np.arange(blocks, dtype=np.uint64)[None, :]
        return c0, c1, c2, c3

    def uniform(self, purpose: int, step: int, ids: np.ndarray, n: int) -> np.ndarray:
        """(len(ids), n) doubles in (0, 1)."""
        blocks = (n + 1) // 2
        w = philox4x32(self._counters(purpose, step, ids, blocks), self._key)
        u = np.empty((len(np.atleast_1d(ids)), 2 * blocks))
        u[:, 0::2] = _doubles(w[0], w[1])
        u[:, 1::2] = _doubles(w[2], w[3])
        return u[:, :n]

    def normal(self, purpose: int, step: int, ids: np.ndarray, n: int) -> np.ndarray:
        """(len(ids), n) standard normals (Box–Muller on pairs of uniforms)."""
        blocks = (n + 1) // 2
        w = philox4x32(self._counters(purpose, step, ids, blocks), self._key)
        u1 = _doubles(w[0], w[1])
        u2 = _doubles(w[2], w[3])
        radius = np.sqrt(-2.0 * np.log(u1))
        angle = 2.0 * math.pi * u2
        z = np.empty((u1.shape[0], 2 * blocks))
        z[:, 0::2] = radius * np.cos(angle)
        z[:, 1::2] = radius * np.sin(angle)
        return z[:, :n]

    def global_uniform(self, purpose: int, step: int, n: int) -> np.ndarray:
        return self.uniform(purpose, step, np.array([GLOBAL_ID]), n)[0]

    def global_normal(self, purpose: int, step: int, n: int) -> np.ndarray:
        return self.normal(purpose, step, np.array([GLOBAL_ID]), n)[0]

    def _global_doubles(self, purpose: int, step: int, first_block: int, n_blocks: int) -> np.ndarray:
        """(n_blocks, 2) doubles in (0, 1) of blocks first_block … of the global stream."""
        c0, c1, c2, _ = self._counters(purpose, step, np.array([GLOBAL_ID]), 1)
        c3 = np.arange(first_block, first_block + n_blocks, dtype=np.uint64)
        w = philox4x32((c0[0], c1, c2, c3), self._key)
        return np.stack([_doubles(w[0], w[1]), _doubles(w[2], w[3])], axis=1)

    def global_gamma(self, purpose: int, step: int, shape: float) -> float:
        """One Gamma(shape, 1) variate from the global stream (Marsaglia & Tsang, 2000).

        Candidate t uses blocks 2t (a Box–Muller normal) and 2t + 1 (the acceptance
        uniform, and for shape < 1 the uniform of Gamma(a) = Gamma(a + 1) · U^(1/a)),
        so the result is a deterministic function of (seed, purpose, step).
        """
        if not shape > 0:
            raise ValueError(f"gamma shape must be positive, got {shape}")
        boost = shape < 1.0
        a = shape + 1.0 if boost else shape
        d = a - 1.0 / 3.0
        c = 1.0 / math.sqrt(9.0 * d)
        chunk = 8
        t = 0
        while True:
            u = self._global_doubles(purpose, step, 2 * t, 2 * chunk)
            for k in range(chunk):
                u1, u2 = u[2 * k]
                x = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)
                v = (1.0 + c * x) ** 3
                if v > 0.0 and math.log(u[2 * k + 1, 0]) < 0.5 * x * x + d - d * v + d * math.log(v):
                    g = d * v
                    if boost:
                        g *= u[2 * k + 1, 1] ** (1.0 / shape)
                    return g
            t += chunk
