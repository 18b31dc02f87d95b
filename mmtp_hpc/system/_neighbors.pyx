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


cdef inline void _insertion_sort(int64_t* a, int64_t n) noexcept nogil:
    # Rows are short (tens of entries), where insertion sort beats anything fancier.
    cdef int64_t i, j, v
    for i in range(1, n):
        v = a[i]
        j = i - 1
        while j >= 0 and a[j] > v:
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = v


cdef int64_t _pairs(const double[:, ::1] pos, int64_t n_local, double radius,
                    int64_t[::1] offsets, int64_t[::1] neighbors, int64_t[::1] coincident) noexcept nogil:
    cdef int64_t n_total = pos.shape[0]
    cdef int64_t capacity = neighbors.shape[0]
    cdef double r2_max = radius * radius
    cdef double lo[3]
    cdef double hi[3]
    cdef double inv_side[3]
    cdef int64_t nb[3]
    cdef double side, grow = 1.0, n_bins_f
    cdef int64_t n_bins, max_bins, i, j, k, b, p, bx, by, bz, x0, x1, y0, y1, z0, z1, ix, iy, iz
    cdef int64_t row_start, n_pairs = 0, status = 0
    cdef double xi, yi, zi, dx, dy, dz, r2

    offsets[0] = 0
    if n_local == 0:
        return 0

    for k in range(3):
        lo[k] = pos[0, k]
        hi[k] = pos[0, k]
    for i in range(1, n_total):
        for k in range(3):
            if pos[i, k] < lo[k]:
                lo[k] = pos[i, k]
            if pos[i, k] > hi[k]:
                hi[k] = pos[i, k]

    # Bin side >= radius (with a relative margin against rounding in the bin index),
    # so every partner lies in the 27 surrounding bins. Sparse non-periodic systems
    # (two atoms 1 km apart) would ask for absurd grids: cap the bin count, growing
    # the side instead, which stays correct and costs only extra distance checks.
    max_bins = 8 * n_total + 64
    while True:
        side = radius * (1.0 + 1e-9) * grow
        n_bins_f = 1.0
        for k in range(3):
            n_bins_f *= max(1.0, floor((hi[k] - lo[k]) / side))
        # Decide in floating point: the integer product could overflow.
        if n_bins_f <= <double>max_bins:
            break
        grow *= 1.5
    n_bins = 1
    for k in range(3):
        nb[k] = <int64_t>max(1.0, floor((hi[k] - lo[k]) / side))
        n_bins *= nb[k]
    for k in range(3):
        inv_side[k] = nb[k] / (hi[k] - lo[k]) if hi[k] > lo[k] else 0.0

    cdef int64_t* bin_of = <int64_t*>malloc(n_total * sizeof(int64_t))
    cdef int64_t* bin_start = <int64_t*>malloc((n_bins + 1) * sizeof(int64_t))
    cdef int64_t* sorted_idx = <int64_t*>malloc(n_total * sizeof(int64_t))
    cdef double* sorted_xyz = <double*>malloc(3 * n_total * sizeof(double))
    if bin_of == NULL or bin_start == NULL or sorted_idx == NULL or sorted_xyz == NULL:
        free(bin_of)
        free(bin_start)
        free(sorted_idx)
        free(sorted_xyz)
        return -2

    for b in range(n_bins + 1):
        bin_start[b] = 0
    for i in range(n_total):
        bx = <int64_t>((pos[i, 0] - lo[0]) * inv_side[0])
        by = <int64_t>((pos[i, 1] - lo[1]) * inv_side[1])
        bz = <int64_t>((pos[i, 2] - lo[2]) * inv_side[2])
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
    for b in range(n_bins):
        bin_start[b + 1] += bin_start[b]
    # Stable counting sort: within a bin atoms stay in ascending index order, and
    # their coordinates become contiguous for the inner loop.
    for i in range(n_total):
        b = bin_of[i]
        p = bin_start[b]
        sorted_idx[p] = i
        sorted_xyz[3 * p] = pos[i, 0]
        sorted_xyz[3 * p + 1] = pos[i, 1]
        sorted_xyz[3 * p + 2] = pos[i, 2]
        bin_start[b] = p + 1
    # bin_start[b] now holds the end of bin b; shift back to starts.
    for b in range(n_bins, 0, -1):
        bin_start[b] = bin_start[b - 1]
    bin_start[0] = 0

    for i in range(n_local):
        xi = pos[i, 0]
        yi = pos[i, 1]
        zi = pos[i, 2]
        b = bin_of[i]
        bz = b % nb[2]
        by = (b // nb[2]) % nb[1]
        bx = b // (nb[1] * nb[2])
        x0 = bx - 1 if bx > 0 else 0
        x1 = bx + 1 if bx + 1 < nb[0] else nb[0] - 1
        y0 = by - 1 if by > 0 else 0
        y1 = by + 1 if by + 1 < nb[1] else nb[1] - 1
        z0 = bz - 1 if bz > 0 else 0
        z1 = bz + 1 if bz + 1 < nb[2] else nb[2] - 1
        row_start = n_pairs
        for ix in range(x0, x1 + 1):
            for iy in range(y0, y1 + 1):
                # Bins adjacent in z are adjacent in memory: scan them as one run.
                b = (ix * nb[1] + iy) * nb[2]
                for p in range(bin_start[b + z0], bin_start[b + z1 + 1]):
                    dx = sorted_xyz[3 * p] - xi
                    dy = sorted_xyz[3 * p + 1] - yi
                    dz = sorted_xyz[3 * p + 2] - zi
                    r2 = dx * dx + dy * dy + dz * dz
                    if r2 < r2_max:
                        j = sorted_idx[p]
                        if j == i:
                            continue
                        if r2 == 0.0:
                            coincident[0] = i
                            coincident[1] = j
                            status = -1
                            break
                        if n_pairs < capacity:
                            neighbors[n_pairs] = j
                        n_pairs += 1
                if status != 0:
                    break
            if status != 0:
                break
        if status != 0:
            break
        if row_start < n_pairs <= capacity:
            _insertion_sort(&neighbors[row_start], n_pairs - row_start)
        offsets[i + 1] = n_pairs

    free(bin_of)
    free(bin_start)
    free(sorted_idx)
    free(sorted_xyz)
    if status != 0:
        return status
    return n_pairs


def find_pairs(const double[:, ::1] pos, int64_t n_local, double radius, int64_t[::1] offsets,
               int64_t[::1] neighbors, int64_t[::1] coincident) -> int:
    """CSR pairs ``0 < |pos[j] - pos[i]| < radius`` for ``i < n_local``, each row sorted by ``j``.

    Linked cells over the bounding box of all ``pos`` (locals then ghosts): O(N).
    ``offsets`` has ``n_local + 1`` entries. Returns the number of pairs; when that
    exceeds ``len(neighbors)`` nothing beyond the capacity was written and the
    caller must retry with a buffer of exactly that size. Returns -1 when two
    entries coincide (their indices in ``coincident[0:2]``), -2 when out of memory.
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
