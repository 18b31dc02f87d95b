# Kernel module, part 6: parameter terms (training gradients with a tangent, grade rows) on the
# column layout of the site kernel, in one or two coefficient sets.
#
# Per centre i the neighbours are the columns of `Cols` (gather_cols, forward_cols: radial and
# magnetic bases, radial functions and their derivatives, monomials, basic moments, products);
# with two sets (spin-symmetrised model, symmetric intervals) the second set is E⁻(M) = E(−M)
# with coefficients C⁻[…, b, c] = (−1)^(b+c) C[…, b, c] (see part 2). Then, set by set:
#
#   adjoints   g_μq = ∂E_i/∂M_μq, G_μn = Σ_q g_μq mono_q(n)
#   tangent    ḟ_μn = f'_μ tr_n + ∂f_μ/∂m_i δm_i + ∂f_μ/∂m_j δm_j,  ṁono_q(n) (shared by the sets),
#              Ṁ_μq = Σ_n ḟ_μn mono_q + f_μn ṁono_q, forward sweep (Ṁ, Ė), reverse sweep h = ∂Ė/∂M,
#              A_μn = Σ_q h_μq mono_q(n) + g_μq ṁono_q(n)
#   radial-coefficient gradients, with X_bc = ψ_b(m_i) ψ_c(m_j):
#     ∂E_i/∂C[zj,μ,k,b,c] = ψ_b(m_i) Z[μ,c,k],        Z[μ,c,k] = Σ_n G_μn ψ_c Q_k
#     ∂Ė_i/∂C[zj,μ,k,b,c] = ψ_b(m_i) X[μ,c,k] + ψ'_b(m_i) δm_i Z[μ,c,k],
#        X[μ,c,k] = Σ_n (A_μn ψ_c + G_μn δm_j ψ'_c) Q_k + G_μn tr_n ψ_c Q'_k
#   (sums over the columns of one species group zj: register-blocked reductions, `mmtp_rowgemm`).
#
# The two sets are added with weights ½ and signs (−1)^(b+c) on the radial block (the chain rule
# of C⁻(C)); moment coefficients get ½(Ṁ⁺ + Ṁ⁻) and ½(M⁺ + M⁻). Every sum belongs to one centre
# (and one gradient row), in a fixed order: results do not depend on the thread count.

cdef extern from "_block.h" nogil:
    void mmtp_tmono_cols(const int* parent, const int* dir, int nm, const double* u, const double* p,
                         const double* mono, int n, int ld, double* tmono)
    void mmtp_rowdots2(const double* f, const double* x, const double* g, const double* y, int ldx,
                       int nq, int n, double* out)
    void mmtp_ga_block(const double* gm, const double* hm, int len, const double* mono,
                       const double* tmono, int ldx, double* G, double* A, int tangent)
    void mmtp_rowgemm(const double* a, const double* a2, int lda, int na, const double* b,
                      const double* b2, int ldb, int nbr, int n, double* out, int ldo)
    void mmtp_fdot_cols(const double* fr, const double* fmi, const double* fmj, const double* tr,
                        double tmi, const double* tmj, int K, int n, int ld, double* fdot)
    void mmtp_lrows_cols(const double* G, const double* A, const double* psi, const double* dpsi,
                         const double* tr, const double* tmj, int K, int M, int w0, int w1, int ld,
                         double* la, double* lb, double* lz, int tangent)
    void mmtp_param_sweeps(const int* times, const double* weights, int n_times, const int* mapping,
                           const double* moment, int n_basis, int n_moments, double* mom, double* mdot,
                           double* g, double* h, int L, int tangent)


cdef struct PCols:
    double* tv      # (3, ld) δr_ij (rows x, y, z), 0 in padding
    double* tr      # (ld,) u·δr
    double* p       # (3, ld) (δr − tr u) / r: rates of the unit vector
    double* tmj     # (ld,) δm_j, 0 in padding
    double* tmono   # (n_mono, ld) monomial rates
    double* fdot    # (K, ld) radial-function rates of one set
    double* pmd     # (nsets·K, n_mono) basic-moment rates, (μ, q) layout
    double* mdot    # (nsets·n_moments) moment rates, interleaved like Cols.mom
    double* h       # (nsets·n_moments) ∂Ė/∂M, interleaved
    double* gm      # (nsets·K, n_mono) ∂E/∂M, (μ, q) layout
    double* hm      # (nsets·K, n_mono) ∂Ė/∂M, (μ, q) layout
    double* G       # (nsets·K, ld)
    double* A       # (nsets·K, ld)
    double* la      # (K·M, ld) left factors of the reductions (one set at a time)
    double* lb
    double* lz
    double* X       # (K·M, R) reductions of one species group and set
    double* Z


