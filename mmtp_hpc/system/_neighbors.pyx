"""Kernels for :mod:`mmtp_hpc.system.neighbors`: periodic images (ghosts) and linked-cell pair search.

Every function takes memoryviews and writes into arrays allocated by the caller
(CONVENTIONS item 2); scratch space is malloc'ed here, and the pair search keeps
its scratch for the next search (:class:`_Workspace`). The Python module owns
validation, allocation and error messages.
"""

from libc.math cimport INFINITY, ceil, floor, sqrt
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memset


def ghost_ranges(const double[:, ::1] frac, const double[::1] lo, const double[::1] hi,
                 const unsigned char[::1] periodic, int64_t[:, ::1] wrap_shifts,
                 int64_t[:, ::1] ranges) -> int:
    """Wrap, then per atom and direction the image range ``[ranges[i, 2k], ranges[i, 2k+1]]`` to keep.

    Along periodic directions ``wrap_shifts[i, k] = -floor(frac[i, k])`` (0 along the
    others) and ``s = frac[i, k] + wrap_shifts[i, k]`` is the wrapped coordinate; an
    image ``n`` is kept when ``lo[k] <= s + n < hi[k]``. Non-periodic directions get
    ``[0, 0]``. Returns the number of ghosts, i.e. kept images other than ``n = (0, 0, 0)``.
    """
    cdef Py_ssize_t n_atoms = frac.shape[0]
    cdef Py_ssize_t i, k
    cdef int64_t n_min, n_max, n_images, n_ghosts = 0, w
    cdef double s
    cdef bint has_zero
    with nogil:
        for i in range(n_atoms):
            n_images = 1
            has_zero = True
            for k in range(3):
                if periodic[k]:
                    w = -<int64_t>floor(frac[i, k])
                    s = frac[i, k] + <double>w
                    n_min = <int64_t>ceil(lo[k] - s)
                    # n < hi - s  <=>  n <= ceil(hi - s) - 1
                    n_max = <int64_t>ceil(hi[k] - s) - 1
                else:
                    w = 0
                    n_min = 0
                    n_max = 0
                wrap_shifts[i, k] = w
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
    """Entries ``0 .. n_first-1`` are the atoms themselves; ghosts from ``n_first`` on,
    image-major (n0, n1, n2 ascending), then atom index.

    Image-major order keeps the ghosts of one face contiguous when the atoms are
    spatially ordered, which helps the cache of whoever gathers neighbour data.
    A counting sort by image: O(atoms + ghosts). Returns the index one past the
    last ghost written, -1 when out of memory, or the (larger) count of the ghosts the ranges
    ask for, without writing any, when ``image_of`` cannot hold them.
    """
    cdef Py_ssize_t n_atoms = ranges.shape[0]
    cdef Py_ssize_t i, k
    cdef int64_t lo[3]
    cdef int64_t hi[3]
    cdef int64_t span[3]
    cdef int64_t n0, n1, n2, g, n_ids, img, zero, c, t
    cdef int64_t* start
    with nogil:
        for i in range(n_first):
            image_of[i] = i
            shifts[i, 0] = 0
            shifts[i, 1] = 0
            shifts[i, 2] = 0
    if n_atoms == 0:
        return n_first
    with nogil:
        for k in range(3):
            lo[k] = ranges[0, 2 * k]
            hi[k] = ranges[0, 2 * k + 1]
        for i in range(1, n_atoms):
            for k in range(3):
                if ranges[i, 2 * k] < lo[k]:
                    lo[k] = ranges[i, 2 * k]
                if ranges[i, 2 * k + 1] > hi[k]:
                    hi[k] = ranges[i, 2 * k + 1]
        n_ids = 1
        for k in range(3):
            span[k] = hi[k] - lo[k] + 1 if hi[k] >= lo[k] else 0
            n_ids *= span[k]
    if n_ids == 0:
        return n_first
    start = <int64_t*>malloc((n_ids + 1) * sizeof(int64_t))
    if start == NULL:
        return -1
    with nogil:
        memset(start, 0, (n_ids + 1) * sizeof(int64_t))
        # Image (n0, n1, n2) has id ((n0 - lo0) span1 + n1 - lo1) span2 + n2 - lo2: ascending
        # ids are the image-major order. The image (0, 0, 0) is no ghost.
        zero = -1
        if lo[0] <= 0 <= hi[0] and lo[1] <= 0 <= hi[1] and lo[2] <= 0 <= hi[2]:
            zero = ((-lo[0]) * span[1] - lo[1]) * span[2] - lo[2]
        for i in range(n_atoms):
            for n0 in range(ranges[i, 0], ranges[i, 1] + 1):
                for n1 in range(ranges[i, 2], ranges[i, 3] + 1):
                    img = ((n0 - lo[0]) * span[1] + n1 - lo[1]) * span[2] - lo[2]
                    for n2 in range(ranges[i, 4], ranges[i, 5] + 1):
                        start[img + n2] += 1
        if zero >= 0:
            start[zero] = 0
        c = n_first
        for img in range(n_ids):
            t = start[img]
            start[img] = c
            c += t
    if c > image_of.shape[0] or c > shifts.shape[0]:
        free(start)
        return c
    with nogil:
        for i in range(n_atoms):
            for n0 in range(ranges[i, 0], ranges[i, 1] + 1):
                for n1 in range(ranges[i, 2], ranges[i, 3] + 1):
                    img = ((n0 - lo[0]) * span[1] + n1 - lo[1]) * span[2] - lo[2]
                    for n2 in range(ranges[i, 4], ranges[i, 5] + 1):
                        if img + n2 == zero:
                            continue
                        g = start[img + n2]
                        start[img + n2] = g + 1
                        image_of[g] = i
                        shifts[g, 0] = n0
                        shifts[g, 1] = n1
                        shifts[g, 2] = n2
    free(start)
    return c


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


