# cython: language_level=3
"""Fast MTP kernels: site energies, per-pair derivatives and parameter gradients.

Same formulas as ``reference.py`` (spec §2). Layout: atoms 0..n_local-1 are the
centres; neighbour indices (CSR ``offsets``/``neighbors``) point into the
local+ghost arrays ``positions``/``types``/``magmoms``. Pairs at r ≥ cutoff
(the skin of a Verlet list) are skipped. Derivatives are written per pair
(∂E_i/∂r_ij and ∂E_i/∂m_j) and per centre (∂E_i/∂m_i), so the parallel loop
over centres has no write conflicts; :func:`scatter_pairs_grouped` folds them into
forces, ∂E/∂m and the virial.

All outputs are allocated by the caller. No Python objects in the loops.
"""

cimport cython
from cython.parallel cimport prange, parallel
from libc.math cimport sqrt
from libc.stdlib cimport malloc, free
from libc.string cimport memset
from libc.stdint cimport int64_t

import numpy as np


cdef extern from "_simd.h" nogil:
    double mmtp_dot(const double* a, const double* b, int n)
    void mmtp_dot4m(const double* a, const double* b, const double* c, const double* d,
                    const double* m, int n, double* sa, double* sb, double* sc, double* sd)
    void mmtp_dot4(const double* cf, const double* cfd, const double* qp, const double* dqp,
                   const double* qdp, int n, double* s, double* w, double* wd, double* wi)
    void mmtp_dot2(const double* cf, const double* q, const double* dq, int n, double* s, double* w)
    void mmtp_axpy(double* y, double alpha, const double* x, int n)
    void mmtp_axpy2(double* y, double alpha, double* y2, double alpha2, const double* x, int n)
    void mmtp_dot8(const double* cf, const double* cfd, const double* cf2, const double* cfd2,
                   const double* qp, const double* dqp, const double* qdp, int n, double* out)
    void mmtp_dot8m(const double* a, const double* b, const double* c, const double* d,
                    const double* a2, const double* b2, const double* c2, const double* d2,
                    const double* m, int n, double* out)


cdef struct Tables:
    int C, K, R, M, n_basic, n_times, n_moments, n_basis, max_pow, n_mono
    double rmin, rcut, scaling
    const int* basic        # (n_basic, 4): mu, a, b, c
    const int* times        # (n_times, 3): i, j, k
    const double* weights   # (n_times,)
    const int* mapping      # (n_basis,)
    const double* coeffs    # (C, C, K, R, M, M)
    const double* species   # (C,)
    const double* moment    # (n_basis,)
    const double* mag_min   # (C,)
    const double* mag_max   # (C,)
    const int* mono_parent  # (n_mono,) monomial q = monomial parent[q] · u[dir[q]]
    const int* mono_dir     # (n_mono,)
    const int* mono_exp     # (n_mono, 3) exponents a, b, c
    const int* mono_low     # (n_mono, 3) index of the monomial with that exponent lowered by one
    const int* basic_q      # (n_basic,) monomial of each basic row
    const int* mu_len       # (K,) basic rows of radial function μ use monomials 0..mu_len[μ]-1


cdef struct Work:
    double* r
    double* u
    int* z
    double* mj
    int64_t* pair
    double* q
    double* dq
    double* psij
    double* dpsij
    double* f
    double* dfr
    double* dfmi
    double* dfmj
    double* moments
    double* g
    double* d
    double* dd
    double* psii
    double* dpsii
    double* px
    double* py
    double* pz
    double* pm      # (K, n_mono) Σ_n f_μ mono_q: basic moments in (μ, q) layout
    double* gm      # (K, n_mono) ∂E_i/∂M in (μ, q) layout
    double* gxm     # (3, K, n_mono) lowered adjoints: Σ_q g_μq ∂mono_q/∂u_d = Σ_q' gxm[d,μ,q'] mono_q'
    double* monos   # (nmax, n_mono) monomials of every neighbour (kept from the forward pass)
    double* tmono   # (nmax, n_mono) their derivatives along a tangent
    double* qp      # (R·M,) Q_k ψ_c(m_j)
    double* dqp     # (R·M,) Q'_k ψ_c(m_j)
    double* qdp     # (R·M,) Q_k ψ'_c(m_j)
    # second coefficient set of the one-pass symmetrised evaluation: E⁻(M) = E(−M)
    double* f2
    double* dfr2
    double* dfmi2
    double* dfmj2
    double* moments2
    double* g2
    double* d2
    double* dd2
    double* pm2
    double* gm2
    double* gxm2
    # tangent-mode extras
    double* tr
    double* tv
    double* tmj
    double* mdot
    double* h


