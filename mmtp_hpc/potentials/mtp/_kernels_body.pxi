# Body of the MTP kernel modules, included by `_kernels.pyx` (portable build) and
# `_kernels_avx2.pyx` (the same code compiled with AVX2 + FMA on x86-64); `kernels.py` picks
# one at import time. See the module docstring in `_kernels.pyx`.

cimport cython
from cython.parallel cimport prange, parallel
from libc.math cimport sqrt, exp, NAN
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memset, memcpy
from libc.stdint cimport int64_t

import numpy as np


cdef extern from "_simd.h" nogil:
    double mmtp_dot(const double* a, const double* b, int n)
    void mmtp_dot4(const double* cf, const double* cfd, const double* qp, const double* dqp,
                   const double* qdp, int n, double* s, double* w, double* wd, double* wi)
    void mmtp_dot2(const double* cf, const double* q, const double* dq, int n, double* s, double* w)
    void mmtp_axpy(double* y, double alpha, const double* x, int n)
    void mmtp_lane_products(double* mom, const int* times, const double* weights, const int* run_start,
                            const char* fresh, int n_runs, int L)
    void mmtp_lane_energies(const double* mom, const int* mapping, const double* moment, int n_basis,
                            int L, double* e)


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
    # tangent-mode extras
    double* tr
    double* tv
    double* tmj
    double* mdot
    double* h
    # (M·M,) per-neighbour scratch of the radial-coefficient gradients (tangent_atom)
    double* xbc
    double* ybc
    double* ubc
    double* vbc
    double* sbc


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
    w.tr = <double*> malloc(n * sizeof(double))
    w.tv = <double*> malloc(3 * n * sizeof(double))
    w.tmj = <double*> malloc(n * sizeof(double))
    w.mdot = <double*> malloc(t.n_moments * sizeof(double))
    w.h = <double*> malloc(t.n_moments * sizeof(double))
    w.xbc = <double*> malloc(t.M * t.M * sizeof(double))
    w.ybc = <double*> malloc(t.M * t.M * sizeof(double))
    w.ubc = <double*> malloc(t.M * t.M * sizeof(double))
    w.vbc = <double*> malloc(t.M * t.M * sizeof(double))
    w.sbc = <double*> malloc(t.M * t.M * sizeof(double))
    return w