# Bins per search radius: bins of side >= radius / _SUB_XY along x and y and
# >= radius / _SUB_Z along z. Bins are numbered z fastest, so the part of a
# stencil column (fixed x and y bin) that can hold partners is one contiguous
# run of entries whatever its length: fine z bins trim candidates at no extra
# cost, while every x/y column costs a range look-up.
cdef double _SUB_XY = 2.0
cdef double _SUB_Z = 4.0
# Relative slack of the geometric stencil tests against rounding of bin indices
# (plus a term for the rounding of long coordinate ranges, see _make_grid).
cdef double _SLACK = 1e-9


cdef struct Grid:
    double lo[3]         # bin (0, 0, 0) starts here
    double side[3]       # bin sides
    double inv_side[3]
    int64_t nb[3]        # bins per direction
    int64_t reach[3]     # largest bin offset that can hold partners
    int64_t n_bins
    double slack         # relative slack of gaps between bins


cdef struct Stencil:
    int64_t n_cols
    int64_t* cols        # per column (dx, dy, z reach, bin offset (dx * nb1 + dy) * nb2)
    int64_t dz_max       # largest z reach


cdef inline int64_t _reach(double radius, double side, double slack) noexcept nogil:
    """Largest bin offset ``d`` whose gap ``(|d| - 1) * side`` (shrunk by ``slack``) is below ``radius``."""
    return <int64_t>ceil(radius / (side * (1.0 - slack)))