cdef Work* alloc_work(Tables* t, int nmax) noexcept nogil:
    cdef Work* w = <Work*> malloc(sizeof(Work))
    cdef int n = nmax if nmax > 0 else 1
    w.r = <double*> malloc(n * sizeof(double))
    w.u = <double*> malloc(3 * n * sizeof(double))
    w.z = <int*> malloc(n * sizeof(int))
    w.mj = <double*> malloc(n * sizeof(double))
    w.pair = <int64_t*> malloc(n * sizeof(int64_t))
    w.q = <double*> malloc(n * t.R * sizeof(double))
    w.dq = <double*> malloc(n * t.R * sizeof(double))
    w.psij = <double*> malloc(n * t.M * sizeof(double))
    w.dpsij = <double*> malloc(n * t.M * sizeof(double))
    w.f = <double*> malloc(n * t.K * sizeof(double))
    w.dfr = <double*> malloc(n * t.K * sizeof(double))
    w.dfmi = <double*> malloc(n * t.K * sizeof(double))
    w.dfmj = <double*> malloc(n * t.K * sizeof(double))
    w.moments = <double*> malloc(t.n_moments * sizeof(double))
    w.g = <double*> malloc(t.n_moments * sizeof(double))
    w.d = <double*> malloc(t.C * t.K * t.R * t.M * sizeof(double))
    w.dd = <double*> malloc(t.C * t.K * t.R * t.M * sizeof(double))
    w.psii = <double*> malloc(t.M * sizeof(double))
    w.dpsii = <double*> malloc(t.M * sizeof(double))
    w.px = <double*> malloc((t.max_pow + 1) * sizeof(double))
    w.py = <double*> malloc((t.max_pow + 1) * sizeof(double))
    w.pz = <double*> malloc((t.max_pow + 1) * sizeof(double))
    w.pm = <double*> malloc(t.K * t.n_mono * sizeof(double))
    w.gm = <double*> malloc(t.K * t.n_mono * sizeof(double))
    w.gxm = <double*> malloc(3 * t.K * t.n_mono * sizeof(double))
    w.monos = <double*> malloc(n * t.n_mono * sizeof(double))
    w.tmono = <double*> malloc(n * t.n_mono * sizeof(double))
    w.qp = <double*> malloc(t.R * t.M * sizeof(double))
    w.dqp = <double*> malloc(t.R * t.M * sizeof(double))
    w.qdp = <double*> malloc(t.R * t.M * sizeof(double))
    w.f2 = <double*> malloc(n * t.K * sizeof(double))
    w.dfr2 = <double*> malloc(n * t.K * sizeof(double))
    w.dfmi2 = <double*> malloc(n * t.K * sizeof(double))
    w.dfmj2 = <double*> malloc(n * t.K * sizeof(double))
    w.moments2 = <double*> malloc(t.n_moments * sizeof(double))
    w.g2 = <double*> malloc(t.n_moments * sizeof(double))
    w.d2 = <double*> malloc(t.C * t.K * t.R * t.M * sizeof(double))
    w.dd2 = <double*> malloc(t.C * t.K * t.R * t.M * sizeof(double))
    w.pm2 = <double*> malloc(t.K * t.n_mono * sizeof(double))
    w.gm2 = <double*> malloc(t.K * t.n_mono * sizeof(double))
    w.gxm2 = <double*> malloc(3 * t.K * t.n_mono * sizeof(double))
    w.tr = <double*> malloc(n * sizeof(double))
    w.tv = <double*> malloc(3 * n * sizeof(double))
    w.tmj = <double*> malloc(n * sizeof(double))
    w.mdot = <double*> malloc(t.n_moments * sizeof(double))
    w.h = <double*> malloc(t.n_moments * sizeof(double))
    return w


cdef void free_work(Work* w) noexcept nogil:
    free(w.r); free(w.u); free(w.z); free(w.mj); free(w.pair); free(w.q); free(w.dq)
    free(w.psij); free(w.dpsij); free(w.f); free(w.dfr); free(w.dfmi); free(w.dfmj)
    free(w.moments); free(w.g); free(w.d); free(w.dd); free(w.psii); free(w.dpsii)
    free(w.px); free(w.py); free(w.pz)
    free(w.pm); free(w.gm); free(w.gxm); free(w.monos); free(w.tmono); free(w.qp); free(w.dqp); free(w.qdp)
    free(w.tr); free(w.tv); free(w.tmj); free(w.mdot); free(w.h)
    free(w.f2); free(w.dfr2); free(w.dfmi2); free(w.dfmj2); free(w.moments2); free(w.g2)
    free(w.d2); free(w.dd2); free(w.pm2); free(w.gm2); free(w.gxm2)
    free(w)


cdef inline void chebyshev(double x, int n, double scale, double* t, double* dt) noexcept nogil:
    """T_k(x), k < n, and scale·T'_k(x)."""
    cdef int k
    t[0] = 1.0
    dt[0] = 0.0
    if n > 1:
        t[1] = x
        dt[1] = scale
    for k in range(2, n):
        t[k] = 2.0 * x * t[k - 1] - t[k - 2]
        dt[k] = 2.0 * scale * t[k - 1] + 2.0 * x * dt[k - 1] - dt[k - 2]


cdef inline void magnetic_basis(Tables* t, int z, double m, double* psi, double* dpsi) noexcept nogil:
    cdef double lo, hi
    if t.M == 1:
        psi[0] = 1.0
        dpsi[0] = 0.0
        return
    lo = t.mag_min[z]
    hi = t.mag_max[z]
    chebyshev((2.0 * m - lo - hi) / (hi - lo), t.M, 2.0 / (hi - lo), psi, dpsi)