cdef PCols* alloc_pcols(Tables* t, int ld, int nsets) noexcept nogil:
    cdef PCols* p = <PCols*> calloc(1, sizeof(PCols))
    cdef int K = t.K, nm = t.n_mono, KM = t.K * t.M
    p.tv = <double*> calloc(3 * ld, sizeof(double))
    p.tr = <double*> calloc(ld, sizeof(double))
    p.p = <double*> calloc(3 * ld, sizeof(double))
    p.tmj = <double*> calloc(ld, sizeof(double))
    p.tmono = <double*> calloc(nm * ld, sizeof(double))
    p.fdot = <double*> calloc(K * ld, sizeof(double))
    p.pmd = <double*> calloc(nsets * K * nm, sizeof(double))
    p.mdot = <double*> calloc(nsets * t.n_moments, sizeof(double))
    p.h = <double*> calloc(nsets * t.n_moments, sizeof(double))
    p.gm = <double*> calloc(nsets * K * nm, sizeof(double))
    p.hm = <double*> calloc(nsets * K * nm, sizeof(double))
    p.G = <double*> calloc(nsets * K * ld, sizeof(double))
    p.A = <double*> calloc(nsets * K * ld, sizeof(double))
    p.la = <double*> calloc(KM * ld, sizeof(double))
    p.lb = <double*> calloc(KM * ld, sizeof(double))
    p.lz = <double*> calloc(KM * ld, sizeof(double))
    p.X = <double*> calloc(KM * t.R, sizeof(double))
    p.Z = <double*> calloc(KM * t.R, sizeof(double))
    return p


cdef void free_pcols(PCols* p) noexcept nogil:
    free(p.tv); free(p.tr); free(p.p); free(p.tmj); free(p.tmono); free(p.fdot); free(p.pmd)
    free(p.mdot); free(p.h); free(p.gm); free(p.hm); free(p.G); free(p.A); free(p.la); free(p.lb)
    free(p.lz); free(p.X); free(p.Z)
    free(p)


cdef void tangent_cols(Tables* t, Cols* c, PCols* pc, int64_t i, const double[:, ::1] t_pos,
                       const double[::1] t_mag, const int64_t[::1] nbrs) noexcept nogil:
    """Tangent of every column: δr_ij = δr_j − δr_i, tr = u·δr, unit-vector rates, δm_j, and the
    monomial rates (0 in the padding columns)."""
    cdef int col, ld = c.ld, n = c.ncol
    cdef int64_t p, j
    cdef double dx, dy, dz, ux, uy, uz, tr, r
    for col in range(n):
        p = c.pair[col]
        if p < 0:
            dx = 0.0
            dy = 0.0
            dz = 0.0
            pc.tmj[col] = 0.0
        else:
            j = nbrs[p]
            dx = t_pos[j, 0] - t_pos[i, 0]
            dy = t_pos[j, 1] - t_pos[i, 1]
            dz = t_pos[j, 2] - t_pos[i, 2]
            pc.tmj[col] = t_mag[j]
        ux = c.u[col]
        uy = c.u[ld + col]
        uz = c.u[2 * ld + col]
        r = c.r[col]
        tr = dx * ux + dy * uy + dz * uz
        pc.tr[col] = tr
        pc.p[col] = (dx - tr * ux) / r
        pc.p[ld + col] = (dy - tr * uy) / r
        pc.p[2 * ld + col] = (dz - tr * uz) / r
    mmtp_tmono_cols(t.mono_parent, t.mono_dir, t.n_mono, c.u, pc.p, c.mono, n, ld, pc.tmono)