cdef Grid _make_grid(const double[:, ::1] pos, double radius) noexcept nogil:
    """Bins over the bounding box of ``pos``.

    Sparse systems (two atoms 1 km apart) would ask for absurd grids: the bin
    count is capped by growing the sides, which stays correct and only costs
    extra distance checks.
    """
    cdef Grid grid
    cdef int64_t n_total = pos.shape[0]
    cdef double hi[3]
    cdef double ext[3]
    cdef double side_min[3]
    cdef double sub[3]
    cdef double grow = 1.0, n_bins_f
    cdef int64_t i, k, max_bins = 8 * n_total + 64
    sub[0] = _SUB_XY
    sub[1] = _SUB_XY
    sub[2] = _SUB_Z
    for k in range(3):
        grid.lo[k] = pos[0, k]
        hi[k] = pos[0, k]
    for i in range(1, n_total):
        for k in range(3):
            if pos[i, k] < grid.lo[k]:
                grid.lo[k] = pos[i, k]
            if pos[i, k] > hi[k]:
                hi[k] = pos[i, k]
    for k in range(3):
        ext[k] = hi[k] - grid.lo[k]
    while True:
        n_bins_f = 1.0
        for k in range(3):
            side_min[k] = radius / sub[k] * (1.0 + 1e-8) * grow
            n_bins_f *= max(1.0, floor(ext[k] / side_min[k]))
        # Decide in floating point: the integer product could overflow.
        if n_bins_f <= <double>max_bins:
            break
        grow *= 1.5
    grid.n_bins = 1
    grid.slack = _SLACK
    for k in range(3):
        grid.nb[k] = <int64_t>max(1.0, floor(ext[k] / side_min[k]))
        grid.side[k] = max(ext[k] / <double>grid.nb[k], side_min[k])
        grid.inv_side[k] = 1.0 / grid.side[k]
        grid.n_bins *= grid.nb[k]
        # A bin index (x - lo) / side is off by up to a few ulp of nb: fuzzy bin
        # edges, which the gaps between bins must allow for.
        grid.slack = max(grid.slack, _SLACK + 1e-15 * <double>grid.nb[k])
    for k in range(3):
        grid.reach[k] = _reach(radius, grid.side[k], grid.slack)
    return grid


cdef void _make_stencil(Grid* grid, double radius, Stencil* st) noexcept nogil:
    """Stencil columns: the x/y bin offsets whose bins can hold partners, with their z reach.

    The z reach of a column follows from its smallest x/y gap, so outer columns
    are shorter and corner columns may drop out. ``st.cols`` must hold
    ``4 (2 reach_x + 1) (2 reach_y + 1)`` entries.
    """
    cdef int64_t dx, dy, adx, ady, n = 0
    cdef double gx, gy, rest
    st.n_cols = 0
    st.dz_max = 0
    for dx in range(-grid.reach[0], grid.reach[0] + 1):
        adx = dx if dx >= 0 else -dx
        gx = <double>(adx - 1 if adx > 1 else 0) * grid.side[0] * (1.0 - grid.slack)
        for dy in range(-grid.reach[1], grid.reach[1] + 1):
            ady = dy if dy >= 0 else -dy
            gy = <double>(ady - 1 if ady > 1 else 0) * grid.side[1] * (1.0 - grid.slack)
            rest = radius * radius - gx * gx - gy * gy
            if rest <= 0.0:
                continue
            st.cols[4 * n] = dx
            st.cols[4 * n + 1] = dy
            st.cols[4 * n + 2] = _reach(sqrt(rest), grid.side[2], grid.slack)
            st.cols[4 * n + 3] = (dx * grid.nb[1] + dy) * grid.nb[2]
            if st.cols[4 * n + 2] > st.dz_max:
                st.dz_max = st.cols[4 * n + 2]
            n += 1
    st.n_cols = n


