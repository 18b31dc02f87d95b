# Kernel module, part 1: imports, the coefficient tables of a potential (``make_tables``), the
# per-neighbour scratch and bases used by the parameter terms, OpenMP and CPU helpers.


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
