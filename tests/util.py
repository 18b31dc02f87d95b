"""Test helpers: randomised potentials (MLIP-3 template tables) and configurations."""

from __future__ import annotations

import numpy as np

from mmtp_hpc.potentials.mtp.mlip_io import read_mtp
from mmtp_hpc.potentials.mtp.parameters import MTPPotential
from mmtp_hpc.system.configuration import Configuration

from conftest import DATA


def random_potential(level: int = 8, species: int = 1, mag_size: int = 1, radial_size: int = 6,
                     seed: int = 0, rmin: float = 1.6, rcut: float = 4.2,
                     per_species_interval: bool = False, symmetric: bool = False) -> MTPPotential:
    """Tables of MLIP-3's level-`level` template with random coefficients."""
    tpl = read_mtp(DATA / "mlip3" / "templates" / f"{level:02d}.almtp")
    rng = np.random.default_rng(seed)
    magnetic = mag_size > 1
    if per_species_interval:
        mag_max = rng.uniform(2.6, 3.5, size=species)
        mag_min = -mag_max
    else:
        mag_min, mag_max = -2.5, 3.0
    pot = MTPPotential(
        species_count=species, min_dist=rmin, max_dist=rcut, radial_basis_size=radial_size,
        radial_funcs_count=tpl.radial_funcs_count, alpha_index_basic=tpl.alpha_index_basic,
        alpha_index_times=tpl.alpha_index_times, alpha_moment_mapping=tpl.alpha_moment_mapping,
        alpha_moments_count=tpl.alpha_moments_count, scaling=0.7, magnetic=magnetic,
        mag_basis_size=mag_size, mag_min=mag_min if magnetic else None,
        mag_max=mag_max if magnetic else None, symmetric=symmetric)
    pot.radial_coeffs = rng.uniform(-0.3, 0.3, size=pot.radial_shape)
    pot.species_coeffs = rng.normal(size=species)
    pot.moment_coeffs = rng.normal(scale=0.5, size=pot.n_basis)
    return pot


def random_configuration(n: int = 8, species: int = 1, seed: int = 0, magnetic: bool = True,
                         cell_size: float = 5.0, triclinic: float = 0.3, min_dist: float = 1.7,
                         pbc=(True, True, True), mag_range: tuple[float, float] = (-2.0, 2.5)) -> Configuration:
    """Random atoms in a random triclinic cell, no two closer than `min_dist`."""
    rng = np.random.default_rng(seed)
    cell = np.eye(3) * cell_size + rng.uniform(-triclinic, triclinic, size=(3, 3)) * cell_size
    positions: list[np.ndarray] = []
    while len(positions) < n:
        p = rng.uniform(0, 1, size=3) @ cell
        if all(_min_image_dist(p, q, cell) >= min_dist for q in positions):
            positions.append(p)
    return Configuration(cell=cell, positions=np.array(positions), pbc=pbc,
                         types=rng.integers(0, species, size=n),
                         magmoms=rng.uniform(*mag_range, size=n) if magnetic else None)


def _min_image_dist(p: np.ndarray, q: np.ndarray, cell: np.ndarray) -> float:
    shifts = np.array([(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)]) @ cell
    return float(np.min(np.linalg.norm(q + shifts - p, axis=1)))


def bcc(a: float = 2.8665, repeat: int = 2, species: int = 1, seed: int = 0, jitter: float = 0.05,
        moment: float | None = 2.2, vacancies: int = 0) -> Configuration:
    """A jittered bcc supercell (cubic, repeat^3 cells), random types, optional vacancies."""
    rng = np.random.default_rng(seed)
    grid = np.array([(i, j, k) for i in range(repeat) for j in range(repeat) for k in range(repeat)])
    frac = (grid[:, None, :] + np.array([[0, 0, 0], [0.5, 0.5, 0.5]])[None]).reshape(-1, 3)
    pos = frac * a + rng.normal(scale=jitter, size=frac.shape)
    if vacancies:
        keep = np.sort(rng.choice(len(pos), len(pos) - vacancies, replace=False))
        pos = pos[keep]
    n = len(pos)
    mags = None if moment is None else moment + 0.2 * rng.normal(size=n)
    return Configuration(cell=np.eye(3) * a * repeat, positions=pos,
                         types=rng.integers(0, species, size=n), magmoms=mags)
