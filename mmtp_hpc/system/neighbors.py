"""Neighbour lists: for each local atom, every atom or periodic image within ``cutoff + skin``.

Layout (the one the MTP kernels consume): entries ``0 .. n_local-1`` are the
configuration's own atoms in input order, wrapped into the cell along periodic
directions; entries ``n_local .. n_total-1`` are *ghosts*, explicit periodic
images of local atoms. Neighbours are stored in CSR form and index into this
combined array, so a kernel never deals with shifts or minimum images, and the
same kernels will run unchanged on MPI ghost layers built by ``parallel/halo``.

Ghost generation (serial). With ``b_k`` the reciprocal vectors (``a_l·b_k = δ_lk``)
the planes ``s_k = const`` are ``d_k = 1/|b_k| = V/|a_l × a_m|`` apart, so an
image with fractional coordinate ``s_k < -δ_k`` or ``s_k >= 1 + δ_k`` with
``δ_k = (cutoff + skin)/d_k`` is farther than ``cutoff + skin`` from every atom
inside the cell. Ghosts are exactly the images inside
``[-δ_k, 1 + δ_k)`` along every periodic direction (plus a 1e-9 margin against
rounding), which covers cells much smaller than the cutoff (``ceil(δ_k)``
layers on each side). Non-periodic directions get no images and no wrapping;
their cell rows are ignored and replaced, for fractional coordinates only, by
unit vectors orthogonal to the periodic rows (so a zero row is fine).

Pair search: linked cells in Cython (``_neighbors.PairSearch``), O(N), each
row sorted by neighbour index so that sums over neighbours are reproducible
bit for bit. Bins of about ``radius / 2`` (x, y) by ``radius / 4`` (z), searched
column by column, so that few candidates lie beyond the radius; rows come out
sorted without sorting (see ``PairSearch``). Pairs satisfy
``0 < r < cutoff + skin`` (strict); two distinct entries at ``r == 0`` raise
:class:`~mmtp_hpc.errors.InputError`.

Verlet skin: between rebuilds :meth:`NeighborList.update_positions` moves
locals and ghosts without changing the pairs; rebuild once
:meth:`NeighborList.max_displacement` exceeds ``skin / 2``.

:func:`brute_force_neighbors` is the plain NumPy reference the kernels are
tested against (CONVENTIONS item 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mmtp_hpc.errors import InputError
from mmtp_hpc.system import _neighbors

# Fractional margin added to the ghost window so that rounding in the wrapped
# coordinates can never drop an image that is within the radius; extra ghosts
# outside the radius only cost memory.
_FRACTIONAL_MARGIN = 1e-9
# A row of the reference: (local j, lattice shift S relative to the input positions).
PairKey = tuple[int, tuple[int, int, int]]

# Refuse ghost layers that would not fit in memory anyway (a degenerate cell).
_MAX_GHOSTS = 200_000_000
# The pair search indexes entries (locals + ghosts) with 32-bit integers internally.
_MAX_ENTRIES = 2**31 - 1


@dataclass(eq=False)
class NeighborList:
    """Local atoms + ghosts and, per local atom, the entries within ``cutoff + skin``.

    Attributes (``n_total = n_local + number of ghosts``):

    - ``n_local``: atoms ``0 .. n_local-1`` are the input atoms, in input order.
    - ``positions`` (n_total, 3) float64 Å: locals (wrapped along periodic
      directions) then ghosts.
    - ``image_of`` (n_total,) int64: the local atom each entry is a copy of
      (``image_of[i] == i`` for locals).
    - ``shifts`` (n_total, 3) int64: lattice translation of each entry relative to
      the *wrapped* local atom, ``positions[g] == positions[image_of[g]] + shifts[g] @ cell``
      (zero for locals and along non-periodic directions).
    - ``offsets`` (n_local + 1,) int64 CSR row pointers into ``neighbors``.
    - ``neighbors`` (n_pairs,) int64 indices into ``[0, n_total)``: all ``j != i``
      with ``0 < |positions[j] - positions[i]| < cutoff + skin``, ascending within
      each row. An atom's own periodic images are neighbours.
    - ``cutoff``, ``skin`` Å; ``cell`` (3, 3) Å rows = lattice vectors; ``pbc`` (3,) bool.
    - ``wrap_shifts`` (n_local, 3) int64: ``positions[i] == input_positions[i] + wrap_shifts[i] @ cell``.
    - ``reference_positions`` (n_local, 3) float64 Å: the unwrapped input
      positions at build time, the origin of :meth:`max_displacement`.
    """

    n_local: int
    positions: np.ndarray
    image_of: np.ndarray
    shifts: np.ndarray
    offsets: np.ndarray
    neighbors: np.ndarray
    cutoff: float
    skin: float
    cell: np.ndarray
    pbc: np.ndarray
    wrap_shifts: np.ndarray
    reference_positions: np.ndarray

    @property
    def n_total(self) -> int:
        """Number of entries, locals plus ghosts."""
        return int(self.positions.shape[0])

    @property
    def n_ghosts(self) -> int:
        return self.n_total - self.n_local

    @property
    def n_pairs(self) -> int:
        """Number of (i, j) pairs stored, each unordered pair of locals counted twice."""
        return int(self.neighbors.shape[0])

    @property
    def neighbors_mean(self) -> float:
        """Mean number of neighbours per local atom (0 for an empty list)."""
        return self.n_pairs / self.n_local if self.n_local else 0.0

    @property
    def radius(self) -> float:
        """``cutoff + skin``, the search radius."""
        return self.cutoff + self.skin

    def update_positions(self, positions_local: np.ndarray) -> None:
        """Move locals and ghosts to new unwrapped positions, in place, keeping the pairs.

        Locals are shifted by the build-time ``wrap_shifts`` (not re-wrapped), so an
        atom that drifts across a face stays a little outside the cell and every
        ghost stays the same image; the pair list remains valid while
        :meth:`max_displacement` ``<= skin / 2``.
        """
        positions_local = _as_positions(positions_local)
        if positions_local.shape[0] != self.n_local:
            raise InputError(f"expected {self.n_local} positions, got {positions_local.shape[0]}",
                             field="positions")
        identity = self.image_of[: self.n_local]
        _neighbors.translate(positions_local, identity, self.wrap_shifts, self.cell,
                             self.positions[: self.n_local])
        _neighbors.translate(self.positions, self.image_of[self.n_local:], self.shifts[self.n_local:],
                             self.cell, self.positions[self.n_local:])

    def max_displacement(self, positions_local: np.ndarray) -> float:
        """Largest distance (Å) of any local atom from where it was at build time."""
        positions_local = _as_positions(positions_local)
        if positions_local.shape[0] != self.n_local:
            raise InputError(f"expected {self.n_local} positions, got {positions_local.shape[0]}",
                             field="positions")
        if self.n_local == 0:
            return 0.0
        delta = positions_local - self.reference_positions
        return float(np.sqrt(np.max(np.einsum("ij,ij->i", delta, delta))))

    def needs_rebuild(self, positions_local: np.ndarray) -> bool:
        """The Verlet criterion: some atom moved more than ``skin / 2`` since the build."""
        return self.max_displacement(positions_local) > 0.5 * self.skin

    def pair_centers(self) -> np.ndarray:
        """(n_pairs,) int64: the local atom ``i`` of every pair, row by row."""
        return np.repeat(np.arange(self.n_local, dtype=np.int64), np.diff(self.offsets))

    def pair_vectors(self) -> np.ndarray:
        """(n_pairs, 3) Å: ``positions[j] - positions[i]`` for every pair."""
        return self.positions[self.neighbors] - self.positions[self.pair_centers()]

    def pair_distances(self) -> np.ndarray:
        """(n_pairs,) Å: ``|positions[j] - positions[i]|`` for every pair."""
        out = np.empty(self.n_pairs, dtype=np.float64)
        _neighbors.pair_distances(self.positions, self.offsets, self.neighbors, out)
        return out

    def ijS(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pairs as ASE's ``neighbor_list('ijS')``: local ``i``, local ``j`` and shift ``S``.

        ``S`` is relative to the *input* positions:
        ``input[j] - input[i] + S @ cell`` is the pair vector.
        """
        i = self.pair_centers()
        j = self.image_of[self.neighbors]
        shift = self.shifts[self.neighbors] + self.wrap_shifts[j] - self.wrap_shifts[i]
        return i, j, shift


