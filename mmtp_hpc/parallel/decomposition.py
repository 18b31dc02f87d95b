"""Spatial domain decomposition: a Cartesian grid of ranks over the cell, in fractional coordinates.

The cell (rows a_0, a_1, a_2) is cut along the fractional coordinates s_k = r·b_k (b_k the
reciprocal vectors, a_l·b_k = δ_lk) into ``grid[0] × grid[1] × grid[2]`` parallelepipeds;
rank ``r`` has Cartesian coordinates ``np.unravel_index(r, grid)`` (row-major, as
``MPI_Cart_create`` numbers them) and owns the atoms whose wrapped fractional coordinates
lie in ``[c_k/p_k, (c_k+1)/p_k)``. Triclinic cells need nothing special: subdomains are
slabs between lattice planes, and the distance between the planes ``s_k = const`` is
``d_k = 1/|b_k| = V/|a_l × a_m|``, so a subdomain is ``d_k/p_k`` thick along k. A cell
change (NPT) moves the subdomains with the cell; ownership is re-evaluated at every
neighbour-list rebuild.

Grid choice: ``MPI.Compute_dims(P, 3)`` (balanced factors), its factors assigned so the
most ranks go along the thickest direction; non-periodic directions get one rank. A
subdomain must be at least as thick as the halo (cutoff + skin, twice that for parallel
Monte Carlo) wherever there are two or more ranks along a direction, because ghosts are
fetched from the nearest neighbours only; otherwise :class:`GridError` names the
thickness, the halo and a grid that works.
"""

from __future__ import annotations

import math

import numpy as np

from mmtp_hpc.errors import InputError

_MARGIN = 1e-9   # fractional margin on halo windows, as in system.neighbors


class GridError(InputError):
    """The rank grid does not fit the cell (a subdomain thinner than the halo).

    Found from the cell and the grid alone, so every rank raises it at the same point: the
    command line reports it once (rank 0) and all ranks end normally, without MPI_Abort."""

    collective = True


def plane_spacings(cell: np.ndarray) -> np.ndarray:
    """d_k = 1/|b_k| (Å): distance between neighbouring lattice planes s_k = const."""
    reciprocal = np.linalg.inv(np.asarray(cell, dtype=np.float64)).T
    return 1.0 / np.linalg.norm(reciprocal, axis=1)


def compute_dims(size: int) -> list[int]:
    """Balanced factors of ``size`` in 3-D, largest first (``MPI.Compute_dims(size, 3)``)."""
    if size <= 1:
        return [1, 1, 1]
    try:
        from mpi4py import MPI
        return sorted((int(x) for x in MPI.Compute_dims(size, 3)), reverse=True)
    except ImportError:  # pragma: no cover - mpi4py is a dependency; keeps the pure function usable
        best = min(_factorizations(size), key=lambda f: (max(f) - min(f), f))
        return sorted(best, reverse=True)


