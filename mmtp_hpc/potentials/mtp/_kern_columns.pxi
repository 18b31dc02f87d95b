# Kernel module, part 2: the column-blocked site kernel (gather, forward, products, backward,
# per-pair derivatives) in one or two coefficient sets.

# ---------------------------------------------------------------------------------------------
# Column-blocked site kernel (energies, per-pair derivatives; plain and spin-symmetrised).
#
# Per centre the neighbours inside the cutoff are columns of small matrices (`_block.h`):
# radial and magnetic bases, radial functions f_μ, monomials and the adjoint dots are all
# stored neighbour-contiguous, so the work over neighbours is a few register-blocked matrix
# products. With more than one species the columns are grouped by species (each group padded
# to the block width) so that one coefficient table applies to a whole column block.
#
# One-pass spin-symmetrised evaluation, E_s(M) = ½[E(M) + E(−M)] (spec §2): when every
# species' magnetic interval is symmetric (m_min = −m_max), η(−m) = −η(m) and
# ψ_b(−m) = T_b(−η) = (−1)^b ψ_b(m), so E(−M) = E⁻(M): the same model evaluated at M with
# the coefficients C⁻[.., b, c] = (−1)^(b+c) C[.., b, c]. The two models are two coefficient
# sets on the same columns: they share neighbour vectors, radial and magnetic bases and
# monomials; their radial functions, basic moments, product tables and adjoint dots are
# computed set by set with the same code, and every per-set sum is finished before the sets
# are added, so that M → −M (which swaps the sets) keeps E_s and the forces bit for bit and
# flips ∂E_s/∂m exactly. Derivatives of E⁻ with respect to M are those of E(−M), so
# ∂E_s/∂m = ½[∂E/∂m + ∂E⁻/∂m].

cdef extern from "_block.h" nogil:
    int mmtp_block_width()
    void mmtp_unit_cols(double* u, double* r, int n, int ld)
    void mmtp_radial_cols(const double* r, int n, int R, double rmin, double rcut, double scaling,
                          double* Q, double* dQ, int ld, int deriv)
    void mmtp_cheb_cols(const double* eta, const double* scale, int n, int M, double* psi,
                        double* dpsi, int ld)
    void mmtp_qp_cols(const double* Q, const double* dQ, const double* psi, const double* dpsi,
                      int R, int M, int n, int ld, double* qp, double* dqp, double* qdp, int deriv)
    void mmtp_gemm_cols(const double* a, int lda, int nr, int len, const double* x, int ldx, int n,
                        double* out, int ldo)
    void mmtp_gemm_block(const double* a, int lda, int nr, int len, const double* x, int ldx,
                         double* out, int ldo)
    void mmtp_adjoint_block(const double* a, int lda, int len0, int len1, const double* x, int ldx,
                            double* out, int ldo)
    void mmtp_monomials_cols(const int* parent, const int* dir, int nm, const double* u, int n,
                             int ld, double* mono)
    void mmtp_rowdots(const double* f, const double* x, int ldx, int nq, int n, double* out)
    void mmtp_combine_cols(const double* G, const double* f, const double* fr, const double* fmj,
                           const double* fmi, int K, int n, int ld, int forces, int mag, double* out)
    void mmtp_row_block(const double* a, int len, const double* x, int ldx, double* out)


def block_width() -> int:
    """Neighbour columns per register block of the site kernel (4 portable, 8 with AVX)."""
    return mmtp_block_width()


cdef inline void magnetic_basis_odd(Tables* t, int z, double m, double* psi, double* dpsi) noexcept nogil:
    """:func:`magnetic_basis` on a symmetric interval, η = 2m/(m_max − m_min): exactly odd in m
    (η(−m) = −η(m) bit for bit, so ψ_b(−m) = (−1)^b ψ_b(m) exactly and the one-pass E_s is
    exactly even under M → −M, like the two-pass one)."""
    cdef double width = t.mag_max[z] - t.mag_min[z]
    chebyshev(2.0 * m / width, t.M, 2.0 / width, psi, dpsi)