cdef double param_forward(Tables* t, Cols* c, PCols* pc, int zi, double t_mi, bint tangent,
                          double* grad_moment, double* t_out) noexcept nogil:
    """After gather_cols, the monomials (c.mono) and tangent_cols: basic moments and their rates of every set, the fused
    product sweeps (M, Ṁ forward; g = ∂E/∂M, h = ∂Ė/∂M reverse), and the adjoints in the
    (μ, q) layout. Adds the moment-coefficient part of ∂Ė_i/∂θ to grad_moment and stores Ė_i
    in t_out (when ``tangent``). Returns E_i (the mean of the sets)."""
    cdef int s, r_, mu, k, x, K = t.K, nm = t.n_mono, ld = c.ld, n = c.ncol, ns = c.nsets
    cdef int nmom = t.n_moments
    cdef double wt = 1.0 / ns, val = 0.0, acc, e = 0.0, es
    cdef double* gms
    for s in range(ns):
        for mu in range(K):
            mmtp_rowdots(c.F + (s * K + mu) * ld, c.mono, ld, t.mu_len[mu], n, c.pm + (s * K + mu) * nm)
    memset(c.mom, 0, ns * nmom * sizeof(double))
    for s in range(ns):
        for r_ in range(t.n_basic):
            c.mom[ns * r_ + s] = c.pm[(s * K + t.basic[4 * r_]) * nm + t.basic_q[r_]]
    if tangent:
        memset(pc.mdot, 0, ns * nmom * sizeof(double))
        for s in range(ns):
            mmtp_fdot_cols(c.Fr + s * K * ld, c.Fmi + s * K * ld, c.Fmj + s * K * ld, pc.tr, t_mi,
                           pc.tmj, K, n, ld, pc.fdot)
            for mu in range(K):
                mmtp_rowdots2(pc.fdot + mu * ld, c.mono, c.F + (s * K + mu) * ld, pc.tmono, ld,
                              t.mu_len[mu], n, pc.pmd + (s * K + mu) * nm)
            for r_ in range(t.n_basic):
                pc.mdot[ns * r_ + s] = pc.pmd[(s * K + t.basic[4 * r_]) * nm + t.basic_q[r_]]
    mmtp_param_sweeps(t.times, t.weights, t.n_times, t.mapping, t.moment, t.n_basis, nmom, c.mom,
                      pc.mdot, c.g, pc.h, ns, tangent)
    for s in range(ns):
        es = t.species[zi]
        for k in range(t.n_basis):
            es = es + t.moment[k] * c.mom[ns * t.mapping[k] + s]
        e = e + es
    # adjoints of E (and Ė) in the (μ, q) layout
    memset(pc.gm, 0, ns * K * nm * sizeof(double))
    for s in range(ns):
        gms = pc.gm + s * K * nm
        for r_ in range(t.n_basic):
            gms[t.basic[4 * r_] * nm + t.basic_q[r_]] += c.g[ns * r_ + s]
    if tangent:
        for k in range(t.n_basis):
            acc = 0.0
            for s in range(ns):
                acc = acc + pc.mdot[ns * t.mapping[k] + s]
            acc = wt * acc
            val = val + t.moment[k] * acc
            grad_moment[k] += acc
        t_out[0] = val
        memset(pc.hm, 0, ns * K * nm * sizeof(double))
        for s in range(ns):
            gms = pc.hm + s * K * nm
            for r_ in range(t.n_basic):
                gms[t.basic[4 * r_] * nm + t.basic_q[r_]] += pc.h[ns * r_ + s]
    return wt * e