cdef int gather(Tables* t, Work* w, int64_t i, const double[:, ::1] pos, const int[::1] types,
                const double[::1] mag, const int64_t[::1] offsets, const int64_t[::1] nbrs,
                bint deriv=True) noexcept nogil:
    """Neighbours of i inside the cutoff: vectors, radial and magnetic bases, f_μ and derivatives."""
    cdef int nn = 0, k, mu, b, c, zj, zi = types[i]
    cdef int64_t p, j
    cdef double dx, dy, dz, r2, r, rc2 = t.rcut * t.rcut, env, denv, s
    cdef double W, Wd, Wi
    cdef int C = t.C, K = t.K, R = t.R, M = t.M
    cdef const double* cf
    cdef const double* cfd
    cdef double* q
    cdef double* dq
    cdef double xscale = 2.0 / (t.rcut - t.rmin)
    # per-centre contraction of the coefficients with ψ_b(m_i): D[zj, μ, k, c]
    magnetic_basis(t, zi, mag[i], w.psii, w.dpsii)
    for zj in range(C):
        for mu in range(K):
            for k in range(R):
                cf = t.coeffs + ((((zi * C + zj) * K + mu) * R + k) * M * M)
                for c in range(M):
                    W = 0.0
                    Wd = 0.0
                    for b in range(M):
                        W = W + cf[b * M + c] * w.psii[b]
                        Wd = Wd + cf[b * M + c] * w.dpsii[b]
                    w.d[((zj * K + mu) * R + k) * M + c] = W
                    w.dd[((zj * K + mu) * R + k) * M + c] = Wd
    for p in range(offsets[i], offsets[i + 1]):
        j = nbrs[p]
        dx = pos[j, 0] - pos[i, 0]
        dy = pos[j, 1] - pos[i, 1]
        dz = pos[j, 2] - pos[i, 2]
        r2 = dx * dx + dy * dy + dz * dz
        if r2 >= rc2:
            continue
        r = sqrt(r2)
        w.r[nn] = r
        w.u[3 * nn] = dx / r
        w.u[3 * nn + 1] = dy / r
        w.u[3 * nn + 2] = dz / r
        w.z[nn] = types[j]
        w.mj[nn] = mag[j]
        w.pair[nn] = p
        q = w.q + nn * R
        dq = w.dq + nn * R
        chebyshev((2.0 * r - t.rmin - t.rcut) / (t.rcut - t.rmin), R, xscale, q, dq)
        env = (t.rcut - r) * (t.rcut - r)
        denv = -2.0 * (t.rcut - r)
        for k in range(R):
            dq[k] = t.scaling * (dq[k] * env + q[k] * denv)
            q[k] = t.scaling * q[k] * env
        magnetic_basis(t, types[j], mag[j], w.psij + nn * M, w.dpsij + nn * M)
        zj = types[j]
        if M == 1:
            for mu in range(K):
                cf = w.d + (zj * K + mu) * R
                if not deriv:
                    w.f[nn * K + mu] = mmtp_dot(cf, q, R)
                    continue
                mmtp_dot2(cf, q, dq, R, &s, &W)
                w.f[nn * K + mu] = s
                w.dfr[nn * K + mu] = W
                w.dfmj[nn * K + mu] = 0.0
                w.dfmi[nn * K + mu] = 0.0
        else:
            for k in range(R):
                for c in range(M):
                    w.qp[k * M + c] = q[k] * w.psij[nn * M + c]
                    w.dqp[k * M + c] = dq[k] * w.psij[nn * M + c]
                    w.qdp[k * M + c] = q[k] * w.dpsij[nn * M + c]
            for mu in range(K):
                cf = w.d + (zj * K + mu) * R * M
                if not deriv:
                    w.f[nn * K + mu] = mmtp_dot(cf, w.qp, R * M)
                    continue
                cfd = w.dd + (zj * K + mu) * R * M
                mmtp_dot4(cf, cfd, w.qp, w.dqp, w.qdp, R * M, &s, &W, &Wd, &Wi)
                w.f[nn * K + mu] = s
                w.dfr[nn * K + mu] = W
                w.dfmj[nn * K + mu] = Wd
                w.dfmi[nn * K + mu] = Wi
        nn += 1
    return nn


cdef inline void powers(Tables* t, Work* w, int n) noexcept nogil:
    cdef int k
    w.px[0] = 1.0
    w.py[0] = 1.0
    w.pz[0] = 1.0
    for k in range(1, t.max_pow + 1):
        w.px[k] = w.px[k - 1] * w.u[3 * n]
        w.py[k] = w.py[k - 1] * w.u[3 * n + 1]
        w.pz[k] = w.pz[k - 1] * w.u[3 * n + 2]


cdef inline void monomials_into(Tables* t, const double* u, double* mono) noexcept nogil:
    cdef int q
    mono[0] = 1.0
    for q in range(1, t.n_mono):
        mono[q] = mono[t.mono_parent[q]] * u[t.mono_dir[q]]