# an unwrapped coordinate this many cells away means broken input (wrapping it would lose all
# precision); MD moves an atom by far less than one cell per neighbour-list build
_MAX_CELLS_AWAY = 1.0e6


def build_neighbor_list(cell: np.ndarray, pbc: np.ndarray | bool | tuple[bool, bool, bool],
                        positions: np.ndarray, cutoff: float, skin: float = 0.0) -> NeighborList:
    """Wrap, generate ghosts and find all pairs closer than ``cutoff + skin``.

    ``cell`` (3, 3) Å rows = lattice vectors (rows of non-periodic directions are
    ignored and may be zero); ``pbc`` (3,) bool or one bool; ``positions``
    (N, 3) Å Cartesian, anywhere (outside the cell is fine). Raises
    :class:`~mmtp_hpc.errors.InputError` on bad shapes or values, linearly
    dependent periodic cell vectors, or two atoms at the same point (also
    through periodicity).
    """
    cell = _as_cell(cell)
    pbc_arr = _as_pbc(pbc)
    positions = _as_positions(positions)
    cutoff = float(cutoff)
    skin = float(skin)
    if not (math.isfinite(cutoff) and cutoff > 0.0):
        raise InputError(f"must be a positive finite number, got {cutoff}", field="cutoff")
    if not (math.isfinite(skin) and skin >= 0.0):
        raise InputError(f"must be a finite number >= 0, got {skin}", field="skin")
    radius = cutoff + skin
    n_local = positions.shape[0]

    basis = _fractional_basis(cell, pbc_arr)
    # Rows of the inverse transpose are the reciprocal vectors b_k; |b_k| = 1/d_k.
    reciprocal = np.linalg.inv(basis).T
    frac = positions @ reciprocal.T
    far = np.abs(frac[:, pbc_arr]).max(axis=1) if n_local and pbc_arr.any() else np.zeros(0)
    if len(far) and far.max() > _MAX_CELLS_AWAY:
        k = int(np.argmax(far))
        raise InputError(f"atom {k} at {positions[k].tolist()} Å is {far[k]:.3g} cells away from the cell: "
                         "the coordinates are not physical (blown-up dynamics or a damaged file)",
                         field="positions")
    lo = np.empty(3)
    hi = np.empty(3)
    for k, row in enumerate(reciprocal.tolist()):
        delta = radius * math.sqrt(row[0] * row[0] + row[1] * row[1] + row[2] * row[2]) + _FRACTIONAL_MARGIN
        lo[k] = -delta
        hi[k] = 1.0 + delta
    # images of one atom, at most: a cutoff far beyond the cell (a damaged potential) would
    # overflow the integer image ranges; no atom may need more images than a whole run may hold
    per_atom = math.prod(2.0 * (float(hi[k]) - 1.0) + 3.0 for k in range(3) if pbc_arr[k])
    if per_atom > _MAX_GHOSTS:
        raise InputError(f"cutoff + skin = {radius:g} Å needs about {per_atom:.3g} periodic images of each "
                         "atom; the cell is too thin for this cutoff", field="cell")
    wrap_shifts = np.empty((n_local, 3), dtype=np.int64)
    ranges = np.empty((n_local, 6), dtype=np.int64)
    n_ghosts = _neighbors.ghost_ranges(frac, lo, hi, pbc_arr.view(np.uint8), wrap_shifts, ranges)
    if n_ghosts > _MAX_GHOSTS:
        raise InputError(f"cutoff + skin = {radius} Å needs {n_ghosts} periodic images; "
                         "the cell is too thin for this cutoff", field="cell")
    n_total = n_local + n_ghosts

    image_of = np.empty(n_total, dtype=np.int64)
    shifts = np.empty((n_total, 3), dtype=np.int64)
    end = _neighbors.fill_ghosts(ranges, n_local, image_of, shifts)
    if end == -1:
        raise MemoryError("periodic images: out of memory")
    if end != n_total:
        raise RuntimeError(f"ghost generation wrote {end - n_local} ghosts, counted {n_ghosts}")

    all_positions = np.empty((n_total, 3), dtype=np.float64)
    _neighbors.translate(positions, image_of[:n_local], wrap_shifts, cell, all_positions[:n_local])
    _neighbors.translate(all_positions, image_of[n_local:], shifts[n_local:], cell, all_positions[n_local:])

    offsets, neighbors = _search(all_positions, n_local, radius, image_of, shifts)
    return NeighborList(n_local=n_local, positions=all_positions, image_of=image_of, shifts=shifts,
                        offsets=offsets, neighbors=neighbors, cutoff=cutoff, skin=skin, cell=cell,
                        pbc=pbc_arr, wrap_shifts=wrap_shifts, reference_positions=positions.copy())