cdef void param_radial(Tables* t, Cols* c, PCols* pc, double t_mi, bint tangent,
                       double* grad_radial, double* grad_site, double site_scale) noexcept nogil:
    """Radial-coefficient terms of one centre after param_forward: ∂Ė_i/∂θ into grad_radial
    (radial block of the centre's species) when ``tangent``, site_scale·∂E_i/∂θ into grad_site
    when not NULL (may equal grad_radial)."""
    cdef int s, mu, k, b, cc, zj, w0, w1, col, j0, z
    cdef int K = t.K, nm = t.n_mono, ld = c.ld, n = c.ncol, ns = c.nsets, M = t.M, R = t.R
    cdef int C = t.C, MM = t.M * t.M, KM = t.K * t.M
    cdef double wt = 1.0 / ns, sg, xv, zv
    cdef double* Gs
    cdef double* As
    cdef double* gr
    cdef double* gsite
    cdef bint need_z
    cdef int64_t off
    # G_μn (and A_μn) of every set, one column block at a time
    j0 = 0
    while j0 < n:
        for s in range(ns):
            for mu in range(K):
                mmtp_ga_block(pc.gm + (s * K + mu) * nm, pc.hm + (s * K + mu) * nm, t.mu_len[mu],
                              c.mono + j0, pc.tmono + j0, ld, pc.G + (s * K + mu) * ld + j0,
                              pc.A + (s * K + mu) * ld + j0, tangent)
        j0 += c.nb
    # padding columns contribute nothing
    for z in range(C):
        for col in range(c.seg[z] + c.cnt[z], c.seg[z + 1]):
            for k in range(ns * K):
                pc.G[k * ld + col] = 0.0
                pc.A[k * ld + col] = 0.0
    need_z = grad_site != NULL or (tangent and M > 1 and t_mi != 0.0)
    # radial-coefficient gradients, species group by species group
    for zj in range(C):
        w0 = c.seg[zj]
        w1 = c.seg[zj + 1]
        if w1 == w0:
            continue
        for s in range(ns):
            Gs = pc.G + s * K * ld
            As = pc.A + s * K * ld
            mmtp_lrows_cols(Gs, As, c.psi, c.dpsi, pc.tr, pc.tmj, K, M, w0, w1, ld, pc.la, pc.lb,
                            pc.lz, tangent)
            if tangent:
                memset(pc.X, 0, KM * R * sizeof(double))
                mmtp_rowgemm(pc.la + w0, pc.lb + w0, ld, KM, c.Q + w0, c.dQ + w0, ld, R, w1 - w0,
                             pc.X, R)
            if need_z:
                memset(pc.Z, 0, KM * R * sizeof(double))
                mmtp_rowgemm(pc.lz + w0, NULL, ld, KM, c.Q + w0, NULL, ld, R, w1 - w0, pc.Z, R)
            for mu in range(K):
                off = (zj * K + mu) * R * MM
                gr = grad_radial + off if tangent else NULL
                gsite = grad_site + off if grad_site != NULL else NULL
                for k in range(R):
                    for b in range(M):
                        for cc in range(M):
                            sg = wt
                            if s == 1 and ((b + cc) & 1):
                                sg = -wt
                            zv = pc.Z[(mu * M + cc) * R + k] if need_z else 0.0
                            if tangent:
                                xv = pc.X[(mu * M + cc) * R + k]
                                gr[k * MM + b * M + cc] += sg * (c.psii[b] * xv + c.dpsii[b] * t_mi * zv)
                            if gsite != NULL:
                                gsite[k * MM + b * M + cc] += site_scale * sg * c.psii[b] * zv