cdef void free_work(Work* w) noexcept nogil:
    free(w.r); free(w.u); free(w.z); free(w.mj); free(w.pair); free(w.q); free(w.dq)
    free(w.psij); free(w.dpsij); free(w.f); free(w.dfr); free(w.dfmi); free(w.dfmj)
    free(w.moments); free(w.g); free(w.d); free(w.dd); free(w.psii); free(w.dpsii)
    free(w.px); free(w.py); free(w.pz)
    free(w.pm); free(w.gm); free(w.gxm); free(w.monos); free(w.tmono); free(w.qp); free(w.dqp); free(w.qdp)
    free(w.tr); free(w.tv); free(w.tmj); free(w.mdot); free(w.h)
    free(w.xbc); free(w.ybc); free(w.ubc); free(w.vbc); free(w.sbc)
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
                const double[::1] mag, const int64_t[::1] offsets, const int64_t[::1] nbrs) noexcept nogil:
    """Neighbours of i inside the cutoff: vectors, radial and magnetic bases, f_μ and derivatives
    (per-neighbour layout of the parameter-gradient kernels)."""
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
    cdef int n, mu, nm = t.n_mono
    cdef double* mono
    for mu in range(t.K):
        memset(w.pm + mu * nm, 0, t.mu_len[mu] * sizeof(double))
    for n in range(nn):
        mono = w.monos + n * nm
        monomials_into(t, w.u + 3 * n, mono)
        for mu in range(t.K):
            mmtp_axpy(w.pm + mu * nm, w.f[n * t.K + mu], mono, t.mu_len[mu])
    return products_into(t, w.moments, w.pm, zi)


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
                           const double* fmi, int K, int n, int ld, int mag, double* out)


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
    c.u = <double*> calloc(3 * ld, sizeof(double))
    c.r = <double*> calloc(ld, sizeof(double))
    c.mj = <double*> calloc(ld, sizeof(double))
    c.z = <int*> calloc(ld, sizeof(int))
    c.pair = <int64_t*> calloc(ld, sizeof(int64_t))
    c.t_u = <double*> calloc(3 * ld, sizeof(double))
    c.t_r = <double*> calloc(ld, sizeof(double))
    c.t_mj = <double*> calloc(ld, sizeof(double))
    c.t_z = <int*> calloc(ld, sizeof(int))
    c.t_pair = <int64_t*> calloc(ld, sizeof(int64_t))
    c.Q = <double*> calloc(t.R * ld, sizeof(double))
    c.dQ = <double*> calloc(t.R * ld, sizeof(double))
    c.psi = <double*> calloc(t.M * ld, sizeof(double))
    c.dpsi = <double*> calloc(t.M * ld, sizeof(double))
    c.eta = <double*> calloc(ld, sizeof(double))
    c.escale = <double*> calloc(ld, sizeof(double))
    c.qp = <double*> calloc(RM * ld, sizeof(double))
    c.dqp = <double*> calloc(RM * ld, sizeof(double))
    c.qdp = <double*> calloc(RM * ld, sizeof(double))
    c.D = <double*> calloc(nsets * t.C * K * RM, sizeof(double))
    c.DD = <double*> calloc(nsets * t.C * K * RM, sizeof(double))
    c.F = <double*> calloc(nsets * K * ld, sizeof(double))
    c.Fr = <double*> calloc(nsets * K * ld, sizeof(double))
    c.Fmj = <double*> calloc(nsets * K * ld, sizeof(double))
    c.Fmi = <double*> calloc(nsets * K * ld, sizeof(double))
    c.mono = <double*> calloc(nm * ld, sizeof(double))
    c.pm = <double*> calloc(nsets * K * nm, sizeof(double))
    c.mom = <double*> calloc(nsets * t.n_moments, sizeof(double))
    c.g = <double*> calloc(nsets * t.n_moments, sizeof(double))
    c.adj = <double*> calloc(nsets * K * 4 * nm, sizeof(double))
    c.GB = <double*> calloc(nsets * K * 4 * ld, sizeof(double))
    c.comb = <double*> calloc(nsets * 6 * ld, sizeof(double))
    c.psii = <double*> calloc(t.M, sizeof(double))
    c.dpsii = <double*> calloc(t.M, sizeof(double))
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
                           double* dmi) noexcept nogil:
    """∂E_i/∂r_n (pair_grad[3·pair]), ∂E_i/∂m_j (pair_dmj[pair]), ∂E_i/∂m_i of the mean of the
    sets. With G_μ = Σ_q g_μq mono_q and B = Σ_μ f_μ Σ_q g_μq ∇_u mono_q,
    ∂E_i/∂r = (Σ_μ G_μ f'_μ) u + (B − (u·B) u) / r (u·∇_u mono_q = ν_q mono_q)."""
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
    j0 = 0
    while j0 < n:       # one column block at a time: its monomials stay in L1 for all rows
        for s in range(c.nsets):
            for mu in range(K):
                mmtp_adjoint_block(c.adj + (s * K + mu) * 4 * nm, nm, t.mu_len[mu], c.mu_low[mu],
                                   c.mono + j0, ld, c.GB + (s * K + mu) * 4 * ld + j0, ld)
        j0 += c.nb
    for s in range(c.nsets):
        mmtp_combine_cols(c.GB + s * 4 * K * ld, c.F + s * K * ld, c.Fr + s * K * ld,
                          c.Fmj + s * K * ld, c.Fmi + s * K * ld, K, n, ld, mag, c.comb + s * 6 * ld)
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
    site_terms_sets(tab, pos, types, mag, offsets, nbrs, n_local, site_en, pair_grad, pair_dmj,
                    dmi, basis, derivatives, want_basis, num_threads, False)


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
    site_terms_sets(tab, pos, types, mag, offsets, nbrs, n_local, site_en, pair_grad, pair_dmj,
                    dmi, basis, derivatives, want_basis, num_threads, True)