cdef struct Cols:
    int ld, nb, ncol, nsets
    int* seg          # (C + 1,) column where species z starts (padded groups), seg[C] = ncol
    int* cnt          # (C,) neighbours of species z
    int* mu_low       # (K,) lowered adjoints of μ use monomials 0..mu_low[μ]-1 (one degree less)
    double* u         # (3, ld) unit vectors (dx, dy, dz before normalising)
    double* r         # (ld,) distances (r² before the square root)
    double* mj        # (ld,) neighbour moments
    int* z            # (ld,) neighbour species
    int64_t* pair     # (ld,) pair index, −1 in padding
    double* t_u       # (3, ld) unsorted candidates (several species)
    double* t_r
    double* t_mj
    int* t_z
    int64_t* t_pair
    double* Q         # (R, ld)
    double* dQ
    double* psi       # (M, ld)
    double* dpsi
    double* eta       # (ld,)
    double* escale
    double* qp        # (R·M, ld)
    double* dqp
    double* qdp
    double* D         # (nsets, C, K, R·M) coefficients contracted with ψ_b(m_i)
    double* DD        # the same with ψ'_b(m_i)
    double* F         # (nsets·K, ld) f_μ
    double* Fr        # ∂f_μ/∂r
    double* Fmj       # ∂f_μ/∂m_j
    double* Fmi       # ∂f_μ/∂m_i
    double* mono      # (n_mono, ld)
    double* pm        # (nsets·K, n_mono) basic moments, (μ, q) layout
    double* mom       # (nsets, n_moments)
    double* g         # (nsets, n_moments)
    double* adj       # (nsets·K·4, n_mono) adjoints: g and its lowered copies per μ
    double* GB        # (nsets·K·4, ld) adjoints dotted with the monomials
    double* comb      # (nsets, 6, ld) per-neighbour sums (A, B_x, B_y, B_z, ∂/∂m_j, ∂/∂m_i)
    double* psii
    double* dpsii


cdef inline int degree(Tables* t, int q) noexcept nogil:
    return t.mono_exp[3 * q] + t.mono_exp[3 * q + 1] + t.mono_exp[3 * q + 2]


