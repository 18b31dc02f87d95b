"""Kernels for :mod:`mmtp_hpc.system.neighbors`: periodic images (ghosts) and linked-cell pair search.

Every function takes memoryviews and writes into arrays allocated by the caller
(CONVENTIONS item 2); scratch space for the linked cells is malloc'ed and freed
here. The Python module owns validation, allocation and error messages.
"""

from libc.math cimport ceil, floor, sqrt
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc


def ghost_ranges(const double[:, ::1] frac, const double[::1] lo, const double[::1] hi,
                 const unsigned char[::1] periodic, int64_t[:, ::1] ranges) -> int:
    """Per atom and direction, the image range ``[ranges[i, 2k], ranges[i, 2k+1]]`` to keep.

    An image ``n`` along periodic direction ``k`` is kept when
    ``lo[k] <= frac[i, k] + n < hi[k]``; non-periodic directions get ``[0, 0]``.
    Returns the number of ghosts, i.e. kept images other than ``n = (0, 0, 0)``.
    """
    cdef Py_ssize_t n_atoms = frac.shape[0]
    cdef Py_ssize_t i, k
    cdef int64_t n_min, n_max, n_images, n_ghosts = 0
    cdef bint has_zero
    with nogil:
        for i in range(n_atoms):
            n_images = 1
            has_zero = True
            for k in range(3):
                if periodic[k]:
                    n_min = <int64_t>ceil(lo[k] - frac[i, k])
                    # n < hi - s  <=>  n <= ceil(hi - s) - 1
                    n_max = <int64_t>ceil(hi[k] - frac[i, k]) - 1
                else:
                    n_min = 0
                    n_max = 0
                ranges[i, 2 * k] = n_min
                ranges[i, 2 * k + 1] = n_max
                if n_max < n_min:
                    n_images = 0
                else:
                    n_images *= n_max - n_min + 1
                if n_min > 0 or n_max < 0:
                    has_zero = False
            n_ghosts += n_images - (1 if has_zero else 0)
    return n_ghosts


def fill_ghosts(const int64_t[:, ::1] ranges, int64_t n_first, int64_t[::1] image_of,
                int64_t[:, ::1] shifts) -> int:
    """Write ghosts from ``n_first`` on: image-major (n0, n1, n2 ascending), then atom index.

    Image-major order keeps the ghosts of one face contiguous when the atoms are
    spatially ordered, which helps the cache of whoever gathers neighbour data.
    Returns the index one past the last ghost written.
    """
    cdef Py_ssize_t n_atoms = ranges.shape[0]
    cdef Py_ssize_t i, k
    cdef int64_t g = n_first
    cdef int64_t lo0, hi0, lo1, hi1, lo2, hi2, n0, n1, n2
    if n_atoms == 0:
        return g
    lo0, hi0, lo1, hi1, lo2, hi2 = 0, 0, 0, 0, 0, 0
    with nogil:
        for i in range(n_atoms):
            if i == 0 or ranges[i, 0] < lo0:
                lo0 = ranges[i, 0]
            if i == 0 or ranges[i, 1] > hi0:
                hi0 = ranges[i, 1]
            if i == 0 or ranges[i, 2] < lo1:
                lo1 = ranges[i, 2]
            if i == 0 or ranges[i, 3] > hi1:
                hi1 = ranges[i, 3]
            if i == 0 or ranges[i, 4] < lo2:
                lo2 = ranges[i, 4]
            if i == 0 or ranges[i, 5] > hi2:
                hi2 = ranges[i, 5]
        for n0 in range(lo0, hi0 + 1):
            for n1 in range(lo1, hi1 + 1):
                for n2 in range(lo2, hi2 + 1):
                    if n0 == 0 and n1 == 0 and n2 == 0:
                        continue
                    for i in range(n_atoms):
                        if (ranges[i, 0] <= n0 <= ranges[i, 1]
                                and ranges[i, 2] <= n1 <= ranges[i, 3]
                                and ranges[i, 4] <= n2 <= ranges[i, 5]):
                            image_of[g] = i
                            shifts[g, 0] = n0
                            shifts[g, 1] = n1
                            shifts[g, 2] = n2
                            g += 1
    return g