cdef double forward(Tables* t, Work* w, int nn, int zi) noexcept nogil:
    """Basic moments (accumulated in the dense (μ, monomial) layout), products and E_i."""
    cdef int n, s, k, mu, q, L, nm = t.n_mono
    cdef const int* row
    cdef double e
    cdef double* mono
    memset(w.moments, 0, t.n_moments * sizeof(double))
    for mu in range(t.K):
        memset(w.pm + mu * nm, 0, t.mu_len[mu] * sizeof(double))
    for n in range(nn):
        mono = w.monos + n * nm
        monomials_into(t, w.u + 3 * n, mono)
        for mu in range(t.K):
            mmtp_axpy(w.pm + mu * nm, w.f[n * t.K + mu], mono, t.mu_len[mu])
    for s in range(t.n_basic):
        w.moments[s] = w.pm[t.basic[4 * s] * nm + t.basic_q[s]]
    for k in range(t.n_times):
        row = t.times + 3 * k
        w.moments[row[2]] += t.weights[k] * w.moments[row[0]] * w.moments[row[1]]
    e = t.species[zi]
    for k in range(t.n_basis):
        e = e + t.moment[k] * w.moments[t.mapping[k]]
    return e


cdef void backward(Tables* t, Work* w) noexcept nogil:
    """g = ∂E_i/∂M by a reverse sweep over the product table."""
    cdef int k
    cdef const int* row
    cdef double gk
    memset(w.g, 0, t.n_moments * sizeof(double))
    for k in range(t.n_basis):
        w.g[t.mapping[k]] += t.moment[k]
    for k in range(t.n_times - 1, -1, -1):
        row = t.times + 3 * k
        gk = t.weights[k] * w.g[row[2]]
        if gk != 0.0:
            w.g[row[0]] += gk * w.moments[row[1]]
            w.g[row[1]] += gk * w.moments[row[0]]


cdef void pair_derivatives(Tables* t, Work* w, int nn, double* pair_grad, double* pair_dmj,
                           double* dmi) noexcept nogil:
    """∂E_i/∂r_n (into pair_grad[3·pair]), ∂E_i/∂m_j (pair_dmj[pair]) and ∂E_i/∂m_i.

    With g in the dense (μ, q) layout (gm): G_μ = Σ_q g_μq mono_q and
    B = Σ_μ f_μ Σ_q g_μq ∇_u mono_q give ∂E_i/∂r = (Σ_μ G_μ f'_μ) u + (B − (u·B) u) / r
    (u·∇_u mono_q = ν_q mono_q: monomials are homogeneous).
    """
    cdef int n, s, mu, q, d, e, nm = t.n_mono
    cdef double A, Bx, By, Bz, bx, by, bz, Gs, gq, fm, ub, ux, uy, uz, r, dmj, dmi_acc = 0.0
    cdef double* gm
    cdef double* mono
    cdef int64_t p
    memset(w.gm, 0, t.K * nm * sizeof(double))
    memset(w.gxm, 0, 3 * t.K * nm * sizeof(double))
    for s in range(t.n_basic):
        w.gm[t.basic[4 * s] * nm + t.basic_q[s]] += w.g[s]
    # ∂mono_q/∂u_d = e_d(q) mono_{low_d(q)}: move each coefficient to the lowered monomial
    for mu in range(t.K):
        gm = w.gm + mu * nm
        for q in range(1, t.mu_len[mu]):
            gq = gm[q]
            if gq == 0.0:
                continue
            for d in range(3):
                e = t.mono_exp[3 * q + d]
                if e > 0:
                    w.gxm[(d * t.K + mu) * nm + t.mono_low[3 * q + d]] += e * gq
    for n in range(nn):
        mono = w.monos + n * nm
        A = 0.0
        dmj = 0.0
        Bx = 0.0
        By = 0.0
        Bz = 0.0
        for mu in range(t.K):
            mmtp_dot4m(w.gm + mu * nm, w.gxm + mu * nm, w.gxm + (t.K + mu) * nm,
                       w.gxm + (2 * t.K + mu) * nm, mono, t.mu_len[mu], &Gs, &bx, &by, &bz)
            fm = w.f[n * t.K + mu]
            Bx = Bx + fm * bx
            By = By + fm * by
            Bz = Bz + fm * bz
            A = A + Gs * w.dfr[n * t.K + mu]
            if t.M > 1:
                dmj = dmj + Gs * w.dfmj[n * t.K + mu]
                dmi_acc = dmi_acc + Gs * w.dfmi[n * t.K + mu]
        r = w.r[n]
        ux = w.u[3 * n]
        uy = w.u[3 * n + 1]
        uz = w.u[3 * n + 2]
        ub = ux * Bx + uy * By + uz * Bz
        p = w.pair[n]
        pair_grad[3 * p] = A * ux + (Bx - ub * ux) / r
        pair_grad[3 * p + 1] = A * uy + (By - ub * uy) / r
        pair_grad[3 * p + 2] = A * uz + (Bz - ub * uz) / r
        pair_dmj[p] = dmj
    dmi[0] = dmi_acc