def param_terms(dict tab, const double[:, ::1] pos, const int[::1] types, const double[::1] mag,
                const int64_t[::1] offsets, const int64_t[::1] nbrs, Py_ssize_t n_local,
                double[::1] site_en, double[:, ::1] site_grad, bint want_site_grad,
                const double[:, ::1] t_pos, const double[::1] t_mag, bint want_tangent,
                double[::1] t_site, double[:, ::1] t_grad, int num_threads=0,
                const int64_t[::1] group=None, const double[::1] e_weight=None, bint symmetric=False):
    """Parameter gradients on the column layout (the NumPy ``reference.py`` gives the same
    results per atom).

    ``site_grad`` (n_local, n_params): ∂E_i/∂θ in MLIP-3 order (when ``want_site_grad``).
    With a tangent (``t_pos`` (n_total, 3) already including the strain part, ``t_mag``
    (n_total,)): ``t_site`` (n_local,) = Ė_i and ``t_grad`` rows accumulate ∂Ė_i/∂θ, one row
    per thread; the caller sums the rows (no races).

    Grouped mode (``group`` given, single thread): centre i adds into row ``group[i]`` of
    ``t_grad`` both its tangent gradient and ``e_weight[i]``·∂E_i/∂θ — one row per training
    configuration, so sums over configurations can be taken in a fixed order.

    ``symmetric``: every output is that of the spin-symmetrised model ½[E(M) + E(−M)] (with the
    tangent (δr, δm) at M, i.e. (δr, −δm) at −M), in one neighbour pass. Valid only for a
    magnetic potential (M > 1) whose magnetic intervals are all symmetric (m_min = −m_max); the
    caller checks (:meth:`MTPEngine.one_pass_symmetric`).
    """
    cdef Tables t = make_tables(tab)
    cdef int nmax = max_neighbors(offsets)
    cdef int nsets = 2 if symmetric else 1
    cdef Py_ssize_t i
    cdef int k, tid, col, m
    cdef Cols* c
    cdef PCols* pc
    cdef int n_radial = t.C * t.C * t.K * t.R * t.M * t.M
    cdef int block = t.C * t.K * t.R * t.M * t.M
    cdef double* gs
    cdef double* tg
    cdef double tval, scale, mb
    cdef bint grouped = group is not None
    if symmetric and t.M < 2:
        raise ValueError("symmetric parameter terms need a magnetic potential (M > 1)")
    if n_local == 0:
        return
    if grouped:
        num_threads = 1
    with nogil, parallel(num_threads=num_threads if num_threads > 0 else openmp_threads()):
        c = alloc_cols(&t, nmax, nsets)
        pc = alloc_pcols(&t, c.ld, nsets)
        if t.M == 1:      # ψ_0 = 1 on every column, ψ_0(m_i) = 1 (gather_cols leaves them)
            for col in range(c.ld):
                c.psi[col] = 1.0
            c.psii[0] = 1.0
        for i in prange(n_local, schedule="dynamic", chunksize=8):
            tid = thread_id()
            gather_cols(&t, c, i, pos, types, mag, offsets, nbrs, want_tangent, symmetric)
            mmtp_monomials_cols(t.mono_parent, t.mono_dir, t.n_mono, c.u, c.ncol, c.ld, c.mono)
            if want_tangent:
                tangent_cols(&t, c, pc, i, t_pos, t_mag, nbrs)
            tval = 0.0
            tg = &t_grad[group[i] if grouped else tid, 0] if want_tangent or grouped else NULL
            site_en[i] = param_forward(&t, c, pc, types[i], t_mag[i] if want_tangent else 0.0,
                                       want_tangent, tg + n_radial + t.C if want_tangent else NULL,
                                       &tval)
            gs = NULL
            scale = 1.0
            if grouped:
                scale = e_weight[i]
                if scale != 0.0:
                    for k in range(t.n_basis):
                        m = t.mapping[k]
                        mb = c.mom[m] if nsets == 1 else 0.5 * (c.mom[2 * m] + c.mom[2 * m + 1])
                        tg[n_radial + t.C + k] += scale * mb
                    tg[n_radial + types[i]] += scale
                    gs = tg + types[i] * block
            elif want_site_grad:
                gs = &site_grad[i, 0]
                for k in range(t.n_basis):
                    m = t.mapping[k]
                    mb = c.mom[m] if nsets == 1 else 0.5 * (c.mom[2 * m] + c.mom[2 * m + 1])
                    site_grad[i, n_radial + t.C + k] = mb
                site_grad[i, n_radial + types[i]] = 1.0
                gs = gs + types[i] * block
            param_radial(&t, c, pc, t_mag[i] if want_tangent else 0.0, want_tangent,
                         tg + types[i] * block if want_tangent else NULL, gs, scale)
            if want_tangent:
                t_site[i] = tval
        free_pcols(pc)
        free_cols(c)