cdef inline int64_t _ranges(Grid* grid, Stencil* st, int64_t bx, int64_t by, int64_t bz,
                            const int64_t* bin_start, int64_t* rng, int64_t* total) noexcept nogil:
    """Entry ranges ``[rng[2r], rng[2r+1])`` of the stencil around bin ``(bx, by, bz)``.

    Returns the number of ranges (empty ones may be included), their total
    length in ``total``. Columns are clipped to the grid.
    """
    cdef int64_t c, cx, cy, z0, z1, base, s, e, n = 0, tot = 0
    cdef int64_t nb0 = grid.nb[0], nb1 = grid.nb[1], nb2 = grid.nb[2]
    cdef int64_t b = (bx * nb1 + by) * nb2 + bz
    cdef const int64_t* cols = st.cols
    if (bx >= grid.reach[0] and bx < nb0 - grid.reach[0] and by >= grid.reach[1] and by < nb1 - grid.reach[1]
            and bz >= st.dz_max and bz < nb2 - st.dz_max):
        # Interior: no clipping.
        for c in range(st.n_cols):
            base = b + cols[4 * c + 3]
            s = bin_start[base - cols[4 * c + 2]]
            e = bin_start[base + cols[4 * c + 2] + 1]
            rng[2 * n] = s
            rng[2 * n + 1] = e
            n += s < e
            tot += e - s
        total[0] = tot
        return n
    for c in range(st.n_cols):
        cx = bx + cols[4 * c]
        cy = by + cols[4 * c + 1]
        if cx < 0 or cx >= nb0 or cy < 0 or cy >= nb1:
            continue
        z0 = bz - cols[4 * c + 2]
        z1 = bz + cols[4 * c + 2]
        if z0 < 0:
            z0 = 0
        if z1 > nb2 - 1:
            z1 = nb2 - 1
        base = (cx * nb1 + cy) * nb2
        s = bin_start[base + z0]
        e = bin_start[base + z1 + 1]
        rng[2 * n] = s
        rng[2 * n + 1] = e
        n += s < e
        tot += e - s
    total[0] = tot
    return n


cdef struct Bins:
    int64_t* bin_start   # n_bins + 1
    int32_t* idx         # n_total + 1: entry index of each binned entry
    double* x            # n_total + 1 each: coordinates in bin order (one entry of padding)
    double* y
    double* z


cdef void _bin_entries(const double[:, ::1] pos, Grid* grid, Bins* bins, int64_t* bin_of) noexcept nogil:
    """Counting sort of all entries into bins (stable: ascending index within a bin, so
    locals first), coordinates copied in bin order; ``bin_of`` is scratch (``n_total``)."""
    cdef int64_t n_total = pos.shape[0]
    cdef int64_t i, k, b, q, p
    cdef int64_t* bin_start = bins.bin_start
    for b in range(grid.n_bins + 1):
        bin_start[b] = 0
    for i in range(n_total):
        b = 0
        for k in range(3):
            q = <int64_t>((pos[i, k] - grid.lo[k]) * grid.inv_side[k])
            # The maximum coordinate lands on the upper edge.
            if q >= grid.nb[k]:
                q = grid.nb[k] - 1
            b = b * grid.nb[k] + q
        bin_of[i] = b
        bin_start[b + 1] += 1
    for b in range(grid.n_bins):
        bin_start[b + 1] += bin_start[b]
    for i in range(n_total):
        p = bin_start[bin_of[i]]
        bin_start[bin_of[i]] = p + 1
        bins.idx[p] = <int32_t>i
        bins.x[p] = pos[i, 0]
        bins.y[p] = pos[i, 1]
        bins.z[p] = pos[i, 2]
    # bin_start[b] now holds the end of bin b; shift back to starts.
    for b in range(grid.n_bins, 0, -1):
        bin_start[b] = bin_start[b - 1]
    bin_start[0] = 0
    # Padding read (and ignored) by the distance test.
    bins.idx[n_total] = 0
    bins.x[n_total] = 0.0
    bins.y[n_total] = 0.0
    bins.z[n_total] = 0.0


cdef extern from "_neighbors_scan.h" nogil:
    int64_t mmtp_nb_scan(const double* x, const double* y, const double* z, const int32_t* idx, int64_t s,
                         int64_t e, double xi, double yi, double zi, double r2_max, int32_t* found, int64_t k,
                         double* r2_min)