# ---------------------------------------------------------------------------------------------
# One-pass spin-symmetrised evaluation, E_s(M) = ½[E(M) + E(−M)] (spec §2).
#
# When every species' magnetic interval is symmetric (m_min = −m_max), η(−m) = −η(m) and
# ψ_b(−m) = T_b(−η) = (−1)^b ψ_b(m), so E(−M) = E⁻(M): the same model evaluated at M with
# the coefficients C⁻[.., b, c] = (−1)^(b+c) C[.., b, c]. The two models share everything
# that does not depend on the coefficients — neighbour vectors, radial and magnetic bases,
# monomials — and their per-neighbour contractions run fused in one pass (two coefficient
# tables D, D⁻ on the same vectors; two (μ, q) accumulators fed by the same monomials; the
# reverse gather dots both adjoint sets with the same stored monomials). Only the per-atom
# product table and its reverse sweep run twice. Derivatives of E⁻ with respect to M are the
# derivatives of E(−M) with respect to M, so ∂E_s/∂m = ½[∂E/∂m + ∂E⁻/∂m] = ½[g(M) − g(−M)].

cdef inline void magnetic_basis_odd(Tables* t, int z, double m, double* psi, double* dpsi) noexcept nogil:
    """:func:`magnetic_basis` on a symmetric interval, η = 2m/(m_max − m_min): exactly odd in m
    (η(−m) = −η(m) bit for bit, so ψ_b(−m) = (−1)^b ψ_b(m) exactly and the one-pass E_s is
    exactly even under M → −M, like the two-pass one)."""
    cdef double width = t.mag_max[z] - t.mag_min[z]
    chebyshev(2.0 * m / width, t.M, 2.0 / width, psi, dpsi)


cdef int gather_sym(Tables* t, Work* w, int64_t i, const double[:, ::1] pos, const int[::1] types,
                    const double[::1] mag, const int64_t[::1] offsets, const int64_t[::1] nbrs,
                    bint deriv=True) noexcept nogil:
    """:func:`gather` for E (w.f, …) and E⁻ (w.f2, …) together; needs M > 1 and symmetric
    magnetic intervals."""
    cdef int nn = 0, k, mu, b, c, zj, zi = types[i]
    cdef int64_t p, j
    cdef double dx, dy, dz, r2, r, rc2 = t.rcut * t.rcut, env, denv, s, s2
    cdef double W, Wd, W2, Wd2, x, xd
    cdef int C = t.C, K = t.K, R = t.R, M = t.M, RM = t.R * t.M
    cdef const double* cf
    cdef double* q
    cdef double* dq
    cdef double[8] o
    cdef double xscale = 2.0 / (t.rcut - t.rmin)
    magnetic_basis_odd(t, zi, mag[i], w.psii, w.dpsii)
    for zj in range(C):
        for mu in range(K):
            for k in range(R):
                cf = t.coeffs + ((((zi * C + zj) * K + mu) * R + k) * M * M)
                for c in range(M):
                    W = 0.0
                    Wd = 0.0
                    W2 = 0.0
                    Wd2 = 0.0
                    for b in range(M):
                        x = cf[b * M + c] * w.psii[b]
                        xd = cf[b * M + c] * w.dpsii[b]
                        W = W + x
                        Wd = Wd + xd
                        if (b + c) & 1:
                            W2 = W2 - x
                            Wd2 = Wd2 - xd
                        else:
                            W2 = W2 + x
                            Wd2 = Wd2 + xd
                    w.d[((zj * K + mu) * R + k) * M + c] = W
                    w.dd[((zj * K + mu) * R + k) * M + c] = Wd
                    w.d2[((zj * K + mu) * R + k) * M + c] = W2
                    w.dd2[((zj * K + mu) * R + k) * M + c] = Wd2
    for p in range(offsets[i], offsets[i + 1]):
        j = nbrs[p]
        dx = pos[j, 0] - pos[i, 0]
        dy = pos[j, 1] - pos[i, 1]
        dz = pos[j, 2] - pos[i, 2]
        r2 = dx * dx + dy * dy + dz * dz
        if r2 >= rc2:
            continue
        r = sqrt(r2)
        w.r[nn] = r
        w.u[3 * nn] = dx / r
        w.u[3 * nn + 1] = dy / r
        w.u[3 * nn + 2] = dz / r
        w.z[nn] = types[j]
        w.mj[nn] = mag[j]
        w.pair[nn] = p
        q = w.q + nn * R
        dq = w.dq + nn * R
        chebyshev((2.0 * r - t.rmin - t.rcut) / (t.rcut - t.rmin), R, xscale, q, dq)
        env = (t.rcut - r) * (t.rcut - r)
        denv = -2.0 * (t.rcut - r)
        for k in range(R):
            dq[k] = t.scaling * (dq[k] * env + q[k] * denv)
            q[k] = t.scaling * q[k] * env
        magnetic_basis_odd(t, types[j], mag[j], w.psij + nn * M, w.dpsij + nn * M)
        zj = types[j]
        for k in range(R):
            for c in range(M):
                w.qp[k * M + c] = q[k] * w.psij[nn * M + c]
                w.dqp[k * M + c] = dq[k] * w.psij[nn * M + c]
                w.qdp[k * M + c] = q[k] * w.dpsij[nn * M + c]
        for mu in range(K):
            cf = w.d + (zj * K + mu) * RM
            if not deriv:
                mmtp_dot2(w.qp, cf, w.d2 + (zj * K + mu) * RM, RM, &s, &s2)
                w.f[nn * K + mu] = s
                w.f2[nn * K + mu] = s2
                continue
            mmtp_dot8(cf, w.dd + (zj * K + mu) * RM, w.d2 + (zj * K + mu) * RM,
                      w.dd2 + (zj * K + mu) * RM, w.qp, w.dqp, w.qdp, RM, o)
            w.f[nn * K + mu] = o[0]
            w.dfr[nn * K + mu] = o[1]
            w.dfmj[nn * K + mu] = o[2]
            w.dfmi[nn * K + mu] = o[3]
            w.f2[nn * K + mu] = o[4]
            w.dfr2[nn * K + mu] = o[5]
            w.dfmj2[nn * K + mu] = o[6]
            w.dfmi2[nn * K + mu] = o[7]
        nn += 1
    return nn


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


