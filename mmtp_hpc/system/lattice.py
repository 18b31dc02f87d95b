"""Build crystalline supercells (bcc, fcc, b2, sc, hcp-free cubic forms) as Configurations."""

from __future__ import annotations

import numpy as np

from mmtp_hpc.errors import InputError
from mmtp_hpc.system.configuration import Configuration

# fractional positions in the conventional cubic cell, with the sublattice of each site
BASES = {
    "sc": ([[0, 0, 0]], [0]),
    "bcc": ([[0, 0, 0], [0.5, 0.5, 0.5]], [0, 0]),
    "b2": ([[0, 0, 0], [0.5, 0.5, 0.5]], [0, 1]),
    "fcc": ([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]], [0, 0, 0, 0]),
    "l12": ([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]], [1, 0, 0, 0]),
}


def bulk(lattice: str, a: float, repeat=(1, 1, 1), sublattice_types=(0, 1), magmoms=None,
         jitter: float = 0.0, seed: int = 0) -> Configuration:
    """A cubic supercell of `lattice` with lattice parameter `a` (Å), repeated `repeat` times.

    ``sublattice_types`` maps the lattice's sublattices (b2: 0 = corner, 1 = centre) to
    potential types. ``magmoms``: None, one value, or one value per type (μB).
    ``jitter``: standard deviation (Å) of Gaussian displacements, reproducible by ``seed``.
    """
    key = lattice.lower()
    if key not in BASES:
        raise InputError(f"unknown lattice {lattice!r}; known: {', '.join(sorted(BASES))}")
    if a <= 0:
        raise InputError(f"lattice parameter must be positive, got {a}")
    rep = np.broadcast_to(np.asarray(repeat, dtype=int), (3,))
    if np.any(rep < 1):
        raise InputError(f"repeat must be >= 1 in every direction, got {list(rep)}")
    frac, sub = BASES[key]
    frac = np.asarray(frac, dtype=float)
    grid = np.array([(i, j, k) for i in range(rep[0]) for j in range(rep[1]) for k in range(rep[2])])
    positions = ((grid[:, None, :] + frac[None]) * a).reshape(-1, 3)
    types = np.tile([sublattice_types[s] for s in sub], len(grid))
    if jitter > 0:
        positions += np.random.default_rng(seed).normal(scale=jitter, size=positions.shape)
    mags = None
    if magmoms is not None:
        values = np.atleast_1d(np.asarray(magmoms, dtype=float))
        mags = np.full(len(types), values[0]) if values.size == 1 else values[types]
    return Configuration(cell=np.diag(rep * a).astype(float), positions=positions, types=types,
                         magmoms=mags)