cdef site_terms_sets(dict tab, const double[:, ::1] pos, const int[::1] types, const double[::1] mag,
                     const int64_t[::1] offsets, const int64_t[::1] nbrs, Py_ssize_t n_local,
                     double[::1] site_en, double[:, ::1] pair_grad, double[::1] pair_dmj,
                     double[::1] dmi, double[:, ::1] basis, bint derivatives, bint want_basis,
                     int num_threads, bint symmetric):
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
    if n_local == 0:
        return
    with nogil, parallel(num_threads=num_threads if num_threads > 0 else openmp_threads()):
        c = alloc_cols(&t, nmax, nsets)
        for i in prange(n_local, schedule="dynamic", chunksize=16):
            gather_cols(&t, c, i, pos, types, mag, offsets, nbrs, derivatives, symmetric)
            site_en[i] = forward_cols(&t, c, types[i])
            if want_basis:
                for k in range(t.n_basis):
                    m = t.mapping[k]
                    if symmetric:
                        basis[i, k] = 0.5 * (c.mom[2 * m] + c.mom[2 * m + 1])
                    else:
                        basis[i, k] = c.mom[m]
            if derivatives:
                derivatives_cols(&t, c, pg, pm, &dmi[i])
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


# ---------------------------------------------------------------------------------------------
# Incremental Metropolis moves on the moments (Monte Carlo, spec §6).
#
# E = Σ_k E_k(B_k) with the basic moments B_k[s, β] = Σ_n f_μβ(r_kn, m_k, m_n) mono_qβ(u_kn) of
# every coefficient set s (β: the rows of the ``basic`` table). A trial change m_a → m_a'
# changes
#   - every term of centre a (f_μ depends on m_a through the centre's contraction): B_a is
#     recomputed from its neighbours;
#   - for every other centre k, only its terms with the entries that are (images of) a:
#     B_k' = B_k + Σ_{n ∈ images of a} Δf_μβ mono_qβ(u_kn), with
#     Δf^s_μ = Σ_{r,b,c} C[z_k, z_a, μ, r, b, c] ψ_b(σ_s m_k) [ψ_c(σ_s m_a') − ψ_c(σ_s m_a)] Q_r(r_kn)
#     (σ_0 = 1, σ_1 = −1: the set E(−M) of the one-pass symmetrised energy).
# The energies of all affected centres (and sets) are then computed at once, one centre and
# set per lane of the product table (``mmtp_lane_products``: the row loop outside, the lanes
# vectorised inside), so a trial costs about one product sweep of vector width instead of one
# per centre. Accepted trials commit B_k' and E_k' and the moments; rejected ones restore the
# moments. The cache (n_centres, nsets·n_basic) holds B_k; ``init`` fills it and the site
# energies with one pass over the centres (the energies with the same lane code as the trials,
# so a centre's energy is the same number whichever way it was computed).

