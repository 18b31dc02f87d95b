# Kernel module, part 1: imports, the coefficient tables of a potential (``make_tables``),
# Chebyshev and monomial helpers, OpenMP and CPU helpers.


cimport cython
from cython.parallel cimport prange, parallel
from libc.math cimport sqrt, exp, NAN
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memset, memcpy
from libc.stdint cimport int64_t

import numpy as np


cdef extern from "_simd.h" nogil:
    void* mmtp_calloc64(size_t n, size_t size)
    double mmtp_dot(const double* a, const double* b, int n)
    void mmtp_prefetch(const void* p, long bytes)
    void mmtp_axpy(double* y, double alpha, const double* x, int n)
    void mmtp_lane_products_energies(double* mom, const int* ab, const double* w, const int* run_start,
                                     const int* run_out, int n_runs, const int* mapping, const double* moment,
                                     int n_basis, int L, double* e)
    void mmtp_lanes_to_rows(double** rows, int Sp, int nb, int nsets, const double* mom, long L)
    void mmtp_lane_tile_add(double** rows, int Sp, int nb, int nsets, double* mom, long L, const double* DF,
                            const double* MONO, int cap, int K, const int* basic, const int* basic_q)
    void mmtp_own_rows(double* mom, long L, int Sp, int nsets, int nb, const int* basic, const int* basic_q,
                       const int* mono_exp, const double* DF2, const double* MONO, int cap, int K)
    void mmtp_pair_geometry(const double* pd, int P, int cap, double rmin, double rcut, double scaling, int R,
                            double* U, double* Q)
    void mmtp_pair_gemm(const double* H, const double* H2, int nsets, int K, int RM, const double* QP, int cap,
                        int n, double* DF, double* DF2)
    void mmtp_fma_elem_scaled(double* y, const double* a, const double* b, double h, int n)
    void mmtp_mul_elem(double* y, const double* a, const double* b, int n)


cdef struct Tables:
    int C, K, R, M, n_basic, n_times, n_moments, n_basis, n_mono
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


cdef inline void monomials_into(Tables* t, const double* u, double* mono) noexcept nogil:
    cdef int q
    mono[0] = 1.0
    for q in range(1, t.n_mono):
        mono[q] = mono[t.mono_parent[q]] * u[t.mono_dir[q]]


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