def translate(const double[:, ::1] source, const int64_t[::1] index, const int64_t[:, ::1] shifts,
              const double[:, ::1] cell, double[:, ::1] out) -> None:
    """``out[g] = source[index[g]] + shifts[g] @ cell`` with one fixed summation order.

    Build and :meth:`NeighborList.update_positions` both go through here, so an
    update with unchanged positions reproduces the build bit for bit.
    """
    cdef Py_ssize_t n = out.shape[0]
    cdef Py_ssize_t g, c
    cdef int64_t j
    cdef double s0, s1, s2
    with nogil:
        for g in range(n):
            j = index[g]
            s0 = <double>shifts[g, 0]
            s1 = <double>shifts[g, 1]
            s2 = <double>shifts[g, 2]
            for c in range(3):
                out[g, c] = source[j, c] + s0 * cell[0, c] + s1 * cell[1, c] + s2 * cell[2, c]


cdef int64_t* _merge_runs(int64_t* src, int64_t* dst, int64_t* bounds, int64_t n_runs) noexcept nogil:
    """Sort ``src[bounds[0]:bounds[n_runs]]``, made of ``n_runs`` ascending runs, by pairwise merging.

    Returns whichever of ``src``/``dst`` holds the result; ``bounds`` is overwritten.
    """
    cdef int64_t r, n_new, lo, mid, hi, x, y, out, take_y
    cdef int64_t* swap
    while n_runs > 1:
        n_new = 0
        r = 0
        while r < n_runs:
            lo = bounds[r]
            mid = bounds[r + 1]
            hi = bounds[r + 2] if r + 1 < n_runs else mid
            x = lo
            y = mid
            out = lo
            # Branch-free selection: which input wins is unpredictable.
            while x < mid and y < hi:
                take_y = src[y] < src[x]
                dst[out] = src[y] if take_y else src[x]
                y += take_y
                x += 1 - take_y
                out += 1
            while x < mid:
                dst[out] = src[x]
                x += 1
                out += 1
            while y < hi:
                dst[out] = src[y]
                y += 1
                out += 1
            # Only indices <= r/2 are written, all already read.
            bounds[n_new] = lo
            n_new += 1
            r += 2
        bounds[n_new] = bounds[n_runs]
        n_runs = n_new
        swap = src
        src = dst
        dst = swap
    return src


cdef struct Grid:
    double lo[3]
    double inv_side[3]
    int64_t nb[3]
    int64_t n_bins


cdef Grid _make_grid(const double[:, ::1] pos, double radius) noexcept nogil:
    """Bins of side >= radius over the bounding box of ``pos``, so partners lie in the 27-bin stencil."""
    cdef Grid grid
    cdef int64_t n_total = pos.shape[0]
    cdef double hi[3]
    cdef double side, grow = 1.0, n_bins_f
    cdef int64_t i, k, max_bins
    for k in range(3):
        grid.lo[k] = pos[0, k]
        hi[k] = pos[0, k]
    for i in range(1, n_total):
        for k in range(3):
            if pos[i, k] < grid.lo[k]:
                grid.lo[k] = pos[i, k]
            if pos[i, k] > hi[k]:
                hi[k] = pos[i, k]
    # The relative margin guards the bin index against rounding. Sparse
    # non-periodic systems (two atoms 1 km apart) would ask for absurd grids:
    # cap the bin count by growing the side, which stays correct and only costs
    # extra distance checks.
    max_bins = 8 * n_total + 64
    while True:
        side = radius * (1.0 + 1e-9) * grow
        n_bins_f = 1.0
        for k in range(3):
            n_bins_f *= max(1.0, floor((hi[k] - grid.lo[k]) / side))
        # Decide in floating point: the integer product could overflow.
        if n_bins_f <= <double>max_bins:
            break
        grow *= 1.5
    grid.n_bins = 1
    for k in range(3):
        grid.nb[k] = <int64_t>max(1.0, floor((hi[k] - grid.lo[k]) / side))
        grid.n_bins *= grid.nb[k]
        grid.inv_side[k] = grid.nb[k] / (hi[k] - grid.lo[k]) if hi[k] > grid.lo[k] else 0.0
    return grid