def find_pairs(positions: np.ndarray, n_local: int, radius: float, *,
               image_of: np.ndarray | None = None,
               shifts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """CSR pairs ``0 < |positions[j] - positions[i]| < radius`` for the first ``n_local`` entries.

    ``positions`` (n_total, 3) Å holds locals then explicit ghosts (serial images
    or an MPI halo). Returns ``offsets`` (n_local + 1,) int64 and ``neighbors``
    (n_pairs,) int64, ascending within each row. ``image_of``/``shifts`` only
    improve the error message when two entries coincide.
    """
    positions = _as_positions(positions)
    radius = float(radius)
    if not (math.isfinite(radius) and radius > 0.0):
        raise InputError(f"must be a positive finite number, got {radius}", field="radius")
    n_local = int(n_local)
    if not 0 <= n_local <= positions.shape[0]:
        raise InputError(f"n_local = {n_local} outside [0, {positions.shape[0]}]", field="n_local")
    return _search(positions, n_local, radius, image_of, shifts)


def _search(positions: np.ndarray, n_local: int, radius: float, image_of: np.ndarray | None,
            shifts: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`find_pairs` on validated arguments."""
    if positions.shape[0] > _MAX_ENTRIES:
        raise InputError(f"{positions.shape[0]} entries (atoms and periodic images) exceed the "
                         f"neighbour search's limit of {_MAX_ENTRIES}", field="positions")
    offsets = np.empty(n_local + 1, dtype=np.int64)
    coincident = np.full(2, -1, dtype=np.int64)
    search = _neighbors.PairSearch(positions, n_local, radius, offsets, coincident)
    if search.status == -1:
        raise InputError(_coincident_message(positions, coincident, image_of, shifts), field="positions")
    if search.status != 0:
        raise MemoryError("neighbour search: out of memory for the linked cells")
    neighbors = np.empty(search.n_pairs, dtype=np.int64)
    search.fill(offsets, neighbors)
    return offsets, neighbors


def min_distance(nl: NeighborList) -> tuple[float, int, int]:
    """Shortest pair distance (Å) and its pair ``(i, j)``, ``j`` an index into ``nl.positions``.

    ``nl.image_of[j]`` names the local atom; ``(inf, -1, -1)`` when there are no pairs.
    Used to reject configurations with overlapping atoms.
    """
    if nl.n_pairs == 0:
        return math.inf, -1, -1
    distances = nl.pair_distances()
    p = int(np.argmin(distances))
    i = int(np.searchsorted(nl.offsets, p, side="right") - 1)
    return float(distances[p]), i, int(nl.neighbors[p])


def brute_force_neighbors(cell: np.ndarray, pbc: np.ndarray | bool | tuple[bool, bool, bool],
                          positions: np.ndarray, cutoff: float) -> list[list[PairKey]]:
    """Reference: for each atom ``i`` the sorted ``(j, (S0, S1, S2))`` with ``0 < r < cutoff``.

    ``r = |positions[j] - positions[i] + S @ cell|`` with the *input* positions
    (ASE's ``'ijS'`` convention). O(N² × images), plain NumPy, for tests only:
    for each pair the shift range along a periodic direction follows from
    ``|s_j - s_i + S_k| < cutoff |b_k|`` (``b_k`` reciprocal vector).
    """
    cell = _as_cell(cell)
    pbc_arr = _as_pbc(pbc)
    positions = _as_positions(positions)
    n = positions.shape[0]
    basis = _fractional_basis(cell, pbc_arr)
    reciprocal = np.linalg.inv(basis).T
    frac = positions @ reciprocal.T
    reach = cutoff * np.linalg.norm(reciprocal, axis=1)
    result: list[list[PairKey]] = []
    for i in range(n):
        found: list[PairKey] = []
        for j in range(n):
            ds = frac[j] - frac[i]
            axes = []
            for k in range(3):
                if pbc_arr[k]:
                    axes.append(np.arange(math.floor(-ds[k] - reach[k]) - 1,
                                          math.ceil(-ds[k] + reach[k]) + 2, dtype=np.int64))
                else:
                    axes.append(np.zeros(1, dtype=np.int64))
            grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
            vectors = positions[j] - positions[i] + grid @ cell
            r2 = np.einsum("ij,ij->i", vectors, vectors)
            keep = (r2 < cutoff * cutoff) & (r2 > 0.0)
            found.extend((j, (int(s[0]), int(s[1]), int(s[2]))) for s in grid[keep])
        result.append(sorted(found))
    return result


def _as_positions(positions: np.ndarray) -> np.ndarray:
    arr = np.ascontiguousarray(positions, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise InputError(f"expected shape (N, 3), got {arr.shape}", field="positions")
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.all(np.isfinite(arr), axis=1))[0])
        raise InputError(f"atom {bad} has a non-finite position {arr[bad].tolist()}", field="positions")
    return arr


def _as_pbc(pbc: np.ndarray | bool | tuple[bool, bool, bool]) -> np.ndarray:
    arr = np.array(pbc, dtype=bool)
    if arr.ndim == 0:
        arr = np.full(3, bool(arr))
    if arr.shape != (3,):
        raise InputError(f"expected one bool or three, got shape {arr.shape}", field="pbc")
    return arr


def _as_cell(cell: np.ndarray) -> np.ndarray:
    arr = np.array(cell, dtype=np.float64)
    if arr.shape != (3, 3):
        raise InputError(f"expected a (3, 3) cell, got shape {arr.shape}", field="cell")
    # Even rows of open directions enter positions as 0 * row, which a NaN would poison.
    if not np.all(np.isfinite(arr)):
        raise InputError(f"cell must be finite, got {arr.tolist()}", field="cell")
    return arr


def _fractional_basis(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Periodic cell rows, completed by orthonormal rows for the non-periodic directions.

    Orthogonal completion makes the interplanar distances of the periodic
    directions as large as they can be (fewest ghost layers) and makes the
    user's rows for non-periodic directions irrelevant.
    """
    basis = cell.copy()
    periodic = np.flatnonzero(pbc)
    if periodic.size < 3:
        open_axes = np.flatnonzero(~pbc)
        if periodic.size:
            # Orthonormal complement of span(periodic rows) via SVD.
            _, singular, vt = np.linalg.svd(cell[periodic])
            scale = max(float(singular[0]), 1e-300)
            if singular[-1] <= 1e-10 * scale:
                raise InputError(f"periodic cell vectors {cell[periodic].tolist()} are linearly dependent",
                                 field="cell")
            complement = vt[periodic.size:]
        else:
            complement = np.eye(3)
        basis[open_axes] = complement
    # 3x3 arithmetic on Python floats: NumPy's per-call overhead would dominate.
    a, b, c = basis.tolist()
    lengths = [math.sqrt(r[0] * r[0] + r[1] * r[1] + r[2] * r[2]) for r in (a, b, c)]
    det = abs(a[0] * (b[1] * c[2] - b[2] * c[1]) - a[1] * (b[0] * c[2] - b[2] * c[0])
              + a[2] * (b[0] * c[1] - b[1] * c[0]))
    if not (all(math.isfinite(x) for x in lengths) and math.isfinite(det)):
        raise InputError(f"cell vectors {cell.tolist()} are too large to compute with", field="cell")
    if not min(lengths) > 0.0 or det <= 1e-10 * lengths[0] * lengths[1] * lengths[2]:
        raise InputError(f"periodic cell vectors {cell[periodic].tolist()} are degenerate", field="cell")
    return basis


def _coincident_message(positions: np.ndarray, pair: np.ndarray, image_of: np.ndarray | None,
                        shifts: np.ndarray | None) -> str:
    i, j = int(pair[0]), int(pair[1])
    where = positions[i].tolist()
    if image_of is not None and shifts is not None:
        jj = int(image_of[j])
        s = shifts[j].tolist()
        image = "" if not any(s) else f" (its periodic image shifted by {s} lattice vectors)"
        return f"atoms {i} and {jj}{image} coincide at {where} Å; the potential is singular there"
    return f"entries {i} and {j} coincide at {where} Å; the potential is singular there"
