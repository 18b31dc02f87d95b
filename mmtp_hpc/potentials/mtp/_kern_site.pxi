# Kernel module, part 3: the site terms (energies and derivatives of all centres) and the fold of
# per-pair derivatives into forces, ∂E/∂m and the virial.


def max_neighbors(const int64_t[::1] offsets) -> int:
    cdef Py_ssize_t i
    cdef int64_t m = 0
    for i in range(offsets.shape[0] - 1):
        if offsets[i + 1] - offsets[i] > m:
            m = offsets[i + 1] - offsets[i]
    return m


def site_terms(dict tab, const double[:, ::1] pos, const int[::1] types, const double[::1] mag,
               const int64_t[::1] offsets, const int64_t[::1] nbrs, Py_ssize_t n_local,
               double[::1] site_en, double[:, ::1] pair_grad, double[::1] pair_dmj,
               double[::1] dmi, double[:, ::1] basis, bint derivatives, bint want_basis,
               int num_threads=0, double[:, ::1] basic_out=None, bint magnetic_only=False):
    """E_i for every centre and, when ``derivatives``, ∂E_i/∂r_ij, ∂E_i/∂m_j, ∂E_i/∂m_i
    (``magnetic_only``: ∂E_i/∂m_j and ∂E_i/∂m_i alone; ``pair_grad`` may then be empty).

    ``pair_grad`` (n_pairs, 3) and ``pair_dmj`` (n_pairs,) must be zeroed by the caller
    (pairs in the skin are left untouched). ``basis`` (n_local, n_basis) when ``want_basis``.
    ``basic_out`` (n_local, n_basic), if given, receives every centre's basic moments (the
    Monte Carlo cache of :func:`metropolis_moves`, which then needs no pass of its own).
    """
    site_terms_sets(tab, pos, types, mag, offsets, nbrs, n_local, site_en, pair_grad, pair_dmj,
                    dmi, basis, derivatives, want_basis, num_threads, False, basic_out, magnetic_only)


def site_terms_symmetric(dict tab, const double[:, ::1] pos, const int[::1] types,
                         const double[::1] mag, const int64_t[::1] offsets, const int64_t[::1] nbrs,
                         Py_ssize_t n_local, double[::1] site_en, double[:, ::1] pair_grad,
                         double[::1] pair_dmj, double[::1] dmi, double[:, ::1] basis, bint derivatives,
                         bint want_basis, int num_threads=0, double[:, ::1] basic_out=None,
                         bint magnetic_only=False):
    """:func:`site_terms` of the spin-symmetrised model ½[E(M) + E(−M)] in one neighbour pass.

    Same arguments and outputs as :func:`site_terms` (site energies, per-pair ∂/∂r_ij and
    ∂/∂m_j, per-centre ∂/∂m_i, and the basis, all of ½[E(M) + E(−M)]). Valid only for a
    magnetic potential (M > 1) whose magnetic intervals are all symmetric (m_min = −m_max);
    the caller checks (:meth:`MTPEngine.one_pass_symmetric`). ``basic_out``: (n_local,
    2·n_basic), the basic moments of both sets.
    """
    site_terms_sets(tab, pos, types, mag, offsets, nbrs, n_local, site_en, pair_grad, pair_dmj,
                    dmi, basis, derivatives, want_basis, num_threads, True, basic_out, magnetic_only)