cdef double forward_sym(Tables* t, Work* w, int nn, int zi) noexcept nogil:
    """:func:`forward` for E and E⁻ (monomials computed once); returns ½(E_i + E⁻_i)."""
    cdef int n, mu, nm = t.n_mono
    cdef double* mono
    for mu in range(t.K):
        memset(w.pm + mu * nm, 0, t.mu_len[mu] * sizeof(double))
        memset(w.pm2 + mu * nm, 0, t.mu_len[mu] * sizeof(double))
    for n in range(nn):
        mono = w.monos + n * nm
        monomials_into(t, w.u + 3 * n, mono)
        for mu in range(t.K):
            mmtp_axpy2(w.pm + mu * nm, w.f[n * t.K + mu], w.pm2 + mu * nm, w.f2[n * t.K + mu],
                       mono, t.mu_len[mu])
    return 0.5 * (products_into(t, w.moments, w.pm, zi) + products_into(t, w.moments2, w.pm2, zi))


cdef void backward_into(Tables* t, const double* moments, double* g) noexcept nogil:
    """:func:`backward` on explicit arrays: g = ∂E_i/∂M."""
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


cdef void lowered_adjoints(Tables* t, const double* g, double scale, double* gm, double* gxm) noexcept nogil:
    """scale·g in the dense (μ, q) layout (gm) and its lowered copies (gxm), see pair_derivatives."""
    cdef int s, mu, q, d, e, nm = t.n_mono
    cdef double gq
    cdef double* row
    memset(gm, 0, t.K * nm * sizeof(double))
    memset(gxm, 0, 3 * t.K * nm * sizeof(double))
    for s in range(t.n_basic):
        gm[t.basic[4 * s] * nm + t.basic_q[s]] += scale * g[s]
    for mu in range(t.K):
        row = gm + mu * nm
        for q in range(1, t.mu_len[mu]):
            gq = row[q]
            if gq == 0.0:
                continue
            for d in range(3):
                e = t.mono_exp[3 * q + d]
                if e > 0:
                    gxm[(d * t.K + mu) * nm + t.mono_low[3 * q + d]] += e * gq


cdef void pair_derivatives_sym(Tables* t, Work* w, int nn, double* pair_grad, double* pair_dmj,
                               double* dmi) noexcept nogil:
    """:func:`pair_derivatives` of E_s = ½(E + E⁻): both adjoint sets (each scaled by ½) are
    dotted with the same stored monomials in one sweep over the neighbours. The two sets are
    summed separately and added last, so that M → −M (which swaps them) gives bit-for-bit
    the same forces and the opposite ∂E_s/∂m, as the two-pass path does."""
    cdef int n, mu, nm = t.n_mono, K = t.K
    cdef double A, Bx, By, Bz, A2, Bx2, By2, Bz2, fm, fm2, ub, ux, uy, uz, r, dmj, dmj2
    cdef double dmi_acc = 0.0, dmi_acc2 = 0.0
    cdef double* mono
    cdef double[8] o
    cdef int64_t p
    lowered_adjoints(t, w.g, 0.5, w.gm, w.gxm)
    lowered_adjoints(t, w.g2, 0.5, w.gm2, w.gxm2)
    for n in range(nn):
        mono = w.monos + n * nm
        A = 0.0
        dmj = 0.0
        Bx = 0.0
        By = 0.0
        Bz = 0.0
        A2 = 0.0
        dmj2 = 0.0
        Bx2 = 0.0
        By2 = 0.0
        Bz2 = 0.0
        for mu in range(K):
            mmtp_dot8m(w.gm + mu * nm, w.gxm + mu * nm, w.gxm + (K + mu) * nm, w.gxm + (2 * K + mu) * nm,
                       w.gm2 + mu * nm, w.gxm2 + mu * nm, w.gxm2 + (K + mu) * nm,
                       w.gxm2 + (2 * K + mu) * nm, mono, t.mu_len[mu], o)
            fm = w.f[n * K + mu]
            fm2 = w.f2[n * K + mu]
            Bx = Bx + fm * o[1]
            By = By + fm * o[2]
            Bz = Bz + fm * o[3]
            A = A + o[0] * w.dfr[n * K + mu]
            dmj = dmj + o[0] * w.dfmj[n * K + mu]
            dmi_acc = dmi_acc + o[0] * w.dfmi[n * K + mu]
            Bx2 = Bx2 + fm2 * o[5]
            By2 = By2 + fm2 * o[6]
            Bz2 = Bz2 + fm2 * o[7]
            A2 = A2 + o[4] * w.dfr2[n * K + mu]
            dmj2 = dmj2 + o[4] * w.dfmj2[n * K + mu]
            dmi_acc2 = dmi_acc2 + o[4] * w.dfmi2[n * K + mu]
        A = A + A2
        Bx = Bx + Bx2
        By = By + By2
        Bz = Bz + Bz2
        r = w.r[n]
        ux = w.u[3 * n]
        uy = w.u[3 * n + 1]
        uz = w.u[3 * n + 2]
        ub = ux * Bx + uy * By + uz * Bz
        p = w.pair[n]
        pair_grad[3 * p] = A * ux + (Bx - ub * ux) / r
        pair_grad[3 * p + 1] = A * uy + (By - ub * uy) / r
        pair_grad[3 * p + 2] = A * uz + (Bz - ub * uz) / r
        pair_dmj[p] = dmj + dmj2
    dmi[0] = dmi_acc + dmi_acc2