cdef int64_t _first_at(Bins* bins, const int64_t* rng, int64_t n_rng, int64_t p) noexcept nogil:
    """Smallest index among the ranges' entries other than ``p`` at zero distance from entry ``p``."""
    cdef int64_t r, q, k, best = -1
    cdef double low
    cdef int32_t one[2]
    for r in range(n_rng):
        for q in range(rng[2 * r], rng[2 * r + 1]):
            if q == p:
                continue
            low = INFINITY
            # The same distance test as the search.
            k = mmtp_nb_scan(bins.x, bins.y, bins.z, bins.idx, q, q + 1, bins.x[p], bins.y[p], bins.z[p],
                             0.0, one, 0, &low)
            if low == 0.0 and (best < 0 or bins.idx[q] < best):
                best = bins.idx[q]
    return best


cdef enum:
    # Buffers of a workspace, by purpose.
    W_COLS, W_RNG, W_BIN_START, W_BIN_OF, W_IDX, W_X, W_Y, W_Z, W_ROW_BEGIN, W_ROW_LEN, W_GROW_BEGIN,
    W_GROW_LEN, W_CURSOR, W_GHOST_COUNT, W_LISTS, W_GLISTS, W_BY_GHOST, W_FOUND, W_OUT, W_COUNT


cdef class _Workspace:
    """Scratch buffers of one pair search, kept for the next one.

    Builds repeat with similar sizes (MD rebuilds, benchmarks, training sets):
    reusing the buffers spares the page faults of fresh memory, which cost as
    much as the search itself on some machines.
    """

    cdef void* data[<int>W_COUNT]
    cdef size_t size[<int>W_COUNT]

    def __dealloc__(self):
        cdef int k
        for k in range(W_COUNT):
            free(self.data[k])
            self.data[k] = NULL
            self.size[k] = 0

    cdef void* get(self, int k, size_t nbytes) noexcept nogil:
        """Buffer ``k`` with at least ``nbytes`` (contents kept on growth); NULL when out of memory."""
        cdef void* p
        cdef size_t want
        if nbytes <= self.size[k] and self.data[k] != NULL:
            return self.data[k]
        want = nbytes + nbytes // 4 + 64
        p = realloc(self.data[k], want)
        if p == NULL:
            return NULL
        self.data[k] = p
        self.size[k] = want
        return p

    cdef size_t total(self) noexcept nogil:
        cdef size_t t = 0
        cdef int k
        for k in range(W_COUNT):
            t += self.size[k]
        return t


# One spare workspace for the next search; taken and returned with the GIL held, so
# concurrent searches (threads) each get their own. Larger ones are not kept.
cdef _Workspace _spare_workspace = None
cdef size_t _KEEP_BYTES = 256 * 1024 * 1024


cdef _Workspace _take_workspace():
    global _spare_workspace
    cdef _Workspace ws = _spare_workspace
    if ws is None:
        return _Workspace()
    _spare_workspace = None
    return ws


cdef void _return_workspace(_Workspace ws):
    global _spare_workspace
    if ws is not None and ws.total() <= _KEEP_BYTES:
        _spare_workspace = ws


