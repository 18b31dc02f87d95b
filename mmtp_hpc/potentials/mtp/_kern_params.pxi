# Kernel module, part 5: the per-neighbour parameter terms (the reference of part 6,
# ``param_terms_neighbours``) and the basis Jacobian, on the per-neighbour layout of part 1.

cdef void tangent_atom(Tables* t, Work* w, int nn, int zi, double t_mi, double* t_out,
                       double* grad_radial, double* grad_moment, double* grad_site,
                       bint want_tangent, double site_scale=1.0) noexcept nogil:
    """∂E_i/∂θ (grad_site, radial block of species zi) and, with a tangent, Ė_i and ∂Ė_i/∂θ.

    Needs gather, forward (monomials kept in w.monos) and backward (g) done for this atom.
    Monomials along the tangent: mono_q = mono_p u_d ⇒ δmono_q = δmono_p u_d + mono_p δu_d,
    δu = (δr − (u·δr) u) / r. Adjoints of the basic moments are used in the dense (μ, q)
    layout: gm for E (and Ė w.r.t. Ṁ), hm for Ė w.r.t. M.
    """
    cdef int n, s, mu, k, b, c, q, R = t.R, M = t.M, K = t.K, zj, nm = t.n_mono, p_, d_
    cdef const int* row
    cdef double gs, fdot, tr, val, gk, hk, G, A, px, py, pz, r
    cdef double* q_
    cdef double* dq
    cdef double* mono
    cdef double* mdot_n
    cdef double* du
    cdef int64_t off
    memset(w.gm, 0, K * nm * sizeof(double))
    for s in range(t.n_basic):
        w.gm[t.basic[4 * s] * nm + t.basic_q[s]] += w.g[s]
    if want_tangent:
        # tangents of the monomials, kept per neighbour (w.tmono, (nmax, n_mono))
        for mu in range(K):
            memset(w.pm + mu * nm, 0, t.mu_len[mu] * sizeof(double))
        for n in range(nn):
            mono = w.monos + n * nm
            mdot_n = w.tmono + n * nm
            r = w.r[n]
            tr = w.tr[n]
            px = (w.tv[3 * n] - tr * w.u[3 * n]) / r
            py = (w.tv[3 * n + 1] - tr * w.u[3 * n + 1]) / r
            pz = (w.tv[3 * n + 2] - tr * w.u[3 * n + 2]) / r
            mdot_n[0] = 0.0
            for q in range(1, nm):
                p_ = t.mono_parent[q]
                d_ = t.mono_dir[q]
                mdot_n[q] = mdot_n[p_] * w.u[3 * n + d_] + mono[p_] * (px if d_ == 0 else (py if d_ == 1 else pz))
            for mu in range(K):
                fdot = w.dfr[n * K + mu] * tr + w.dfmi[n * K + mu] * t_mi + w.dfmj[n * K + mu] * w.tmj[n]
                mmtp_axpy(w.pm + mu * nm, fdot, mono, t.mu_len[mu])
                mmtp_axpy(w.pm + mu * nm, w.f[n * K + mu], mdot_n, t.mu_len[mu])
        memset(w.mdot, 0, t.n_moments * sizeof(double))
        for s in range(t.n_basic):
            w.mdot[s] = w.pm[t.basic[4 * s] * nm + t.basic_q[s]]
        for k in range(t.n_times):
            row = t.times + 3 * k
            w.mdot[row[2]] += t.weights[k] * (w.mdot[row[0]] * w.moments[row[1]]
                                              + w.moments[row[0]] * w.mdot[row[1]])
        val = 0.0
        for k in range(t.n_basis):
            val = val + t.moment[k] * w.mdot[t.mapping[k]]
            grad_moment[k] += w.mdot[t.mapping[k]]
        t_out[0] = val
        memset(w.h, 0, t.n_moments * sizeof(double))
        for k in range(t.n_times - 1, -1, -1):
            row = t.times + 3 * k
            gk = t.weights[k] * w.g[row[2]]
            hk = t.weights[k] * w.h[row[2]]
            w.h[row[0]] += gk * w.mdot[row[1]] + hk * w.moments[row[1]]
            w.h[row[1]] += gk * w.mdot[row[0]] + hk * w.moments[row[0]]
        memset(w.gxm, 0, K * nm * sizeof(double))     # hm: adjoint of M for Ė, (μ, q) layout
        for s in range(t.n_basic):
            w.gxm[t.basic[4 * s] * nm + t.basic_q[s]] += w.h[s]
    # radial-coefficient gradients, neighbour by neighbour:
    # ∂E_i/∂C[zj,μ,k,b,c] ∋ G_μ Q_k X_bc and ∂Ė_i/∂C ∋ Q_k (A_μ X_bc + G_μ Y_bc) + Q'_k G_μ δr X_bc
    # with X_bc = ψ_b(m_i) ψ_c(m_j), Y_bc = ψ'_b δm_i ψ_c + ψ_b ψ'_c δm_j (contiguous over k, b, c)
    cdef int MM = M * M, bc
    cdef double* X = w.xbc      # (M·M,) scratch sized from the potential
    cdef double* Y = w.ybc
    cdef double* U = w.ubc
    cdef double* V = w.vbc
    cdef double* S = w.sbc
    cdef double* gr
    cdef double* gsite
    cdef bint same = grad_site != NULL and grad_site == grad_radial
    for n in range(nn):
        zj = w.z[n]
        mono = w.monos + n * nm
        q_ = w.q + n * R
        dq = w.dq + n * R
        tr = w.tr[n] if want_tangent else 0.0
        for b in range(M):
            for c in range(M):
                X[b * M + c] = w.psii[b] * w.psij[n * M + c]
                if want_tangent:
                    Y[b * M + c] = (w.dpsii[b] * t_mi * w.psij[n * M + c]
                                    + w.psii[b] * w.dpsij[n * M + c] * w.tmj[n])
        for mu in range(K):
            G = mmtp_dot(w.gm + mu * nm, mono, t.mu_len[mu])
            off = (zj * K + mu) * R * MM
            if want_tangent:
                A = (mmtp_dot(w.gxm + mu * nm, mono, t.mu_len[mu])
                     + mmtp_dot(w.gm + mu * nm, w.tmono + n * nm, t.mu_len[mu]))
                for bc in range(MM):
                    U[bc] = A * X[bc] + G * Y[bc]
                    V[bc] = G * tr * X[bc]
                    if same:
                        U[bc] = U[bc] + site_scale * G * X[bc]
                gr = grad_radial + off
                for k in range(R):
                    for bc in range(MM):
                        gr[k * MM + bc] += q_[k] * U[bc] + dq[k] * V[bc]
            if grad_site != NULL and not same:
                for bc in range(MM):
                    S[bc] = site_scale * G * X[bc]
                gsite = grad_site + off
                for k in range(R):
                    for bc in range(MM):
                        gsite[k * MM + bc] += q_[k] * S[bc]