def _factorizations(size: int) -> list[tuple[int, int, int]]:
    out = []
    for px in range(1, size + 1):
        if size % px:
            continue
        for py in range(1, size // px + 1):
            if (size // px) % py:
                continue
            out.append((px, py, size // (px * py)))
    return out


def feasible(grid, spacings: np.ndarray, pbc: np.ndarray, halo: float) -> bool:
    """True if every direction with ≥ 2 ranks is periodic and its subdomains are ≥ ``halo`` thick."""
    for k in range(3):
        if grid[k] > 1 and (not pbc[k] or spacings[k] / grid[k] < halo * (1.0 + 1e-12)):
            return False
    return True


def choose_grid(size: int, cell: np.ndarray, pbc: np.ndarray, halo: float,
                grid: list[int] | None = None) -> list[int]:
    """The rank grid for ``size`` ranks: ``grid`` if given (checked), else Compute_dims' factors
    with the most ranks along the thickest periodic direction."""
    pbc = np.asarray(pbc, dtype=bool)
    d = plane_spacings(_full_cell(cell, pbc))
    if grid is not None:
        grid = [int(g) for g in grid]
        if len(grid) != 3 or min(grid) < 1 or math.prod(grid) != size:
            raise GridError(f"parallel grid {grid} must be three positive integers whose product is the "
                            f"number of ranks, {size}", field="parallel.grid")
        if not feasible(grid, d, pbc, halo):
            raise GridError(_thin_message(grid, d, pbc, halo, size), field="parallel.grid")
        return grid
    dims = compute_dims(size)
    order = sorted(range(3), key=lambda k: (not pbc[k], -d[k]))   # thickest periodic first
    candidate = [1, 1, 1]
    for k, p in zip(order, dims, strict=True):
        candidate[k] = p
    if feasible(candidate, d, pbc, halo):
        return candidate
    # Compute_dims' balanced grid is too thin somewhere: any factorisation that fits
    options = [f for f in _factorizations(size) if feasible(f, d, pbc, halo)]
    if options:
        return list(min(options, key=lambda f: (sum(f[k] / d[k] for k in range(3)), f)))
    raise GridError(_thin_message(candidate, d, pbc, halo, size), field="parallel.grid")


def _thin_message(grid, d: np.ndarray, pbc: np.ndarray, halo: float, size: int) -> str:
    parts = []
    for k in range(3):
        if grid[k] > 1 and not pbc[k]:
            parts.append(f"direction {k} is not periodic and cannot be split")
        elif grid[k] > 1:
            parts.append(f"direction {k}: {d[k]:.3f} Å / {grid[k]} = {d[k] / grid[k]:.3f} Å")
    best = None
    for p in range(size, 0, -1):
        fits = [f for f in _factorizations(p) if feasible(f, d, pbc, halo)]
        if fits:
            best = (p, min(fits, key=lambda f: (sum(f[k] / d[k] for k in range(3)), f)))
            break
    hint = ""
    if best is not None:
        hint = (f"; this cell works with at most {best[0]} rank(s), e.g. grid = {list(best[1])} "
                "([parallel] grid, or mpirun -n with fewer ranks), or use a larger cell")
    return (f"subdomains thinner than the required {halo:.3f} Å (the halo, cutoff + skin; 4 × cutoff with "
            f"parallel Monte Carlo moments) with grid {list(grid)}: "
            + "; ".join(parts) + hint)


def _full_cell(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """The cell with non-periodic rows replaced by unit vectors orthogonal to the periodic ones
    (as :mod:`mmtp_hpc.system.neighbors` does for fractional coordinates)."""
    from mmtp_hpc.system.neighbors import _fractional_basis
    return _fractional_basis(np.asarray(cell, dtype=np.float64), np.asarray(pbc, dtype=bool))


class Decomposition:
    """This rank's place in the grid and the ownership rule.

    ``grid`` (3,) ranks per direction; ``coords`` (3,) this rank's grid coordinates;
    ``lo``/``hi`` (3,) its fractional bounds. Fractional coordinates come from
    :meth:`fractional` (non-periodic directions use the orthogonal completion of the cell,
    and are not wrapped).
    """

    def __init__(self, comm, cell: np.ndarray, pbc: np.ndarray, halo: float, grid: list[int] | None = None):
        self.comm = comm
        self.size = comm.Get_size()
        self.rank = comm.Get_rank()
        self.pbc = np.asarray(pbc, dtype=bool).copy()
        self.halo = float(halo)
        self.grid = np.array(choose_grid(self.size, cell, self.pbc, self.halo, grid), dtype=np.int64)
        self.coords = np.array(np.unravel_index(self.rank, tuple(self.grid)), dtype=np.int64)
        self.lo = self.coords / self.grid
        self.hi = (self.coords + 1) / self.grid
        self.set_cell(cell)

    def set_cell(self, cell: np.ndarray) -> None:
        """Adopt a (changed) cell; checks that the grid still fits (NPT)."""
        self.cell = np.array(cell, dtype=np.float64)
        self.basis = _full_cell(self.cell, self.pbc)
        self.reciprocal = np.linalg.inv(self.basis).T
        self.spacings = 1.0 / np.linalg.norm(self.reciprocal, axis=1)
        if not feasible(self.grid, self.spacings, self.pbc, self.halo):
            raise GridError(_thin_message(self.grid, self.spacings, self.pbc, self.halo, self.size)
                            + " (the cell has changed since the start)", field="parallel.grid")

    def rank_of(self, coords: np.ndarray) -> int:
        return int(np.ravel_multi_index(tuple(int(c) % int(g) for c, g in zip(coords, self.grid, strict=True)),
                                        tuple(self.grid)))

    def neighbor(self, axis: int, step: int) -> int:
        c = self.coords.copy()
        c[axis] += step
        return self.rank_of(c)

    def fractional(self, positions: np.ndarray) -> np.ndarray:
        """(N, 3) fractional coordinates of Cartesian ``positions``."""
        return np.asarray(positions, dtype=np.float64) @ self.reciprocal.T

    def wrap(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Wrapped fractional coordinates (in [0, 1) along periodic directions) and the integer
        shifts W with ``wrapped = unwrapped + W @ cell``."""
        frac = self.fractional(positions)
        shifts = np.zeros(frac.shape, dtype=np.int64)
        shifts[:, self.pbc] = -np.floor(frac[:, self.pbc]).astype(np.int64)
        frac = frac + shifts
        # floor(x) + 1 can round to exactly 1.0 for tiny negative x
        for k in np.flatnonzero(self.pbc):
            over = frac[:, k] >= 1.0
            if np.any(over):
                frac[over, k] -= 1.0
                shifts[over, k] -= 1
        return frac, shifts

    def owners(self, frac_wrapped: np.ndarray) -> np.ndarray:
        """(N,) rank owning each wrapped fractional position."""
        c = np.floor(np.asarray(frac_wrapped) * self.grid).astype(np.int64)
        c = np.clip(c, 0, self.grid - 1)   # non-periodic directions have one rank (index 0)
        return np.ravel_multi_index((c[:, 0], c[:, 1], c[:, 2]), tuple(self.grid)).astype(np.int64)

    def halo_fraction(self, width: float) -> np.ndarray:
        """(3,) the halo ``width`` (Å) in fractional units along each direction."""
        return width * np.linalg.norm(self.reciprocal, axis=1) + _MARGIN

    def describe(self) -> str:
        widths = self.spacings / self.grid
        return (f"grid {self.grid.tolist()} ({self.size} ranks), subdomains "
                + " × ".join(f"{w:.2f}" for w in widths) + f" Å (at least {self.halo:.2f} Å needed)")