cdef Cols* alloc_cols(Tables* t, int nmax, int nsets) noexcept nogil:
    cdef Cols* c = <Cols*> calloc(1, sizeof(Cols))
    cdef int nb = mmtp_block_width()
    cdef int ld = ((nmax + t.C * (nb - 1) + nb - 1) // nb) * nb
    cdef int RM = t.R * t.M, K = t.K, nm = t.n_mono, mu, top
    if ld < nb:
        ld = nb
    c.ld = ld
    c.nb = nb
    c.nsets = nsets
    c.seg = <int*> calloc(t.C + 1, sizeof(int))
    c.cnt = <int*> calloc(t.C, sizeof(int))
    c.mu_low = <int*> calloc(K, sizeof(int))
    for mu in range(K):      # monomials are ordered by degree
        top = 0
        if t.mu_len[mu] > 0:
            top = degree(t, t.mu_len[mu] - 1)
        while c.mu_low[mu] < t.mu_len[mu] and degree(t, c.mu_low[mu]) < top:
            c.mu_low[mu] += 1
    c.u = <double*> mmtp_calloc64(3 * ld, sizeof(double))
    c.r = <double*> mmtp_calloc64(ld, sizeof(double))
    c.mj = <double*> mmtp_calloc64(ld, sizeof(double))
    c.z = <int*> calloc(ld, sizeof(int))
    c.pair = <int64_t*> calloc(ld, sizeof(int64_t))
    c.t_u = <double*> mmtp_calloc64(3 * ld, sizeof(double))
    c.t_r = <double*> mmtp_calloc64(ld, sizeof(double))
    c.t_mj = <double*> mmtp_calloc64(ld, sizeof(double))
    c.t_z = <int*> calloc(ld, sizeof(int))
    c.t_pair = <int64_t*> calloc(ld, sizeof(int64_t))
    c.Q = <double*> mmtp_calloc64(t.R * ld, sizeof(double))
    c.dQ = <double*> mmtp_calloc64(t.R * ld, sizeof(double))
    c.psi = <double*> mmtp_calloc64(t.M * ld, sizeof(double))
    c.dpsi = <double*> mmtp_calloc64(t.M * ld, sizeof(double))
    c.eta = <double*> mmtp_calloc64(ld, sizeof(double))
    c.escale = <double*> mmtp_calloc64(ld, sizeof(double))
    c.qp = <double*> mmtp_calloc64(RM * ld, sizeof(double))
    c.dqp = <double*> mmtp_calloc64(RM * ld, sizeof(double))
    c.qdp = <double*> mmtp_calloc64(RM * ld, sizeof(double))
    c.D = <double*> mmtp_calloc64(nsets * t.C * K * RM, sizeof(double))
    c.DD = <double*> mmtp_calloc64(nsets * t.C * K * RM, sizeof(double))
    c.F = <double*> mmtp_calloc64(nsets * K * ld, sizeof(double))
    c.Fr = <double*> mmtp_calloc64(nsets * K * ld, sizeof(double))
    c.Fmj = <double*> mmtp_calloc64(nsets * K * ld, sizeof(double))
    c.Fmi = <double*> mmtp_calloc64(nsets * K * ld, sizeof(double))
    c.mono = <double*> mmtp_calloc64(nm * ld, sizeof(double))
    c.pm = <double*> mmtp_calloc64(nsets * K * nm, sizeof(double))
    c.mom = <double*> mmtp_calloc64(nsets * t.n_moments, sizeof(double))
    c.g = <double*> mmtp_calloc64(nsets * t.n_moments, sizeof(double))
    c.adj = <double*> mmtp_calloc64(nsets * K * 4 * nm, sizeof(double))
    c.GB = <double*> mmtp_calloc64(nsets * K * 4 * ld, sizeof(double))
    c.comb = <double*> mmtp_calloc64(nsets * 6 * ld, sizeof(double))
    c.psii = <double*> mmtp_calloc64(t.M, sizeof(double))
    c.dpsii = <double*> mmtp_calloc64(t.M, sizeof(double))
    return c


cdef void free_cols(Cols* c) noexcept nogil:
    free(c.seg); free(c.cnt); free(c.mu_low); free(c.u); free(c.r); free(c.mj); free(c.z); free(c.pair)
    free(c.t_u); free(c.t_r); free(c.t_mj); free(c.t_z); free(c.t_pair)
    free(c.Q); free(c.dQ); free(c.psi); free(c.dpsi); free(c.eta); free(c.escale)
    free(c.qp); free(c.dqp); free(c.qdp); free(c.D); free(c.DD)
    free(c.F); free(c.Fr); free(c.Fmj); free(c.Fmi); free(c.mono); free(c.pm); free(c.mom)
    free(c.g); free(c.adj); free(c.GB); free(c.comb); free(c.psii); free(c.dpsii)
    free(c)


cdef void contract_centre(Tables* t, Cols* c, int zi, double mi, bint odd) noexcept nogil:
    """D[s, zj, μ, (k, c)] = Σ_b C[zi, zj, μ, k, b, c]·σ_s(b, c)·ψ_b(m_i) and DD with ψ'_b(m_i);
    σ = 1 for the set E, (−1)^(b+c) for E⁻ (second set)."""
    cdef int C = t.C, K = t.K, R = t.R, M = t.M, RM = t.R * t.M
    cdef int zj, mu, k, b, cc, off, set2 = C * K * RM
    cdef const double* cf
    cdef double W, Wd, W2, Wd2, x, xd
    if odd:
        magnetic_basis_odd(t, zi, mi, c.psii, c.dpsii)
    else:
        magnetic_basis(t, zi, mi, c.psii, c.dpsii)
    for zj in range(C):
        for mu in range(K):
            for k in range(R):
                cf = t.coeffs + ((((zi * C + zj) * K + mu) * R + k) * M * M)
                for cc in range(M):
                    W = 0.0
                    Wd = 0.0
                    W2 = 0.0
                    Wd2 = 0.0
                    for b in range(M):
                        x = cf[b * M + cc] * c.psii[b]
                        xd = cf[b * M + cc] * c.dpsii[b]
                        W = W + x
                        Wd = Wd + xd
                        if (b + cc) & 1:
                            W2 = W2 - x
                            Wd2 = Wd2 - xd
                        else:
                            W2 = W2 + x
                            Wd2 = Wd2 + xd
                    off = ((zj * K + mu) * R + k) * M + cc
                    c.D[off] = W
                    c.DD[off] = Wd
                    if c.nsets > 1:
                        c.D[set2 + off] = W2
                        c.DD[set2 + off] = Wd2


cdef int gather_cols(Tables* t, Cols* c, int64_t i, const double[:, ::1] pos, const int[::1] types,
                     const double[::1] mag, const int64_t[::1] offsets, const int64_t[::1] nbrs,
                     bint deriv, bint odd) noexcept nogil:
    """Neighbours of i inside the cutoff as columns; bases and radial functions of every
    coefficient set. Returns the number of neighbours."""
    cdef int nn = 0, n, z, col, k, s, zj, ld = c.ld, nb = c.nb, C = t.C, K = t.K, R = t.R
    cdef int M = t.M, RM = t.R * t.M, zi = types[i]
    cdef int64_t p, j
    cdef double dx, dy, dz, r2, rc2 = t.rcut * t.rcut, width, xi = pos[i, 0], yi = pos[i, 1]
    cdef double zi_ = pos[i, 2]
    cdef bint sort = C > 1
    cdef double* ux = c.t_u if sort else c.u
    cdef double* rr = c.t_r if sort else c.r
    cdef double* mm = c.t_mj if sort else c.mj
    cdef int* zz = c.t_z if sort else c.z
    cdef int64_t* pp = c.t_pair if sort else c.pair
    cdef const double* a
    cdef int w0, w1
    if M > 1:
        contract_centre(t, c, zi, mag[i], odd)
    for p in range(offsets[i], offsets[i + 1]):
        j = nbrs[p]
        dx = pos[j, 0] - xi
        dy = pos[j, 1] - yi
        dz = pos[j, 2] - zi_
        r2 = dx * dx + dy * dy + dz * dz
        if r2 >= rc2:
            continue
        ux[nn] = dx
        ux[ld + nn] = dy
        ux[2 * ld + nn] = dz
        rr[nn] = r2
        zz[nn] = types[j]
        mm[nn] = mag[j]
        pp[nn] = p
        nn += 1
    # columns grouped by species, each group padded to the block width
    for z in range(C):
        c.cnt[z] = 0
    if sort:
        for n in range(nn):
            c.cnt[zz[n]] += 1
    else:
        c.cnt[0] = nn
    c.seg[0] = 0
    for z in range(C):
        c.seg[z + 1] = c.seg[z] + ((c.cnt[z] + nb - 1) // nb) * nb
    c.ncol = c.seg[C]
    if sort:
        for z in range(C):
            c.cnt[z] = 0
        for n in range(nn):
            z = zz[n]
            col = c.seg[z] + c.cnt[z]
            c.cnt[z] += 1
            c.u[col] = ux[n]
            c.u[ld + col] = ux[ld + n]
            c.u[2 * ld + col] = ux[2 * ld + n]
            c.r[col] = rr[n]
            c.z[col] = z
            c.mj[col] = mm[n]
            c.pair[col] = pp[n]
    for z in range(C):
        for col in range(c.seg[z] + c.cnt[z], c.seg[z + 1]):
            c.u[col] = 1.0
            c.u[ld + col] = 0.0
            c.u[2 * ld + col] = 0.0
            c.r[col] = 0.25 * rc2
            c.pair[col] = -1
            c.z[col] = z
            c.mj[col] = 0.5 * (t.mag_min[z] + t.mag_max[z])
    n = c.ncol
    mmtp_unit_cols(c.u, c.r, n, ld)
    mmtp_radial_cols(c.r, n, R, t.rmin, t.rcut, t.scaling, c.Q, c.dQ, ld, deriv)
    if M > 1:
        for col in range(n):
            z = c.z[col]
            width = t.mag_max[z] - t.mag_min[z]
            if odd:
                c.eta[col] = 2.0 * c.mj[col] / width
            else:
                c.eta[col] = (2.0 * c.mj[col] - t.mag_min[z] - t.mag_max[z]) / width
            c.escale[col] = 2.0 / width
        mmtp_cheb_cols(c.eta, c.escale, n, M, c.psi, c.dpsi, ld)
        mmtp_qp_cols(c.Q, c.dQ, c.psi, c.dpsi, R, M, n, ld, c.qp, c.dqp, c.qdp, deriv)
    # radial functions of every set, species group by species group
    for s in range(c.nsets):
        for zj in range(C):
            w0 = c.seg[zj]
            w1 = c.seg[zj + 1]
            if w1 == w0:
                continue
            if M > 1:
                a = c.D + ((s * C + zj) * K) * RM
                mmtp_gemm_cols(a, RM, K, RM, c.qp + w0, ld, w1 - w0, c.F + s * K * ld + w0, ld)
                if deriv:
                    mmtp_gemm_cols(a, RM, K, RM, c.dqp + w0, ld, w1 - w0, c.Fr + s * K * ld + w0, ld)
                    mmtp_gemm_cols(a, RM, K, RM, c.qdp + w0, ld, w1 - w0, c.Fmj + s * K * ld + w0, ld)
                    mmtp_gemm_cols(c.DD + ((s * C + zj) * K) * RM, RM, K, RM, c.qp + w0, ld, w1 - w0,
                                   c.Fmi + s * K * ld + w0, ld)
            else:
                a = t.coeffs + ((zi * C + zj) * K) * R
                mmtp_gemm_cols(a, R, K, R, c.Q + w0, ld, w1 - w0, c.F + s * K * ld + w0, ld)
                if deriv:
                    mmtp_gemm_cols(a, R, K, R, c.dQ + w0, ld, w1 - w0, c.Fr + s * K * ld + w0, ld)
            # padding columns: no contribution to the moments or to ∂E/∂m_i
            for k in range(s * K, (s + 1) * K):
                for col in range(w0 + c.cnt[zj], w1):
                    c.F[k * ld + col] = 0.0
                    c.Fmi[k * ld + col] = 0.0
    return nn


cdef double forward_cols(Tables* t, Cols* c, int zi) noexcept nogil:
    """Monomials, basic moments and products of every set; returns the mean of the sets' E_i."""
    cdef int s, mu, nm = t.n_mono, K = t.K
    cdef double e = 0.0
    mmtp_monomials_cols(t.mono_parent, t.mono_dir, nm, c.u, c.ncol, c.ld, c.mono)
    for s in range(c.nsets):
        for mu in range(K):
            mmtp_rowdots(c.F + (s * K + mu) * c.ld, c.mono, c.ld, t.mu_len[mu], c.ncol,
                         c.pm + (s * K + mu) * nm)
    if c.nsets == 1:
        return products_into(t, c.mom, c.pm, zi)
    return products_pair(t, c.mom, c.pm, c.pm + K * nm, zi)


cdef double products_pair(Tables* t, double* mom, const double* pm0, const double* pm1,
                          int zi) noexcept nogil:
    """:func:`products_into` for two coefficient sets at once, moments interleaved
    (mom[2x + s]): one sweep over the product table, the same operations on both lanes.
    Returns ½(E_i + E⁻_i)."""
    cdef int s, k, m, nm = t.n_mono, a, b, x
    cdef const int* row
    cdef double e0, e1, w
    memset(mom, 0, 2 * t.n_moments * sizeof(double))
    for s in range(t.n_basic):
        m = t.basic[4 * s] * nm + t.basic_q[s]
        mom[2 * s] = pm0[m]
        mom[2 * s + 1] = pm1[m]
    for k in range(t.n_times):
        row = t.times + 3 * k
        w = t.weights[k]
        a = 2 * row[0]
        b = 2 * row[1]
        x = 2 * row[2]
        mom[x] += w * mom[a] * mom[b]
        mom[x + 1] += w * mom[a + 1] * mom[b + 1]
    e0 = t.species[zi]
    e1 = t.species[zi]
    for k in range(t.n_basis):
        e0 = e0 + t.moment[k] * mom[2 * t.mapping[k]]
        e1 = e1 + t.moment[k] * mom[2 * t.mapping[k] + 1]
    return 0.5 * (e0 + e1)


cdef void backward_pair(Tables* t, const double* mom, double* g) noexcept nogil:
    """:func:`backward_into` for two interleaved sets (g[2x + s])."""
    cdef int k, a, b, x
    cdef const int* row
    cdef double w, g0, g1
    memset(g, 0, 2 * t.n_moments * sizeof(double))
    for k in range(t.n_basis):
        g[2 * t.mapping[k]] += t.moment[k]
        g[2 * t.mapping[k] + 1] += t.moment[k]
    for k in range(t.n_times - 1, -1, -1):
        row = t.times + 3 * k
        w = t.weights[k]
        a = 2 * row[0]
        b = 2 * row[1]
        x = 2 * row[2]
        g0 = w * g[x]
        g1 = w * g[x + 1]
        g[a] += g0 * mom[b]
        g[a + 1] += g1 * mom[b + 1]
        g[b] += g0 * mom[a]
        g[b + 1] += g1 * mom[a + 1]


cdef void adjoints_into(Tables* t, const double* g, int stride, double scale, double* adj) noexcept nogil:
    """scale·g (g[stride·x]) in the (μ, q) layout, row 4μ of adj, and its lowered copies in rows
    4μ+1+d: Σ_q g_μq ∂mono_q/∂u_d = Σ_q' adj[4μ+1+d, q'] mono_q' (∂mono_q/∂u_d = e_d mono_{q−e_d})."""
    cdef int s, mu, q, d, e, nm = t.n_mono
    cdef double gq
    cdef double* row
    memset(adj, 0, 4 * t.K * nm * sizeof(double))
    for s in range(t.n_basic):
        adj[4 * t.basic[4 * s] * nm + t.basic_q[s]] += scale * g[stride * s]
    for mu in range(t.K):
        row = adj + 4 * mu * nm
        for q in range(1, t.mu_len[mu]):
            gq = row[q]
            if gq == 0.0:
                continue
            for d in range(3):
                e = t.mono_exp[3 * q + d]
                if e > 0:
                    row[(1 + d) * nm + t.mono_low[3 * q + d]] += e * gq


cdef void derivatives_cols(Tables* t, Cols* c, double* pair_grad, double* pair_dmj,
                           double* dmi, bint magnetic_only=False) noexcept nogil:
    """∂E_i/∂r_n (pair_grad[3·pair]), ∂E_i/∂m_j (pair_dmj[pair]), ∂E_i/∂m_i of the mean of the
    sets. With G_μ = Σ_q g_μq mono_q and B = Σ_μ f_μ Σ_q g_μq ∇_u mono_q,
    ∂E_i/∂r = (Σ_μ G_μ f'_μ) u + (B − (u·B) u) / r (u·∇_u mono_q = ν_q mono_q).
    ``magnetic_only``: ∂E/∂m alone (G, not B; pair_grad is not touched): the moment relaxation's
    trial evaluations, which need no forces."""
    cdef int s, mu, col, j0, K = t.K, nm = t.n_mono, ld = c.ld, n = c.ncol
    cdef double scale = 1.0 / c.nsets
    cdef double A, Bx, By, Bz, dmj, ub, ux, uy, uz, r, acc
    cdef double* cb
    cdef int64_t p
    cdef bint mag = t.M > 1
    if c.nsets == 1:
        backward_into(t, c.mom, c.g)
        adjoints_into(t, c.g, 1, scale, c.adj)
    else:
        backward_pair(t, c.mom, c.g)
        for s in range(2):
            adjoints_into(t, c.g + s, 2, scale, c.adj + s * 4 * K * nm)
    if magnetic_only and not mag:
        dmi[0] = 0.0
        return
    j0 = 0
    while j0 < n:       # one column block at a time: its monomials stay in L1 for all rows
        for s in range(c.nsets):
            for mu in range(K):
                if magnetic_only:       # the adjoint row G alone
                    mmtp_row_block(c.adj + (s * K + mu) * 4 * nm, t.mu_len[mu], c.mono + j0, ld,
                                   c.GB + (s * K + mu) * 4 * ld + j0)
                else:
                    mmtp_adjoint_block(c.adj + (s * K + mu) * 4 * nm, nm, t.mu_len[mu], c.mu_low[mu],
                                       c.mono + j0, ld, c.GB + (s * K + mu) * 4 * ld + j0, ld)
        j0 += c.nb
    for s in range(c.nsets):
        mmtp_combine_cols(c.GB + s * 4 * K * ld, c.F + s * K * ld, c.Fr + s * K * ld,
                          c.Fmj + s * K * ld, c.Fmi + s * K * ld, K, n, ld, not magnetic_only, mag,
                          c.comb + s * 6 * ld)
    dmi[0] = 0.0
    for s in range(c.nsets):
        cb = c.comb + s * 6 * ld
        acc = 0.0
        if mag:
            for col in range(n):
                acc = acc + cb[5 * ld + col]
        dmi[0] += acc
    for col in range(n):
        p = c.pair[col]
        if p < 0:
            continue
        if magnetic_only:
            dmj = c.comb[4 * ld + col]
            if c.nsets > 1:
                dmj = dmj + c.comb[6 * ld + 4 * ld + col]
            pair_dmj[p] = dmj
            continue
        cb = c.comb
        A = cb[col]
        Bx = cb[ld + col]
        By = cb[2 * ld + col]
        Bz = cb[3 * ld + col]
        dmj = cb[4 * ld + col]
        if c.nsets > 1:
            cb = c.comb + 6 * ld
            A = A + cb[col]
            Bx = Bx + cb[ld + col]
            By = By + cb[2 * ld + col]
            Bz = Bz + cb[3 * ld + col]
            dmj = dmj + cb[4 * ld + col]
        r = c.r[col]
        ux = c.u[col]
        uy = c.u[ld + col]
        uz = c.u[2 * ld + col]
        ub = ux * Bx + uy * By + uz * Bz
        pair_grad[3 * p] = A * ux + (Bx - ub * ux) / r
        pair_grad[3 * p + 1] = A * uy + (By - ub * uy) / r
        pair_grad[3 * p + 2] = A * uz + (Bz - ub * uz) / r
        pair_dmj[p] = dmj if mag else 0.0


cdef double products_into(Tables* t, double* moments, const double* pm, int zi) noexcept nogil:
    """Basic moments from the (μ, q) accumulator, the product table, and E_i."""
    cdef int s, k, nm = t.n_mono
    cdef const int* row
    cdef double e
    memset(moments, 0, t.n_moments * sizeof(double))
    for s in range(t.n_basic):
        moments[s] = pm[t.basic[4 * s] * nm + t.basic_q[s]]
    for k in range(t.n_times):
        row = t.times + 3 * k
        moments[row[2]] += t.weights[k] * moments[row[0]] * moments[row[1]]
    e = t.species[zi]
    for k in range(t.n_basis):
        e = e + t.moment[k] * moments[t.mapping[k]]
    return e


cdef void backward_into(Tables* t, const double* moments, double* g) noexcept nogil:
    """g = ∂E_i/∂M by a reverse sweep over the product table."""
    cdef int k
    cdef const int* row
    cdef double gk
    memset(g, 0, t.n_moments * sizeof(double))
    for k in range(t.n_basis):
        g[t.mapping[k]] += t.moment[k]
    for k in range(t.n_times - 1, -1, -1):
        row = t.times + 3 * k
        gk = t.weights[k] * g[row[2]]
        if gk != 0.0:
            g[row[0]] += gk * moments[row[1]]
            g[row[1]] += gk * moments[row[0]]