cdef void _bin_atoms(const double[:, ::1] pos, Grid* grid, int64_t* bin_of, int64_t* bin_start,
                     int64_t* sorted_idx) noexcept nogil:
    """Counting sort into bins: ``sorted_idx[bin_start[b]:bin_start[b+1]]`` are the atoms of bin ``b``.

    Stable, so within a bin atoms stay in ascending index order.
    """
    cdef int64_t n_total = pos.shape[0]
    cdef int64_t i, b, bx, by, bz
    cdef int64_t* nb = grid.nb
    for b in range(grid.n_bins + 1):
        bin_start[b] = 0
    for i in range(n_total):
        bx = <int64_t>((pos[i, 0] - grid.lo[0]) * grid.inv_side[0])
        by = <int64_t>((pos[i, 1] - grid.lo[1]) * grid.inv_side[1])
        bz = <int64_t>((pos[i, 2] - grid.lo[2]) * grid.inv_side[2])
        # The maximum coordinate lands exactly on the upper edge.
        if bx >= nb[0]:
            bx = nb[0] - 1
        if by >= nb[1]:
            by = nb[1] - 1
        if bz >= nb[2]:
            bz = nb[2] - 1
        b = (bx * nb[1] + by) * nb[2] + bz
        bin_of[i] = b
        bin_start[b + 1] += 1
    for b in range(grid.n_bins):
        bin_start[b + 1] += bin_start[b]
    for i in range(n_total):
        b = bin_of[i]
        sorted_idx[bin_start[b]] = i
        bin_start[b] += 1
    # bin_start[b] now holds the end of bin b; shift back to starts.
    for b in range(grid.n_bins, 0, -1):
        bin_start[b] = bin_start[b - 1]
    bin_start[0] = 0