cdef Tables make_tables(dict tab):
    cdef Tables t
    cdef const int[:, ::1] basic = tab["basic"]
    cdef const int[:, ::1] times = tab["times"]
    cdef const double[::1] weights = tab["weights"]
    cdef const int[::1] mapping = tab["mapping"]
    cdef const double[::1] coeffs = tab["coeffs"]
    cdef const double[::1] species = tab["species"]
    cdef const double[::1] moment = tab["moment"]
    cdef const double[::1] mag_min = tab["mag_min"]
    cdef const double[::1] mag_max = tab["mag_max"]
    cdef const int[::1] mono_parent = tab["mono_parent"]
    cdef const int[::1] mono_dir = tab["mono_dir"]
    cdef const int[:, ::1] mono_exp = tab["mono_exp"]
    cdef const int[:, ::1] mono_low = tab["mono_low"]
    cdef const int[::1] basic_q = tab["basic_q"]
    cdef const int[::1] mu_len = tab["mu_len"]
    t.mu_len = &mu_len[0]
    t.n_mono = mono_parent.shape[0]
    t.mono_parent = &mono_parent[0]
    t.mono_dir = &mono_dir[0]
    t.mono_exp = &mono_exp[0, 0]
    t.mono_low = &mono_low[0, 0]
    t.basic_q = &basic_q[0]
    t.C = tab["C"]
    t.K = tab["K"]
    t.R = tab["R"]
    t.M = tab["M"]
    t.n_basic = basic.shape[0]
    t.n_times = times.shape[0]
    t.n_moments = tab["n_moments"]
    t.n_basis = mapping.shape[0]
    t.max_pow = tab["max_pow"]
    t.rmin = tab["rmin"]
    t.rcut = tab["rcut"]
    t.scaling = tab["scaling"]
    t.basic = &basic[0, 0]
    t.times = &times[0, 0] if t.n_times > 0 else NULL
    t.weights = &weights[0] if t.n_times > 0 else NULL
    t.mapping = &mapping[0]
    t.coeffs = &coeffs[0]
    t.species = &species[0]
    t.moment = &moment[0]
    t.mag_min = &mag_min[0]
    t.mag_max = &mag_max[0]
    return t


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
               int num_threads=0):
    """E_i for every centre and, when ``derivatives``, ∂E_i/∂r_ij, ∂E_i/∂m_j, ∂E_i/∂m_i.

    ``pair_grad`` (n_pairs, 3) and ``pair_dmj`` (n_pairs,) must be zeroed by the caller
    (pairs in the skin are left untouched). ``basis`` (n_local, n_basis) when ``want_basis``.
    """
    cdef Tables t = make_tables(tab)
    cdef int nmax = max_neighbors(offsets)
    cdef Py_ssize_t i
    cdef int nn, k
    cdef Work* w
    cdef double* pg = &pair_grad[0, 0] if pair_grad.shape[0] > 0 else NULL
    cdef double* pm = &pair_dmj[0] if pair_dmj.shape[0] > 0 else NULL
    if n_local == 0:
        return
    with nogil, parallel(num_threads=num_threads if num_threads > 0 else openmp_threads()):
        w = alloc_work(&t, nmax)
        for i in prange(n_local, schedule="dynamic", chunksize=16):
            nn = gather(&t, w, i, pos, types, mag, offsets, nbrs, derivatives)
            site_en[i] = forward(&t, w, nn, types[i])
            if want_basis:
                for k in range(t.n_basis):
                    basis[i, k] = w.moments[t.mapping[k]]
            if derivatives:
                backward(&t, w)
                pair_derivatives(&t, w, nn, pg, pm, &dmi[i])
        free_work(w)