cdef inline int lanes_for(int n) noexcept nogil:
    """n rounded up to a multiple of 8 (every lane goes through the same vector code)."""
    return ((n + 7) // 8) * 8


cdef void basic_of(Tables* t, const double* pm, int nsets, double* out) noexcept nogil:
    """B[s, β] of a centre (``out``, nsets·n_basic) from the dense (s, μ, q) accumulator ``pm``."""
    cdef int s, b_, nb = t.n_basic, nm = t.n_mono, K = t.K
    for s in range(nsets):
        for b_ in range(nb):
            out[s * nb + b_] = pm[(s * K + t.basic[4 * b_]) * nm + t.basic_q[b_]]


cdef void to_lanes(const double* B, int nb, double* mom, int L) noexcept nogil:
    """mom[β·L + l] = B[l·nb + β] for lanes l < L (tiles of 8 lanes: one cache line per row)."""
    cdef int l0, l, b_
    cdef double* row
    for l0 in range(0, L, 8):
        for b_ in range(nb):
            row = mom + b_ * L + l0
            for l in range(8):
                row[l] = B[(l0 + l) * nb + b_]


cdef struct LaneRuns:
    int n_runs
    int* start      # (n_runs + 1,) run r: product rows start[r]..start[r + 1] − 1, one output each
    char* fresh     # (n_runs,) the run's output is not written or read before: stored, not added to
    int n_clear
    int* clear      # (n_clear,) moment rows ≥ n_basic that must be zero before the products


cdef int lane_runs_make(Tables* t, LaneRuns* lr) noexcept nogil:
    """The runs of the product table (rows with the same output, in table order); 0, or −1 when
    out of memory."""
    cdef int k, r, x, a, b, nm = t.n_moments
    cdef char* written = <char*> calloc(nm + 1, sizeof(char))
    cdef char* zero = <char*> calloc(nm + 1, sizeof(char))
    lr.start = <int*> malloc((t.n_times + 1) * sizeof(int))
    lr.fresh = <char*> malloc((t.n_times + 1) * sizeof(char))
    lr.clear = <int*> malloc((nm + 1) * sizeof(int))
    if written == NULL or zero == NULL or lr.start == NULL or lr.fresh == NULL or lr.clear == NULL:
        free(written); free(zero); free(lr.start); free(lr.fresh); free(lr.clear)
        lr.start = NULL; lr.fresh = NULL; lr.clear = NULL
        return -1
    r = 0
    k = 0
    while k < t.n_times:
        x = t.times[3 * k + 2]
        lr.start[r] = k
        while k < t.n_times and t.times[3 * k + 2] == x:
            a = t.times[3 * k]
            b = t.times[3 * k + 1]
            if a >= t.n_basic and not written[a]:
                zero[a] = 1          # read before it is computed: as zero, as a cleared row gives
            if b >= t.n_basic and not written[b]:
                zero[b] = 1
            k += 1
        lr.fresh[r] = 0 if (written[x] or zero[x]) else 1
        written[x] = 1
        r += 1
    lr.start[r] = t.n_times
    lr.n_runs = r
    lr.n_clear = 0
    for x in range(t.n_basic, nm):
        if zero[x] or not written[x]:
            lr.clear[lr.n_clear] = x
            lr.n_clear += 1
    free(written)
    free(zero)
    return 0


cdef void lane_runs_free(LaneRuns* lr) noexcept nogil:
    free(lr.start); free(lr.fresh); free(lr.clear)


cdef void lane_site_energies(Tables* t, LaneRuns* lr, double* mom, int L, int n_slots, int nsets,
                             const int* z, double* e_lane, double* e_slot) noexcept nogil:
    """Products and energies of lanes 0..L-1 (rows 0..n_basic-1 of ``mom`` hold the basic
    moments; lane slot·nsets + s); e_slot[slot] = mean over the sets (E_k or ½[E_k + E⁻_k])."""
    cdef int l, slot, s, q
    cdef double acc
    for q in range(lr.n_clear):
        memset(mom + <size_t> lr.clear[q] * L, 0, L * sizeof(double))
    mmtp_lane_products(mom, t.times, t.weights, lr.start, lr.fresh, lr.n_runs, L)
    for l in range(L):
        e_lane[l] = 0.0
    mmtp_lane_energies(mom, t.mapping, t.moment, t.n_basis, L, e_lane)
    for slot in range(n_slots):
        acc = 0.0
        for s in range(nsets):
            acc = acc + (t.species[z[slot]] + e_lane[slot * nsets + s])
        e_slot[slot] = acc if nsets == 1 else 0.5 * acc


cdef void forward_pm(Tables* t, Cols* c) noexcept nogil:
    """Monomials and basic moments (dense (s, μ, q) layout, c.pm) of the gathered columns."""
    cdef int s, mu, nm = t.n_mono, K = t.K
    mmtp_monomials_cols(t.mono_parent, t.mono_dir, nm, c.u, c.ncol, c.ld, c.mono)
    for s in range(c.nsets):
        for mu in range(K):
            mmtp_rowdots(c.F + (s * K + mu) * c.ld, c.mono, c.ld, t.mu_len[mu], c.ncol,
                         c.pm + (s * K + mu) * nm)


cdef inline void psi_of(Tables* t, int z, double m, bint odd, double* psi) noexcept nogil:
    """ψ_b(m), b < M, on species z's interval (η = 2m/width on symmetric intervals)."""
    cdef int b
    cdef double width = t.mag_max[z] - t.mag_min[z], eta
    psi[0] = 1.0
    if t.M == 1:
        return
    if odd:
        eta = 2.0 * m / width
    else:
        eta = (2.0 * m - t.mag_min[z] - t.mag_max[z]) / width
    psi[1] = eta
    for b in range(2, t.M):
        psi[b] = 2.0 * eta * psi[b - 1] - psi[b - 2]


cdef void trial_tables(Tables* t, int za, double old, double new, int nsets, bint odd,
                       double* H) noexcept nogil:
    """H[s, z_k, μ, r, b] = Σ_c C[z_k, z_a, μ, r, b, c]·σ_s^c [ψ_c(m_a') − ψ_c(m_a)] for a trial
    on an atom of species za (σ_1^c = (−1)^c: the set E(−M))."""
    cdef int s, zk, mu, r, b, cc, C = t.C, K = t.K, R = t.R, M = t.M
    cdef double dpsi[16]
    cdef double p0[16]
    cdef double p1[16]
    cdef double acc
    cdef const double* cf
    cdef double* h
    psi_of(t, za, old, odd, p0)
    psi_of(t, za, new, odd, p1)
    for s in range(nsets):
        for cc in range(M):
            dpsi[cc] = p1[cc] - p0[cc]
            if s == 1 and (cc & 1):
                dpsi[cc] = -dpsi[cc]
        for zk in range(C):
            for mu in range(K):
                for r in range(R):
                    cf = t.coeffs + ((((zk * C + za) * K + mu) * R + r) * M * M)
                    h = H + ((((s * C + zk) * K + mu) * R + r) * M)
                    for b in range(M):
                        acc = 0.0
                        for cc in range(M):
                            acc = acc + cf[b * M + cc] * dpsi[cc]
                        h[b] = acc


cdef void add_pair_change(Tables* t, const double* H, int nsets, int zk, double mk, bint odd,
                          const double* d, const int* mu_start, double* Q, double* mono, double* monoB,
                          double* df, double* B) noexcept nogil:
    """Adds to the basic moments B[s, β] of centre k (species zk, moment mk) the change of its
    term with a neighbour at d = r_n − r_k (inside the cutoff): Δf_μβ mono_qβ. ``mu_start``
    (K + 1): the basic rows of μ are mu_start[μ]..mu_start[μ + 1] − 1 (rows ordered by μ), or
    NULL where they are not ordered."""
    cdef int s, mu, r, b, b_, R = t.R, M = t.M, K = t.K, C = t.C, nb = t.n_basic
    cdef double r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2], rr = sqrt(r2), x, e, acc
    cdef double u[3]
    cdef double psik[16]
    cdef double sp[16]
    cdef const double* h
    x = (2.0 * rr - t.rmin - t.rcut) / (t.rcut - t.rmin)
    e = t.rcut - rr
    Q[0] = 1.0
    if R > 1:
        Q[1] = x
    for r in range(2, R):
        Q[r] = 2.0 * x * Q[r - 1] - Q[r - 2]
    for r in range(R):
        Q[r] = t.scaling * Q[r] * (e * e)
    psi_of(t, zk, mk, odd, psik)
    for s in range(nsets):
        # σ_s(b)·ψ_b(m_k): multiplying by ±1 is exact, so (Q·σ)·ψ = Q·(σψ) bit for bit
        for b in range(M):
            sp[b] = -psik[b] if (s == 1 and (b & 1)) else psik[b]
        for mu in range(K):
            acc = 0.0
            for r in range(R):
                h = H + ((((s * C + zk) * K + mu) * R + r) * M)
                for b in range(M):
                    acc = acc + Q[r] * sp[b] * h[b]
            df[s * K + mu] = acc
    u[0] = d[0] / rr
    u[1] = d[1] / rr
    u[2] = d[2] / rr
    monomials_into(t, u, mono)
    for b_ in range(nb):
        monoB[b_] = mono[t.basic_q[b_]]
    if mu_start == NULL:        # basic rows not ordered by μ
        for s in range(nsets):
            for b_ in range(nb):
                B[s * nb + b_] += df[s * K + t.basic[4 * b_]] * monoB[b_]
        return
    for s in range(nsets):
        for mu in range(K):
            mmtp_axpy(B + s * nb + mu_start[mu], df[s * K + mu], monoB + mu_start[mu],
                      mu_start[mu + 1] - mu_start[mu])