def param_terms_neighbours(dict tab, const double[:, ::1] pos, const int[::1] types, const double[::1] mag,
                const int64_t[::1] offsets, const int64_t[::1] nbrs, Py_ssize_t n_local,
                double[::1] site_en, double[:, ::1] site_grad, bint want_site_grad,
                const double[:, ::1] t_pos, const double[::1] t_mag, bint want_tangent,
                double[::1] t_site, double[:, ::1] t_grad, int num_threads=0,
                const int64_t[::1] group=None, const double[::1] e_weight=None):
    """Parameter gradients on the per-neighbour layout (the older kernel; :func:`param_terms`
    computes the same on the column layout, also spin-symmetrised in one pass). Kept as the
    reference of the column kernel in the tests.

    ``site_grad`` (n_local, n_params): ∂E_i/∂θ in MLIP-3 order (when ``want_site_grad``).
    With a tangent (``t_pos`` (n_total, 3) already including the strain part, ``t_mag``
    (n_total,)): ``t_site`` (n_local,) = Ė_i and ``t_grad`` rows accumulate ∂Ė_i/∂θ, one row
    per thread; the caller sums the rows (no races).

    Grouped mode (``group`` given, single thread): centre i adds into row ``group[i]`` of
    ``t_grad`` both its tangent gradient and ``e_weight[i]``·∂E_i/∂θ — one row per training
    configuration, so sums over configurations can be taken in a fixed order.
    """
    cdef Tables t = make_tables(tab)
    cdef int nmax = max_neighbors(offsets)
    cdef Py_ssize_t i
    cdef int nn, k, tid, n
    cdef int64_t p, j
    cdef Work* w
    cdef int n_radial = t.C * t.C * t.K * t.R * t.M * t.M
    cdef int block = t.C * t.K * t.R * t.M * t.M
    cdef double* gs
    cdef double* tg
    cdef double tval, dx, dy, dz, scale
    cdef bint grouped = group is not None
    if n_local == 0:
        return
    if grouped:
        num_threads = 1
    with nogil, parallel(num_threads=num_threads if num_threads > 0 else openmp_threads()):
        w = alloc_work(&t, nmax)
        for i in prange(n_local, schedule="dynamic", chunksize=8):
            tid = thread_id()
            nn = gather(&t, w, i, pos, types, mag, offsets, nbrs)
            site_en[i] = forward(&t, w, nn, types[i])
            backward_into(&t, w.moments, w.g)
            gs = NULL
            scale = 1.0
            tg = NULL
            if grouped:
                tg = &t_grad[group[i], 0]
                scale = e_weight[i]
                if scale != 0.0:
                    for k in range(t.n_basis):
                        tg[n_radial + t.C + k] += scale * w.moments[t.mapping[k]]
                    tg[n_radial + types[i]] += scale
                    gs = tg + types[i] * block
            elif want_site_grad:
                gs = &site_grad[i, 0]
                for k in range(t.n_basis):
                    site_grad[i, n_radial + t.C + k] = w.moments[t.mapping[k]]
                site_grad[i, n_radial + types[i]] = 1.0
                gs = gs + types[i] * block
            if want_tangent:
                if not grouped:
                    tg = &t_grad[tid, 0]
                for n in range(nn):
                    p = w.pair[n]
                    j = nbrs[p]
                    dx = t_pos[j, 0] - t_pos[i, 0]
                    dy = t_pos[j, 1] - t_pos[i, 1]
                    dz = t_pos[j, 2] - t_pos[i, 2]
                    w.tv[3 * n] = dx
                    w.tv[3 * n + 1] = dy
                    w.tv[3 * n + 2] = dz
                    w.tr[n] = dx * w.u[3 * n] + dy * w.u[3 * n + 1] + dz * w.u[3 * n + 2]
                    w.tmj[n] = t_mag[j]
            tval = 0.0
            tangent_atom(&t, w, nn, types[i], t_mag[i] if want_tangent else 0.0, &tval,
                         tg + types[i] * block if want_tangent else NULL,
                         tg + n_radial + t.C if want_tangent else NULL, gs, want_tangent, scale)
            if want_tangent:
                t_site[i] = tval
        free_work(w)