cdef site_terms_sets(dict tab, const double[:, ::1] pos, const int[::1] types, const double[::1] mag,
                     const int64_t[::1] offsets, const int64_t[::1] nbrs, Py_ssize_t n_local,
                     double[::1] site_en, double[:, ::1] pair_grad, double[::1] pair_dmj,
                     double[::1] dmi, double[:, ::1] basis, bint derivatives, bint want_basis,
                     int num_threads, bint symmetric, double[:, ::1] basic_out, bint magnetic_only):
    cdef Tables t = make_tables(tab)
    cdef int nmax = max_neighbors(offsets)
    cdef int nsets = 2 if symmetric else 1
    cdef Py_ssize_t i
    cdef int k, m
    cdef Cols* c
    cdef double* pg = &pair_grad[0, 0] if pair_grad.shape[0] > 0 else NULL
    cdef double* pm = &pair_dmj[0] if pair_dmj.shape[0] > 0 else NULL
    if symmetric and t.M < 2:
        raise ValueError("site_terms_symmetric needs a magnetic potential (M > 1)")
    cdef bint want_basic = basic_out is not None
    if want_basic and (basic_out.shape[0] < n_local or basic_out.shape[1] != nsets * t.n_basic):
        raise ValueError(f"basic_out must be ({n_local}, {nsets * t.n_basic}), "
                         f"got ({basic_out.shape[0]}, {basic_out.shape[1]})")
    if derivatives and not magnetic_only and pair_grad.shape[0] < pair_dmj.shape[0]:
        raise ValueError("pair_grad must have a row per pair (or pass magnetic_only)")
    if n_local == 0:
        return
    with nogil, parallel(num_threads=num_threads if num_threads > 0 else openmp_threads()):
        c = alloc_cols(&t, nmax, nsets)
        for i in prange(n_local, schedule="dynamic", chunksize=16):
            gather_cols(&t, c, i, pos, types, mag, offsets, nbrs, derivatives, symmetric)
            site_en[i] = forward_cols(&t, c, types[i])
            if want_basic:
                basic_of(&t, c.pm, nsets, &basic_out[i, 0])
            if want_basis:
                for k in range(t.n_basis):
                    m = t.mapping[k]
                    if symmetric:
                        basis[i, k] = 0.5 * (c.mom[2 * m] + c.mom[2 * m + 1])
                    else:
                        basis[i, k] = c.mom[m]
            if derivatives:
                derivatives_cols(&t, c, pg, pm, &dmi[i], magnetic_only)
        free_cols(c)


def site_energies_of(dict tab, const double[:, ::1] pos, const int[::1] types, const double[::1] mag,
                     const int64_t[::1] offsets, const int64_t[::1] nbrs, const int64_t[::1] centers,
                     double[::1] site_en, bint symmetric=False):
    """E_i for the listed centres only (energies, no derivatives): Monte Carlo ΔE.

    ``symmetric``: ½[E_i(M) + E_i(−M)] in one pass (magnetic potential with symmetric
    intervals only; see :func:`site_terms_symmetric`)."""
    cdef Tables t = make_tables(tab)
    cdef Py_ssize_t k, n = centers.shape[0]
    cdef int64_t i
    cdef int nmax = 0
    cdef Cols* c
    if symmetric and t.M < 2:
        raise ValueError("symmetric site energies need a magnetic potential (M > 1)")
    if n == 0:
        return
    for k in range(n):
        i = centers[k]
        if offsets[i + 1] - offsets[i] > nmax:
            nmax = offsets[i + 1] - offsets[i]
    with nogil:
        c = alloc_cols(&t, nmax, 2 if symmetric else 1)
        for k in range(n):
            i = centers[k]
            gather_cols(&t, c, i, pos, types, mag, offsets, nbrs, False, symmetric)
            site_en[k] = forward_cols(&t, c, types[i])
        free_cols(c)



def scatter_pairs_grouped(const double[:, ::1] pos, const int64_t[::1] offsets, const int64_t[::1] nbrs,
                          const double[:, ::1] pair_grad, const double[::1] pair_dmj, const double[::1] dmi,
                          const int64_t[::1] group, double[:, ::1] forces, double[::1] dedm,
                          double[:, :, ::1] virials):
    """Fold per-pair derivatives into forces (n_total, 3), ∂E/∂m (n_total,) and one virial per
    group of centres (``virials[group[i]]``; a single group gives the whole system's virial).

    F_j −= ∂E_i/∂r_ij, F_i += ∂E_i/∂r_ij; S_ab −= (∂E_i/∂r_ij)_a (r_ij)_b (spec §2).
    Outputs are accumulated into (not zeroed).
    """
    cdef Py_ssize_t i, a, b, n_local = offsets.shape[0] - 1
    cdef int64_t p, j, gi
    cdef double g[3]
    cdef double d[3]
    with nogil:
        for i in range(n_local):
            dedm[i] += dmi[i]
            gi = group[i]
            for p in range(offsets[i], offsets[i + 1]):
                j = nbrs[p]
                for a in range(3):
                    g[a] = pair_grad[p, a]
                    d[a] = pos[j, a] - pos[i, a]
                for a in range(3):
                    forces[j, a] -= g[a]
                    forces[i, a] += g[a]
                    for b in range(3):
                        virials[gi, a, b] -= g[a] * d[b]
                dedm[j] += pair_dmj[p]