def metropolis_moves(dict tab, const double[:, ::1] pos, const int[::1] types, double[::1] mag,
                     const int64_t[::1] offsets, const int64_t[::1] nbrs, Py_ssize_t n_centres,
                     const int64_t[::1] entry_owner, const int64_t[::1] image_entries,
                     const int64_t[::1] image_offsets, const int64_t[::1] aff_centres,
                     const int64_t[::1] aff_offsets, const int64_t[::1] moves,
                     const double[:, ::1] draws, int col, const double[::1] lo, const double[::1] hi,
                     double flip_fraction, double max_change, double beta, double[::1] magmoms,
                     double[::1] site_en, double[:, ::1] cache, bint init, bint symmetric,
                     bint incremental, double[::1] trial_delta):
    """Metropolis moves of the atoms ``moves`` (in that order) on the moments; returns the
    number accepted.

    Atom a (index into ``magmoms``, also its centre index) has the entries
    ``image_entries[image_offsets[a]:image_offsets[a + 1]]`` of ``mag`` (n_total,) and changes
    the site energies of the centres ``aff_centres[aff_offsets[a]:aff_offsets[a + 1]]``
    (a included); ``entry_owner[j]`` is the atom of entry j (−1: none that moves). Per trial,
    draws[a, col:col + 3] = (kind, size, acceptance) uniforms: a flip m → −m when
    kind < ``flip_fraction``, else m + ``max_change``·(2·size − 1); outside [lo[a], hi[a]] the
    trial is skipped; accepted when ΔE ≤ 0 or acceptance < exp(−β ΔE).

    ``site_en`` (n_centres,) and ``cache`` (n_centres, nsets·n_basic) hold E_k and the basic
    moments; ``init`` recomputes both first (one energy pass over the centres). With
    ``incremental`` a trial updates only the pair terms it changes (see above); otherwise every
    affected centre is recomputed from its neighbours (the reference the tests compare with).
    ``trial_delta`` (len(moves),) receives each trial's ΔE (NaN when skipped), if not empty.
    ``symmetric``: ½[E(M) + E(−M)] in one pass (symmetric intervals; see site_terms_symmetric).
    """
    cdef Tables t = make_tables(tab)
    cdef int nsets = 2 if symmetric else 1
    cdef int nb = t.n_basic, width = nsets * t.n_basic, slot, n_aff, L, Lmax, batch
    cdef Py_ssize_t n_moves = moves.shape[0], m_, q, k, p, k0
    cdef int64_t a, j, nmax = 0, max_aff = 1
    cdef double old, new, delta, dx, dy, dz, rc2 = t.rcut * t.rcut
    cdef double d[3]
    cdef bint record = trial_delta.shape[0] > 0, accept
    cdef int accepted = 0
    cdef Cols* c
    cdef double* mom
    cdef double* Bs
    cdef double* e_lane
    cdef double* e_new
    cdef int* zl
    cdef double* H
    cdef double* Q
    cdef double* mono
    cdef double* monoB
    cdef double* df
    cdef LaneRuns runs
    cdef int* mu_start = NULL
    cdef int* slot_of = NULL
    cdef int64_t* pair_off = NULL
    cdef int64_t* pair_k = NULL
    cdef int64_t* pair_p = NULL
    cdef int64_t n_atoms = magmoms.shape[0], n_pairs = 0, a2
    cdef bint ordered = True
    if symmetric and t.M < 2:
        raise ValueError("symmetric Monte Carlo needs a magnetic potential (M > 1)")
    if t.M > 16:
        raise ValueError(f"magnetic basis size {t.M} > 16")
    if cache.shape[0] < n_centres or cache.shape[1] != width:
        raise ValueError(f"cache must be ({n_centres}, {width}), got ({cache.shape[0]}, {cache.shape[1]})")
    for k in range(n_centres):
        if offsets[k + 1] - offsets[k] > nmax:
            nmax = offsets[k + 1] - offsets[k]
    for k in range(aff_offsets.shape[0] - 1):
        if aff_offsets[k + 1] - aff_offsets[k] > max_aff:
            max_aff = aff_offsets[k + 1] - aff_offsets[k]
    batch = <int> max(max_aff, 64)
    Lmax = lanes_for(batch * nsets)
    c = alloc_cols(&t, <int> nmax, nsets)
    mom = <double*> calloc(<size_t> t.n_moments * Lmax, sizeof(double))
    Bs = <double*> calloc(<size_t> nb * Lmax, sizeof(double))
    e_lane = <double*> malloc(Lmax * sizeof(double))
    e_new = <double*> malloc(batch * sizeof(double))
    zl = <int*> malloc(batch * sizeof(int))
    H = <double*> malloc(nsets * t.C * t.K * t.R * t.M * sizeof(double))
    Q = <double*> malloc(t.R * sizeof(double))
    mono = <double*> malloc(t.n_mono * sizeof(double))
    monoB = <double*> malloc(nb * sizeof(double))
    df = <double*> malloc(nsets * t.K * sizeof(double))
    mu_start = <int*> calloc(t.K + 1, sizeof(int))
    slot_of = <int*> malloc((n_centres + 1) * sizeof(int))
    pair_off = <int64_t*> calloc(n_atoms + 2, sizeof(int64_t))
    lane_runs_make(&t, &runs)          # runs.start is NULL when out of memory
    if mom == NULL or Bs == NULL or e_lane == NULL or e_new == NULL or zl == NULL or H == NULL or Q == NULL \
            or mono == NULL or monoB == NULL or df == NULL or mu_start == NULL or slot_of == NULL \
            or pair_off == NULL or runs.start == NULL:
        free_cols(c)
        lane_runs_free(&runs)
        free(mom); free(Bs); free(e_lane); free(e_new); free(zl); free(H); free(Q); free(mono); free(monoB)
        free(df); free(mu_start); free(slot_of); free(pair_off)
        raise MemoryError("Monte Carlo: out of memory for the lane buffers")
    # basic rows of each radial function μ: one range when the rows are ordered by μ
    for q in range(nb):
        if q > 0 and t.basic[4 * q] < t.basic[4 * (q - 1)]:
            ordered = False
        mu_start[t.basic[4 * q] + 1] = <int> (q + 1)
    for q in range(1, t.K + 1):
        if mu_start[q] < mu_start[q - 1]:
            mu_start[q] = mu_start[q - 1]
    if not ordered:
        free(mu_start)
        mu_start = NULL
    for k in range(n_centres + 1):
        slot_of[k] = -1
    if incremental and t.M > 1 and n_moves > 0:
        # the pairs (k, entry p) that a move of atom a changes, k ≠ a, inside the cutoff: found
        # once per call (not per trial), in the order of the centres and their entries
        with nogil:
            for k in range(n_centres):
                for p in range(offsets[k], offsets[k + 1]):
                    a2 = entry_owner[nbrs[p]]
                    if a2 < 0 or a2 == k or a2 >= n_atoms:
                        continue
                    dx = pos[nbrs[p], 0] - pos[k, 0]
                    dy = pos[nbrs[p], 1] - pos[k, 1]
                    dz = pos[nbrs[p], 2] - pos[k, 2]
                    if dx * dx + dy * dy + dz * dz >= rc2:
                        continue
                    pair_off[a2 + 2] += 1
            for a2 in range(n_atoms):
                pair_off[a2 + 2] += pair_off[a2 + 1]
            n_pairs = pair_off[n_atoms + 1]
        pair_k = <int64_t*> malloc((n_pairs + 1) * sizeof(int64_t))
        pair_p = <int64_t*> malloc((n_pairs + 1) * sizeof(int64_t))
        if pair_k == NULL or pair_p == NULL:
            free_cols(c)
            free(mom); free(Bs); free(e_lane); free(e_new); free(zl); free(H); free(Q); free(mono); free(monoB)
            free(df); free(mu_start); free(slot_of); free(pair_off); free(pair_k); free(pair_p)
            lane_runs_free(&runs)
            raise MemoryError("Monte Carlo: out of memory for the pair lists")
        with nogil:
            for k in range(n_centres):
                for p in range(offsets[k], offsets[k + 1]):
                    a2 = entry_owner[nbrs[p]]
                    if a2 < 0 or a2 == k or a2 >= n_atoms:
                        continue
                    dx = pos[nbrs[p], 0] - pos[k, 0]
                    dy = pos[nbrs[p], 1] - pos[k, 1]
                    dz = pos[nbrs[p], 2] - pos[k, 2]
                    if dx * dx + dy * dy + dz * dz >= rc2:
                        continue
                    q = pair_off[a2 + 1]
                    pair_k[q] = k
                    pair_p[q] = p
                    pair_off[a2 + 1] += 1
    try:
        with nogil:
            if init:
                # basic moments of every centre, then their energies in batches of lanes
                k0 = 0
                while k0 < n_centres:
                    n_aff = <int> (batch if n_centres - k0 > batch else n_centres - k0)
                    L = lanes_for(n_aff * nsets)
                    memset(Bs, 0, nb * L * sizeof(double))
                    for slot in range(n_aff):
                        k = k0 + slot
                        gather_cols(&t, c, k, pos, types, mag, offsets, nbrs, False, symmetric)
                        forward_pm(&t, c)
                        basic_of(&t, c.pm, nsets, Bs + slot * width)
                        memcpy(&cache[k, 0], Bs + slot * width, width * sizeof(double))
                        zl[slot] = types[k]
                    to_lanes(Bs, nb, mom, L)
                    lane_site_energies(&t, &runs, mom, L, n_aff, nsets, zl, e_lane, e_new)
                    for slot in range(n_aff):
                        site_en[k0 + slot] = e_new[slot]
                    k0 += batch
            for m_ in range(n_moves):
                a = moves[m_]
                old = magmoms[a]
                if draws[a, col] < flip_fraction:
                    new = -old
                else:
                    new = old + max_change * (2.0 * draws[a, col + 1] - 1.0)
                if not (lo[a] <= new and new <= hi[a]):
                    if record:
                        trial_delta[m_] = NAN
                    continue
                for q in range(image_offsets[a], image_offsets[a + 1]):
                    mag[image_entries[q]] = new
                n_aff = <int> (aff_offsets[a + 1] - aff_offsets[a])
                L = lanes_for(n_aff * nsets)
                memset(Bs + n_aff * width, 0, (L - n_aff * nsets) * nb * sizeof(double))
                if incremental and t.M > 1:
                    trial_tables(&t, types[a], old, new, nsets, symmetric, H)
                for slot in range(n_aff):
                    k = aff_centres[aff_offsets[a] + slot]
                    zl[slot] = types[k]
                    if k == a or not incremental:
                        gather_cols(&t, c, k, pos, types, mag, offsets, nbrs, False, symmetric)
                        forward_pm(&t, c)
                        basic_of(&t, c.pm, nsets, Bs + slot * width)
                        continue
                    memcpy(Bs + slot * width, &cache[k, 0], width * sizeof(double))
                    slot_of[k] = slot
                if incremental and t.M > 1:
                    # the changed pairs, centre by centre in the order of their entries
                    for q in range(pair_off[a], pair_off[a + 1]):
                        k = pair_k[q]
                        slot = slot_of[k]
                        if slot < 0:
                            continue        # (every such centre is in the affected list)
                        j = nbrs[pair_p[q]]
                        d[0] = pos[j, 0] - pos[k, 0]
                        d[1] = pos[j, 1] - pos[k, 1]
                        d[2] = pos[j, 2] - pos[k, 2]
                        add_pair_change(&t, H, nsets, types[k], mag[k], symmetric, d, mu_start, Q, mono,
                                        monoB, df, Bs + slot * width)
                for slot in range(n_aff):
                    slot_of[aff_centres[aff_offsets[a] + slot]] = -1
                to_lanes(Bs, nb, mom, L)
                lane_site_energies(&t, &runs, mom, L, n_aff, nsets, zl, e_lane, e_new)
                delta = 0.0
                for slot in range(n_aff):
                    k = aff_centres[aff_offsets[a] + slot]
                    delta = delta + (e_new[slot] - site_en[k])
                if record:
                    trial_delta[m_] = delta
                accept = delta <= 0.0 or draws[a, col + 2] < exp(-beta * delta)
                if accept:
                    magmoms[a] = new
                    for slot in range(n_aff):
                        k = aff_centres[aff_offsets[a] + slot]
                        site_en[k] = e_new[slot]
                        memcpy(&cache[k, 0], Bs + slot * width, width * sizeof(double))
                    accepted += 1
                else:
                    for q in range(image_offsets[a], image_offsets[a + 1]):
                        mag[image_entries[q]] = old
    finally:
        free_cols(c)
        free(mom); free(Bs); free(e_lane); free(e_new); free(zl); free(H); free(Q); free(mono); free(monoB)
        free(df); free(mu_start); free(slot_of); free(pair_off); free(pair_k); free(pair_p)
        lane_runs_free(&runs)
    return accepted


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


cdef extern from *:
    """
    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    static int mmtp_cpu_avx2_fma(void) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    #else
    static int mmtp_cpu_avx2_fma(void) { return 0; }
    #endif
    """
    int mmtp_cpu_avx2_fma() noexcept nogil


def cpu_has_avx2_fma() -> bool:
    """Whether this CPU runs AVX2 and FMA instructions (x86-64; False elsewhere)."""
    return bool(mmtp_cpu_avx2_fma())