def basis_jacobian(dict tab, const double[:, ::1] pos, const int[::1] types, const double[::1] mag,
                   const int64_t[::1] offsets, const int64_t[::1] nbrs, Py_ssize_t n_local,
                   double[::1] basis_sum, double[:, :, ::1] d_forces, double[:, :, ::1] d_virial,
                   double[:, ::1] d_magnetic, bint symmetric=False):
    """Derivatives of every basis function summed over centres, on the column layout: the
    design matrix of the linear coefficients.

    basis_sum (n_basis,) += Σ_i B_α(i); d_forces (n_total, 3, n_basis) += −∂(Σ_i B_α(i))/∂r;
    d_virial (3, 3, n_basis) += −Σ (∂B_α(i)/∂r_ij)_a (r_ij)_b; d_magnetic (n_total, n_basis)
    += ∂(Σ_i B_α(i))/∂m. Forward mode: all tangent directions of one centre (3 per neighbour,
    plus m_j per neighbour and m_i when magnetic) are pushed through the product table together.
    ``symmetric``: those of the spin-symmetrised basis ½[B_α(M) + B_α(−M)] in one neighbour pass
    (the second coefficient set, as in :func:`param_terms`; symmetric intervals only).
    """
    cdef Tables t = make_tables(tab)
    cdef int nmax = max_neighbors(offsets)
    cdef int nsets = 2 if symmetric else 1
    cdef bint magnetic = t.M > 1
    cdef int per = 4 if magnetic else 3
    cdef Cols* c
    cdef double* mdot
    cdef double* mom = NULL
    cdef Py_ssize_t i
    cdef int s, b_, k, z, col, dd, nd, mu, a_, b2, c_, nu, q, x, K = t.K, ld, ncol
    cdef const int* row
    cdef double wk, mi_, mj_, fm, fr, mono, r, rad, gx, gy, gz, half
    cdef double* src_i
    cdef double* src_j
    cdef double* dst
    cdef int64_t p, j
    if symmetric and t.M < 2:
        raise ValueError("a symmetric basis Jacobian needs a magnetic potential (M > 1)")
    if n_local == 0:
        return
    c = alloc_cols(&t, nmax, nsets)
    ld = c.ld
    mdot = <double*> malloc(<size_t> t.n_moments * (per * ld + 1) * sizeof(double))
    mom = <double*> malloc(t.n_moments * sizeof(double))
    if mdot == NULL or mom == NULL:
        free(mdot); free(mom); free_cols(c)
        raise MemoryError("basis Jacobian: out of memory")
    half = 0.5 if nsets == 2 else 1.0
    try:
        with nogil:
            for i in range(n_local):
                gather_cols(&t, c, i, pos, types, mag, offsets, nbrs, True, symmetric)
                forward_cols(&t, c, types[i])
                ncol = c.ncol
                nd = per * ncol + (1 if magnetic else 0)
                for s in range(nsets):
                    for x in range(t.n_moments):
                        mom[x] = c.mom[x] if nsets == 1 else c.mom[2 * x + s]
                    memset(mdot, 0, <size_t> t.n_moments * nd * sizeof(double))
                    # tangents of the basic moments: column n contributes only to its own directions
                    for b_ in range(t.n_basic):
                        row = t.basic + 4 * b_
                        mu = row[0]
                        a_ = row[1]
                        b2 = row[2]
                        c_ = row[3]
                        nu = a_ + b2 + c_
                        q = t.basic_q[b_]
                        for z in range(t.C):
                            for col in range(c.seg[z], c.seg[z] + c.cnt[z]):
                                r = c.r[col]
                                fm = c.F[(s * K + mu) * ld + col]
                                fr = c.Fr[(s * K + mu) * ld + col]
                                mono = c.mono[q * ld + col]
                                rad = fr * mono - fm * nu * mono / r
                                gx = fm * a_ * c.mono[t.mono_low[3 * q] * ld + col] / r if a_ > 0 else 0.0
                                gy = fm * b2 * c.mono[t.mono_low[3 * q + 1] * ld + col] / r if b2 > 0 else 0.0
                                gz = fm * c_ * c.mono[t.mono_low[3 * q + 2] * ld + col] / r if c_ > 0 else 0.0
                                dst = mdot + b_ * nd + per * col
                                dst[0] = rad * c.u[col] + gx
                                dst[1] = rad * c.u[ld + col] + gy
                                dst[2] = rad * c.u[2 * ld + col] + gz
                                if magnetic:
                                    dst[3] = c.Fmj[(s * K + mu) * ld + col] * mono
                                    mdot[b_ * nd + per * ncol] += c.Fmi[(s * K + mu) * ld + col] * mono
                    for k in range(t.n_times):
                        row = t.times + 3 * k
                        wk = t.weights[k]
                        mi_ = wk * mom[row[1]]
                        mj_ = wk * mom[row[0]]
                        src_i = mdot + row[0] * nd
                        src_j = mdot + row[1] * nd
                        dst = mdot + row[2] * nd
                        for dd in range(nd):
                            dst[dd] += src_i[dd] * mi_ + src_j[dd] * mj_
                    for k in range(t.n_basis):
                        basis_sum[k] += half * mom[t.mapping[k]]
                        src_i = mdot + t.mapping[k] * nd
                        for z in range(t.C):
                            for col in range(c.seg[z], c.seg[z] + c.cnt[z]):
                                p = c.pair[col]
                                j = nbrs[p]
                                r = c.r[col]
                                for dd in range(3):
                                    gx = half * src_i[per * col + dd]
                                    d_forces[j, dd, k] -= gx
                                    d_forces[i, dd, k] += gx
                                    d_virial[dd, 0, k] -= gx * r * c.u[col]
                                    d_virial[dd, 1, k] -= gx * r * c.u[ld + col]
                                    d_virial[dd, 2, k] -= gx * r * c.u[2 * ld + col]
                                if magnetic:
                                    d_magnetic[j, k] += half * src_i[per * col + 3]
                        if magnetic:
                            d_magnetic[i, k] += half * src_i[per * ncol]
    finally:
        free(mdot)
        free(mom)
        free_cols(c)