def site_terms_symmetric(dict tab, const double[:, ::1] pos, const int[::1] types,
                         const double[::1] mag, const int64_t[::1] offsets, const int64_t[::1] nbrs,
                         Py_ssize_t n_local, double[::1] site_en, double[:, ::1] pair_grad,
                         double[::1] pair_dmj, double[::1] dmi, double[:, ::1] basis, bint derivatives,
                         bint want_basis, int num_threads=0):
    """:func:`site_terms` of the spin-symmetrised model ½[E(M) + E(−M)] in one neighbour pass.

    Same arguments and outputs as :func:`site_terms` (site energies, per-pair ∂/∂r_ij and
    ∂/∂m_j, per-centre ∂/∂m_i, and the basis, all of ½[E(M) + E(−M)]). Valid only for a
    magnetic potential (M > 1) whose magnetic intervals are all symmetric (m_min = −m_max);
    the caller checks (:meth:`MTPEngine.one_pass_symmetric`).
    """
    cdef Tables t = make_tables(tab)
    cdef int nmax = max_neighbors(offsets)
    cdef Py_ssize_t i
    cdef int nn, k
    cdef Work* w
    cdef double* pg = &pair_grad[0, 0] if pair_grad.shape[0] > 0 else NULL
    cdef double* pm = &pair_dmj[0] if pair_dmj.shape[0] > 0 else NULL
    if t.M < 2:
        raise ValueError("site_terms_symmetric needs a magnetic potential (M > 1)")
    if n_local == 0:
        return
    with nogil, parallel(num_threads=num_threads if num_threads > 0 else openmp_threads()):
        w = alloc_work(&t, nmax)
        for i in prange(n_local, schedule="dynamic", chunksize=16):
            nn = gather_sym(&t, w, i, pos, types, mag, offsets, nbrs, derivatives)
            site_en[i] = forward_sym(&t, w, nn, types[i])
            if want_basis:
                for k in range(t.n_basis):
                    basis[i, k] = 0.5 * (w.moments[t.mapping[k]] + w.moments2[t.mapping[k]])
            if derivatives:
                backward_into(&t, w.moments, w.g)
                backward_into(&t, w.moments2, w.g2)
                pair_derivatives_sym(&t, w, nn, pg, pm, &dmi[i])
        free_work(w)


def site_energies_of(dict tab, const double[:, ::1] pos, const int[::1] types, const double[::1] mag,
                     const int64_t[::1] offsets, const int64_t[::1] nbrs, const int64_t[::1] centers,
                     double[::1] site_en, bint symmetric=False):
    """E_i for the listed centres only (energies, no derivatives): Monte Carlo ΔE.

    ``symmetric``: ½[E_i(M) + E_i(−M)] in one pass (magnetic potential with symmetric
    intervals only; see :func:`site_terms_symmetric`)."""
    cdef Tables t = make_tables(tab)
    cdef Py_ssize_t k, n = centers.shape[0]
    cdef int64_t i
    cdef int nn, nmax = 0
    cdef Work* w
    if symmetric and t.M < 2:
        raise ValueError("symmetric site energies need a magnetic potential (M > 1)")
    if n == 0:
        return
    for k in range(n):
        i = centers[k]
        if offsets[i + 1] - offsets[i] > nmax:
            nmax = offsets[i + 1] - offsets[i]
    with nogil:
        w = alloc_work(&t, nmax)
        for k in range(n):
            i = centers[k]
            if symmetric:
                nn = gather_sym(&t, w, i, pos, types, mag, offsets, nbrs, False)
                site_en[k] = forward_sym(&t, w, nn, types[i])
            else:
                nn = gather(&t, w, i, pos, types, mag, offsets, nbrs, False)
                site_en[k] = forward(&t, w, nn, types[i])
        free_work(w)


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
    cdef double[16] X
    cdef double[16] Y
    cdef double[16] U
    cdef double[16] V
    cdef double[16] S
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


def param_terms(dict tab, const double[:, ::1] pos, const int[::1] types, const double[::1] mag,
                const int64_t[::1] offsets, const int64_t[::1] nbrs, Py_ssize_t n_local,
                double[::1] site_en, double[:, ::1] site_grad, bint want_site_grad,
                const double[:, ::1] t_pos, const double[::1] t_mag, bint want_tangent,
                double[::1] t_site, double[:, ::1] t_grad, int num_threads=0,
                const int64_t[::1] group=None, const double[::1] e_weight=None):
    """Parameter gradients.

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
            backward(&t, w)
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


cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int mmtp_thread_id(void) { return omp_get_thread_num(); }
    static int mmtp_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int mmtp_thread_id(void) { return 0; }
    static int mmtp_max_threads(void) { return 1; }
    #endif
    """
    int mmtp_thread_id() noexcept nogil
    int mmtp_max_threads() noexcept nogil


cdef inline int thread_id() noexcept nogil:
    return mmtp_thread_id()


cpdef int openmp_threads() noexcept nogil:
    """Threads an OpenMP region would use (OMP_NUM_THREADS; 1 without OpenMP)."""
    return mmtp_max_threads()


def basis_jacobian(dict tab, const double[:, ::1] pos, const int[::1] types, const double[::1] mag,
                   const int64_t[::1] offsets, const int64_t[::1] nbrs, Py_ssize_t n_local,
                   double[::1] basis_sum, double[:, :, ::1] d_forces, double[:, :, ::1] d_virial,
                   double[:, ::1] d_magnetic):
    """Derivatives of every basis function summed over centres: the design matrix of the
    linear coefficients.

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