cdef inline void _stencil(Grid* grid, int64_t b, int64_t* box) noexcept nogil:
    """Inclusive bin ranges ``box = [x0, x1, y0, y1, z0, z1]`` around bin ``b``, clipped to the grid."""
    cdef int64_t* nb = grid.nb
    cdef int64_t coord[3]
    cdef int64_t k
    coord[2] = b % nb[2]
    coord[1] = (b // nb[2]) % nb[1]
    coord[0] = b // (nb[1] * nb[2])
    for k in range(3):
        box[2 * k] = coord[k] - 1 if coord[k] > 0 else 0
        box[2 * k + 1] = coord[k] + 1 if coord[k] + 1 < nb[k] else nb[k] - 1


cdef int64_t _max_stencil(Grid* grid, int64_t* bin_start) noexcept nogil:
    """Largest number of atoms in any 27-bin stencil: the size of the candidate buffers."""
    cdef int64_t b, ix, iy, c, n_cand, max_cand = 0
    cdef int64_t box[6]
    for b in range(grid.n_bins):
        _stencil(grid, b, box)
        n_cand = 0
        for ix in range(box[0], box[1] + 1):
            for iy in range(box[2], box[3] + 1):
                c = (ix * grid.nb[1] + iy) * grid.nb[2]
                n_cand += bin_start[c + box[5] + 1] - bin_start[c + box[4]]
        if n_cand > max_cand:
            max_cand = n_cand
    return max_cand


cdef int64_t _scan(const double[:, ::1] pos, int64_t n_local, double r2_max, Grid* grid,
                   int64_t* bin_start, int64_t* sorted_idx, int64_t* cand, int64_t* cand_tmp,
                   double* cand_xyz, int64_t* scratch, int64_t capacity, int64_t* row_begin,
                   int64_t[::1] offsets, int64_t[::1] coincident) noexcept nogil:
    """Rows of all local atoms into ``scratch`` (bin order), lengths into ``offsets[1:]``.

    Returns the number of pairs (rows are written only while it fits ``capacity``),
    or -1 with the indices in ``coincident`` when two entries coincide.

    Local atoms are visited bin by bin, not by index. All atoms of a bin share one
    candidate list (the 27-bin stencil), merged into ascending index order once
    per bin: rows then come out sorted without a per-atom sort, and the
    candidates sit contiguously in cache whatever the input order.
    """
    cdef int64_t bounds[28]
    cdef int64_t box[6]
    cdef int64_t b, c, i, j, p, q, t, ix, iy, iz, n_cand = 0, n_runs, row_start, n_pairs = 0, n_zero
    cdef int64_t* cand_sorted = cand
    cdef bint have_candidates
    cdef double xi, yi, zi, dx, dy, dz, r2
    for b in range(grid.n_bins):
        have_candidates = False
        for q in range(bin_start[b], bin_start[b + 1]):
            i = sorted_idx[q]
            if i >= n_local:
                continue
            if not have_candidates:
                have_candidates = True
                _stencil(grid, b, box)
                n_cand = 0
                n_runs = 0
                for ix in range(box[0], box[1] + 1):
                    for iy in range(box[2], box[3] + 1):
                        for iz in range(box[4], box[5] + 1):
                            c = (ix * grid.nb[1] + iy) * grid.nb[2] + iz
                            if bin_start[c + 1] == bin_start[c]:
                                continue
                            # Each bin is one ascending run.
                            bounds[n_runs] = n_cand
                            n_runs += 1
                            for p in range(bin_start[c], bin_start[c + 1]):
                                cand[n_cand] = sorted_idx[p]
                                n_cand += 1
                bounds[n_runs] = n_cand
                cand_sorted = _merge_runs(cand, cand_tmp, bounds, n_runs)
                for t in range(n_cand):
                    j = cand_sorted[t]
                    cand_xyz[3 * t] = pos[j, 0]
                    cand_xyz[3 * t + 1] = pos[j, 1]
                    cand_xyz[3 * t + 2] = pos[j, 2]
            xi = pos[i, 0]
            yi = pos[i, 1]
            zi = pos[i, 2]
            row_start = n_pairs
            if n_pairs + n_cand <= capacity:
                # Branch-free compaction: whether a candidate is inside the sphere is
                # a coin toss for the branch predictor (~15 % are), so store always
                # and advance conditionally. r2 == 0 excludes i itself; any other
                # zero distance is caught by counting zeros.
                n_zero = 0
                for t in range(n_cand):
                    dx = cand_xyz[3 * t] - xi
                    dy = cand_xyz[3 * t + 1] - yi
                    dz = cand_xyz[3 * t + 2] - zi
                    r2 = dx * dx + dy * dy + dz * dz
                    scratch[n_pairs] = cand_sorted[t]
                    n_pairs += (r2 < r2_max) & (r2 > 0.0)
                    n_zero += r2 == 0.0
                if n_zero > 1:
                    for t in range(n_cand):
                        dx = cand_xyz[3 * t] - xi
                        dy = cand_xyz[3 * t + 1] - yi
                        dz = cand_xyz[3 * t + 2] - zi
                        j = cand_sorted[t]
                        if j != i and dx * dx + dy * dy + dz * dz == 0.0:
                            coincident[0] = i
                            coincident[1] = j
                            return -1
            else:
                # Near or past the capacity: count everything, store what fits.
                for t in range(n_cand):
                    dx = cand_xyz[3 * t] - xi
                    dy = cand_xyz[3 * t + 1] - yi
                    dz = cand_xyz[3 * t + 2] - zi
                    r2 = dx * dx + dy * dy + dz * dz
                    if r2 < r2_max:
                        j = cand_sorted[t]
                        if j == i:
                            continue
                        if r2 == 0.0:
                            coincident[0] = i
                            coincident[1] = j
                            return -1
                        if n_pairs < capacity:
                            scratch[n_pairs] = j
                        n_pairs += 1
            row_begin[i] = row_start
            offsets[i + 1] = n_pairs - row_start
    return n_pairs


cdef int64_t _pairs(const double[:, ::1] pos, int64_t n_local, double radius,
                    int64_t[::1] offsets, int64_t[::1] neighbors, int64_t[::1] coincident) noexcept nogil:
    cdef int64_t n_total = pos.shape[0]
    cdef int64_t capacity = neighbors.shape[0]
    cdef int64_t i, p, q, max_cand, n_pairs = -2
    cdef Grid grid
    offsets[0] = 0
    if n_local == 0:
        return 0
    grid = _make_grid(pos, radius)
    cdef int64_t* bin_of = <int64_t*>malloc(n_total * sizeof(int64_t))
    cdef int64_t* bin_start = <int64_t*>malloc((grid.n_bins + 1) * sizeof(int64_t))
    cdef int64_t* sorted_idx = <int64_t*>malloc(n_total * sizeof(int64_t))
    # +1: malloc(0) may return NULL, which would read as out of memory.
    cdef int64_t* scratch = <int64_t*>malloc((capacity + 1) * sizeof(int64_t))
    cdef int64_t* row_begin = <int64_t*>malloc(n_local * sizeof(int64_t))
    cdef int64_t* cand = NULL
    cdef int64_t* cand_tmp = NULL
    cdef double* cand_xyz = NULL
    if not (bin_of == NULL or bin_start == NULL or sorted_idx == NULL or scratch == NULL
            or row_begin == NULL):
        _bin_atoms(pos, &grid, bin_of, bin_start, sorted_idx)
        max_cand = _max_stencil(&grid, bin_start)
        cand = <int64_t*>malloc((max_cand + 1) * sizeof(int64_t))
        cand_tmp = <int64_t*>malloc((max_cand + 1) * sizeof(int64_t))
        cand_xyz = <double*>malloc(3 * (max_cand + 1) * sizeof(double))
        if not (cand == NULL or cand_tmp == NULL or cand_xyz == NULL):
            n_pairs = _scan(pos, n_local, radius * radius, &grid, bin_start, sorted_idx, cand, cand_tmp,
                            cand_xyz, scratch, capacity, row_begin, offsets, coincident)
    if n_pairs >= 0:
        for i in range(n_local):
            offsets[i + 1] += offsets[i]
        if n_pairs <= capacity:
            # Rows from bin order into index order.
            for i in range(n_local):
                p = row_begin[i]
                for q in range(offsets[i], offsets[i + 1]):
                    neighbors[q] = scratch[p]
                    p += 1
    free(bin_of)
    free(bin_start)
    free(sorted_idx)
    free(scratch)
    free(row_begin)
    free(cand)
    free(cand_tmp)
    free(cand_xyz)
    return n_pairs


def find_pairs(const double[:, ::1] pos, int64_t n_local, double radius, int64_t[::1] offsets,
               int64_t[::1] neighbors, int64_t[::1] coincident) -> int:
    """CSR pairs ``0 < |pos[j] - pos[i]| < radius`` for ``i < n_local``, each row sorted by ``j``.

    Linked cells over the bounding box of all ``pos`` (locals then ghosts): O(N).
    ``offsets`` has ``n_local + 1`` entries. Returns the number of pairs; when that
    exceeds ``len(neighbors)``, ``neighbors`` is left unwritten and the caller
    retries with a buffer of exactly that size. Returns -1 when two entries
    coincide (their indices in ``coincident[0:2]``), -2 when out of memory.
    """
    cdef int64_t n
    with nogil:
        n = _pairs(pos, n_local, radius, offsets, neighbors, coincident)
    return n


def pair_distances(const double[:, ::1] pos, const int64_t[::1] offsets, const int64_t[::1] neighbors,
                   double[::1] out) -> None:
    """``out[p] = |pos[neighbors[p]] - pos[i]|`` for the pairs ``p`` of row ``i``."""
    cdef Py_ssize_t n_local = offsets.shape[0] - 1
    cdef Py_ssize_t i, p
    cdef int64_t j
    cdef double dx, dy, dz
    with nogil:
        for i in range(n_local):
            for p in range(offsets[i], offsets[i + 1]):
                j = neighbors[p]
                dx = pos[j, 0] - pos[i, 0]
                dy = pos[j, 1] - pos[i, 1]
                dz = pos[j, 2] - pos[i, 2]
                out[p] = sqrt(dx * dx + dy * dy + dz * dz)