def basis_jacobian_neighbours(dict tab, const double[:, ::1] pos, const int[::1] types, const double[::1] mag,
                   const int64_t[::1] offsets, const int64_t[::1] nbrs, Py_ssize_t n_local,
                   double[::1] basis_sum, double[:, :, ::1] d_forces, double[:, :, ::1] d_virial,
                   double[:, ::1] d_magnetic):
    """Derivatives of every basis function summed over centres: the design matrix of the
    linear coefficients (the older per-neighbour kernel: the reference of
    :func:`basis_jacobian`).

    basis_sum (n_basis,) += Σ_i B_α(i); d_forces (n_total, 3, n_basis) += −∂(Σ_i B_α(i))/∂r;
    d_virial (3, 3, n_basis) += −Σ (∂B_α(i)/∂r_ij)_a (r_ij)_b; d_magnetic (n_total, n_basis)
    += ∂(Σ_i B_α(i))/∂m. Forward mode: all tangent directions of one centre (3 per neighbour,
    plus m_j per neighbour and m_i when magnetic) are pushed through the product table together.
    """
    cdef Tables t = make_tables(tab)
    cdef int nmax = max_neighbors(offsets)
    cdef bint magnetic = t.M > 1
    cdef int per = 4 if magnetic else 3
    cdef int D = per * nmax + 1
    cdef Work* w = alloc_work(&t, nmax)
    cdef double* mdot = <double*> malloc(t.n_moments * D * sizeof(double))
    cdef double* grow = <double*> malloc(D * sizeof(double))
    cdef Py_ssize_t i
    cdef int nn, n, s, k, a, b, dd, nd, mu, a_, b_, c_, nu
    cdef const int* row
    cdef double mono, wk, mi_, mj_, fm, r, ux, uy, uz, gx, gy, gz, rad
    cdef double* src_i
    cdef double* src_j
    cdef double* dst
    cdef int64_t p, j
    try:
        with nogil:
            for i in range(n_local):
                nn = gather(&t, w, i, pos, types, mag, offsets, nbrs)
                forward(&t, w, nn, types[i])
                nd = per * nn + (1 if magnetic else 0)
                memset(mdot, 0, t.n_moments * nd * sizeof(double))
                # tangents of basic moments: neighbour n contributes only to its own columns
                for n in range(nn):
                    powers(&t, w, n)
                    r = w.r[n]
                    ux = w.u[3 * n]
                    uy = w.u[3 * n + 1]
                    uz = w.u[3 * n + 2]
                    for s in range(t.n_basic):
                        row = t.basic + 4 * s
                        mu = row[0]
                        a_ = row[1]
                        b_ = row[2]
                        c_ = row[3]
                        nu = a_ + b_ + c_
                        mono = w.px[a_] * w.py[b_] * w.pz[c_]
                        fm = w.f[n * t.K + mu]
                        rad = w.dfr[n * t.K + mu] * mono - fm * nu * mono / r
                        gx = fm * a_ * w.px[a_ - 1] * w.py[b_] * w.pz[c_] / r if a_ > 0 else 0.0
                        gy = fm * b_ * w.px[a_] * w.py[b_ - 1] * w.pz[c_] / r if b_ > 0 else 0.0
                        gz = fm * c_ * w.px[a_] * w.py[b_] * w.pz[c_ - 1] / r if c_ > 0 else 0.0
                        dst = mdot + s * nd + per * n
                        dst[0] = rad * ux + gx
                        dst[1] = rad * uy + gy
                        dst[2] = rad * uz + gz
                        if magnetic:
                            dst[3] = w.dfmj[n * t.K + mu] * mono
                            mdot[s * nd + per * nn] += w.dfmi[n * t.K + mu] * mono
                for k in range(t.n_times):
                    row = t.times + 3 * k
                    wk = t.weights[k]
                    mi_ = wk * w.moments[row[1]]
                    mj_ = wk * w.moments[row[0]]
                    src_i = mdot + row[0] * nd
                    src_j = mdot + row[1] * nd
                    dst = mdot + row[2] * nd
                    for dd in range(nd):
                        dst[dd] += src_i[dd] * mi_ + src_j[dd] * mj_
                for k in range(t.n_basis):
                    basis_sum[k] += w.moments[t.mapping[k]]
                    src_i = mdot + t.mapping[k] * nd
                    for n in range(nn):
                        p = w.pair[n]
                        j = nbrs[p]
                        for a in range(3):
                            gx = src_i[per * n + a]
                            d_forces[j, a, k] -= gx
                            d_forces[i, a, k] += gx
                            for b in range(3):
                                d_virial[a, b, k] -= gx * w.r[n] * w.u[3 * n + b]
                        if magnetic:
                            d_magnetic[j, k] += src_i[per * n + 3]
                    if magnetic:
                        d_magnetic[i, k] += src_i[per * nn]
    finally:
        free(mdot)
        free(grow)
        free_work(w)