cdef class PairSearch:
    """Linked-cell pair search ``0 < |pos[j] - pos[i]| < radius`` for ``i < n_local``: O(N).

    All entries (locals, then ghosts: periodic images or an MPI halo) are binned;
    one sweep over the bins lists, for every local ``i``, its local partners and
    its ghost partners, both unsorted. Rows sorted by ``j`` then come without any
    sort: going through ``j`` in ascending order and appending ``j`` to the row of
    every local whose list holds it fills each row in ascending order. For a local
    ``j`` those are exactly the locals in its own list (symmetry); for a ghost,
    the lists are first transposed (a counting sort by ghost).

    The constructor runs the search and writes the CSR row pointers ``offsets``
    (``n_local + 1``); :meth:`fill` writes the rows into a caller-allocated array
    of ``n_pairs`` entries. ``status`` is 0, -1 when two entries coincide (their
    indices in ``coincident[0:2]``, the first one local) or -2 when out of memory.
    Entry indices must fit in int32.
    """

    cdef readonly int64_t n_local
    cdef readonly int64_t n_total
    cdef readonly int64_t n_pairs
    cdef readonly int status
    cdef int64_t n_ghost_pairs
    cdef _Workspace ws
    # Views into ``ws``, valid from a successful search until :meth:`fill`.
    cdef int64_t* row_begin     # n_local: start of each local's local partners in ``lists``
    cdef int64_t* row_len       # n_local: their number
    cdef int32_t* lists
    cdef int64_t* grow_begin    # n_local: start of each local's ghost partners in ``glists``
    cdef int64_t* grow_len      # n_local: their number
    cdef int32_t* glists
    cdef int64_t* ghost_count   # n_total - n_local + 1: how many locals list each ghost
    cdef int64_t* cursor        # n_local: next free slot of each row

    def __cinit__(self, const double[:, ::1] pos, int64_t n_local, double radius, int64_t[::1] offsets,
                  int64_t[::1] coincident):
        self.n_local = n_local
        self.n_total = pos.shape[0]
        self.n_pairs = 0
        self.status = 0
        offsets[0] = 0
        if n_local == 0:
            return
        self.ws = _take_workspace()
        with nogil:
            self.status = self._search(pos, radius, offsets, coincident)
        if self.status != 0:
            self._release()

    def __dealloc__(self):
        self._release()

    cdef void _release(self):
        _return_workspace(self.ws)
        self.ws = None
        self.row_begin = NULL
        self.row_len = NULL
        self.lists = NULL
        self.grow_begin = NULL
        self.grow_len = NULL
        self.glists = NULL
        self.ghost_count = NULL
        self.cursor = NULL

    cdef int _search(self, const double[:, ::1] pos, double radius, int64_t[::1] offsets,
                     int64_t[::1] coincident) noexcept nogil:
        cdef Grid grid = _make_grid(pos, radius)
        cdef Stencil st
        cdef Bins bins
        cdef int64_t n_local = self.n_local, n_total = self.n_total, i, status
        cdef int64_t n_cols_max = (2 * grid.reach[0] + 1) * (2 * grid.reach[1] + 1)
        cdef int64_t* rng = <int64_t*>self.ws.get(W_RNG, 2 * (n_cols_max + 1) * sizeof(int64_t))
        cdef int64_t* bin_of = <int64_t*>self.ws.get(W_BIN_OF, n_total * sizeof(int64_t))
        st.cols = <int64_t*>self.ws.get(W_COLS, 4 * n_cols_max * sizeof(int64_t))
        bins.bin_start = <int64_t*>self.ws.get(W_BIN_START, (grid.n_bins + 1) * sizeof(int64_t))
        bins.idx = <int32_t*>self.ws.get(W_IDX, (n_total + 1) * sizeof(int32_t))
        bins.x = <double*>self.ws.get(W_X, (n_total + 1) * sizeof(double))
        bins.y = <double*>self.ws.get(W_Y, (n_total + 1) * sizeof(double))
        bins.z = <double*>self.ws.get(W_Z, (n_total + 1) * sizeof(double))
        self.row_begin = <int64_t*>self.ws.get(W_ROW_BEGIN, n_local * sizeof(int64_t))
        self.row_len = <int64_t*>self.ws.get(W_ROW_LEN, n_local * sizeof(int64_t))
        self.grow_begin = <int64_t*>self.ws.get(W_GROW_BEGIN, n_local * sizeof(int64_t))
        self.grow_len = <int64_t*>self.ws.get(W_GROW_LEN, n_local * sizeof(int64_t))
        self.cursor = <int64_t*>self.ws.get(W_CURSOR, n_local * sizeof(int64_t))
        self.ghost_count = <int64_t*>self.ws.get(W_GHOST_COUNT, (n_total - n_local + 1) * sizeof(int64_t))
        if (rng == NULL or bin_of == NULL or st.cols == NULL or bins.bin_start == NULL
                or bins.idx == NULL or bins.x == NULL or bins.y == NULL or bins.z == NULL
                or self.row_begin == NULL or self.row_len == NULL or self.grow_begin == NULL
                or self.grow_len == NULL or self.cursor == NULL or self.ghost_count == NULL):
            return -2
        memset(self.ghost_count, 0, (n_total - n_local + 1) * sizeof(int64_t))
        _make_stencil(&grid, radius, &st)
        _bin_entries(pos, &grid, &bins, bin_of)
        status = self._sweep(&grid, &st, &bins, rng, radius, coincident)
        if status != 0:
            return status
        for i in range(n_local):
            offsets[i + 1] = offsets[i] + self.row_len[i] + self.grow_len[i]
            self.cursor[i] = offsets[i]
        self.n_pairs = offsets[n_local]
        return 0

    cdef int _sweep(self, Grid* grid, Stencil* st, Bins* bins, int64_t* rng, double radius,
                    int64_t[::1] coincident) noexcept nogil:
        """Local and ghost partners of every local, bin by bin (the locals of a bin share the ranges).

        The centre itself is skipped by position, so a zero distance among the
        candidates is always a coincidence (checked once per centre through the
        smallest distance).
        """
        cdef int64_t n_local = self.n_local
        cdef double r2_max = radius * radius
        cdef int64_t n_rng, total, i, b = 0, p, p_end, r, s, e, t, k, n, m, reserve
        cdef int64_t used = 0, gused = 0
        cdef int64_t bx, by, bz
        cdef int32_t j
        cdef bint local
        cdef double xi, yi, zi, r2_min
        cdef const double* x = bins.x
        cdef const double* y = bins.y
        cdef const double* z = bins.z
        cdef const int32_t* idx = bins.idx
        cdef const int64_t* bin_start = bins.bin_start
        cdef int32_t* lists
        cdef int32_t* glists
        cdef int32_t* found
        cdef int64_t* ghost_count = self.ghost_count
        for bx in range(grid.nb[0]):
            for by in range(grid.nb[1]):
                for bz in range(grid.nb[2]):
                    p = bin_start[b]
                    p_end = bin_start[b + 1]
                    b += 1
                    if p == p_end or idx[p] >= n_local:
                        continue
                    n_rng = _ranges(grid, st, bx, by, bz, bin_start, rng, &total)
                    reserve = (p_end - p) * total
                    lists = <int32_t*>self.ws.get(W_LISTS, (used + reserve) * sizeof(int32_t))
                    glists = <int32_t*>self.ws.get(W_GLISTS, (gused + reserve) * sizeof(int32_t))
                    found = <int32_t*>self.ws.get(W_FOUND, (total + 1) * sizeof(int32_t))
                    if lists == NULL or glists == NULL or found == NULL:
                        return -2
                    while p < p_end and idx[p] < n_local:
                        xi = x[p]
                        yi = y[p]
                        zi = z[p]
                        k = 0
                        r2_min = INFINITY
                        for r in range(n_rng):
                            s = rng[2 * r]
                            e = rng[2 * r + 1]
                            if s <= p < e:
                                # Around the centre itself.
                                k = mmtp_nb_scan(x, y, z, idx, s, p, xi, yi, zi, r2_max, found, k, &r2_min)
                                k = mmtp_nb_scan(x, y, z, idx, p + 1, e, xi, yi, zi, r2_max, found, k,
                                                 &r2_min)
                            else:
                                k = mmtp_nb_scan(x, y, z, idx, s, e, xi, yi, zi, r2_max, found, k, &r2_min)
                        i = idx[p]
                        if r2_min == 0.0:
                            coincident[0] = i
                            coincident[1] = _first_at(bins, rng, n_rng, p)
                            return -1
                        # Split into local and ghost partners.
                        n = used
                        m = gused
                        for t in range(k):
                            j = found[t]
                            local = j < n_local
                            lists[n] = j
                            glists[m] = j
                            n += local
                            m += not local
                        for t in range(gused, m):
                            ghost_count[glists[t] - n_local] += 1
                        self.row_begin[i] = used
                        self.row_len[i] = n - used
                        self.grow_begin[i] = gused
                        self.grow_len[i] = m - gused
                        used = n
                        gused = m
                        p += 1
        self.lists = <int32_t*>self.ws.get(W_LISTS, used * sizeof(int32_t))
        self.glists = <int32_t*>self.ws.get(W_GLISTS, gused * sizeof(int32_t))
        self.n_ghost_pairs = gused
        return 0

    def fill(self, const int64_t[::1] offsets, int64_t[::1] neighbors) -> None:
        """Write the rows, each ascending, into ``neighbors`` (``n_pairs`` entries; ``offsets`` as written
        by the constructor)."""
        if self.status != 0 or neighbors.shape[0] != self.n_pairs or offsets.shape[0] != self.n_local + 1:
            raise ValueError(f"fill needs a successful search, its offsets and {self.n_pairs} entries")
        cdef int status = 0
        if self.n_local > 0:
            with nogil:
                status = self._fill(offsets, neighbors)
            self._release()
        self.status = -3
        if status == -2:
            raise MemoryError("neighbour search: out of memory for the linked cells")
        if status != 0:
            raise RuntimeError("neighbour search: asymmetric pair test (rows do not add up)")

    cdef int _fill(self, const int64_t[::1] offsets, int64_t[::1] neighbors) noexcept nogil:
        cdef int64_t n_local = self.n_local, n_ghosts = self.n_total - self.n_local, n_pairs = self.n_pairs
        cdef int64_t j, g, q, i, c, t
        cdef int64_t* cursor = self.cursor
        cdef int64_t* gstart = self.ghost_count
        cdef int32_t* lists = self.lists
        cdef int32_t* glists = self.glists
        cdef int32_t* by_ghost = <int32_t*>self.ws.get(W_BY_GHOST, self.n_ghost_pairs * sizeof(int32_t))
        cdef int32_t* out = <int32_t*>self.ws.get(W_OUT, n_pairs * sizeof(int32_t))
        if by_ghost == NULL or out == NULL:
            return -2
        # Ghost partners transposed: per ghost, the locals that list it, ascending.
        c = 0
        for g in range(n_ghosts + 1):
            t = gstart[g]
            gstart[g] = c
            c += t
        for i in range(n_local):
            for q in range(self.grow_begin[i], self.grow_begin[i] + self.grow_len[i]):
                g = glists[q] - n_local
                by_ghost[gstart[g]] = <int32_t>i
                gstart[g] += 1
        # gstart[g] now holds the end of ghost g's run. Row i gets its local partners
        # from the lists of its partners, as many as its own list holds by the
        # symmetry of the distance test (checked; meanwhile no write may leave the
        # array). They go through 32-bit scratch, half the scattered writes' traffic.
        for j in range(n_local):
            for q in range(self.row_begin[j], self.row_begin[j] + self.row_len[j]):
                i = lists[q]
                c = cursor[i]
                if c >= n_pairs:
                    return -1
                out[c] = <int32_t>j
                cursor[i] = c + 1
        for i in range(n_local):
            if cursor[i] != offsets[i] + self.row_len[i]:
                return -1
            for c in range(offsets[i], cursor[i]):
                neighbors[c] = out[c]
        # Then the ghosts, in ascending order.
        q = 0
        for g in range(n_ghosts):
            while q < gstart[g]:
                i = by_ghost[q]
                c = cursor[i]
                neighbors[c] = n_local + g
                cursor[i] = c + 1
                q += 1
        return 0


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
