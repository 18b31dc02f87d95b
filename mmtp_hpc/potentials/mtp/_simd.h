/* Inner loops of the MTP kernels that the compiler may vectorise.
 *
 * `omp simd reduction` allows reassociating these sums (and only these): results change
 * at the 1e-16 relative level, and stay independent of the number of threads because
 * every sum belongs to one atom. Without -fopenmp the pragmas are ignored (scalar code).
 */
#ifndef MMTP_SIMD_H
#define MMTP_SIMD_H

#include <math.h>
#if defined(__AVX__)
#include <immintrin.h>
#endif

/* n·size zeroed bytes aligned to a cache line (64 bytes), released with free(); NULL when out
 * of memory. The vector kernels load 32 bytes at a time: aligned rows never split a cache line. */
#include <stdlib.h>
#include <string.h>
static inline void *mmtp_calloc64(size_t n, size_t size)
{
    void *p = NULL;
    size_t bytes = n * size;
    if (bytes == 0)
        bytes = 64;
    bytes = (bytes + 63) / 64 * 64;
    if (posix_memalign(&p, 64, bytes) != 0)
        return NULL;
    memset(p, 0, bytes);
    return p;
}

/* Prefetch the cache lines of [p, p + bytes) towards L2 (a hint: no effect on results). */
static inline void mmtp_prefetch(const void *p, long bytes)
{
    const char *c = (const char *)p;
    for (long i = 0; i < bytes; i += 64)
        __builtin_prefetch(c + i, 0, 2);
}

/* Σ a·b */
static inline double mmtp_dot(const double *a, const double *b, int n)
{
    double x = 0.0;
    #pragma omp simd reduction(+:x)
    for (int k = 0; k < n; k++)
        x += a[k] * b[k];
    return x;
}

/* y += alpha·x */
static inline void mmtp_axpy(double *y, double alpha, const double *x, int n)
{
    #pragma omp simd
    for (int k = 0; k < n; k++)
        y[k] += alpha * x[k];
}

/* y += (a·b)·h (elementwise, h a scalar) */
static inline void mmtp_fma_elem_scaled(double *restrict y, const double *restrict a, const double *restrict b,
                                        double h, int n)
{
    #pragma omp simd
    for (int k = 0; k < n; k++)
        y[k] += (a[k] * b[k]) * h;
}

/* y = a·b (elementwise) */
static inline void mmtp_mul_elem(double *restrict y, const double *restrict a, const double *restrict b, int n)
{
    #pragma omp simd
    for (int k = 0; k < n; k++)
        y[k] = a[k] * b[k];
}

/* The geometry of the changed pairs of a Monte Carlo trial, lanes 1..P (pair j at lane 1 + j,
 * vector pd[3j..3j+2] from the centre to the moved atom): unit vectors U[c·cap + i], the
 * radial basis Q[r·cap + i] = scaling·(r_cut − r)²·T_r(x), x = (2r − r_min − r_cut)/(r_cut − r_min).
 * The other lanes are not touched. Vectorised over the pairs. */
static inline void mmtp_pair_geometry(const double *restrict pd, int P, int cap, double rmin, double rcut,
                                      double scaling, int R, double *restrict U, double *restrict Q)
{
    const double inv = 1.0 / (rcut - rmin);
    #pragma omp simd
    for (int j = 0; j < P; j++) {
        const double d0 = pd[3 * j], d1 = pd[3 * j + 1], d2 = pd[3 * j + 2];
        const double rr = sqrt(d0 * d0 + d1 * d1 + d2 * d2);
        const int i = j + 1;
        U[i] = d0 / rr;
        U[cap + i] = d1 / rr;
        U[2 * cap + i] = d2 / rr;
        const double x = (2.0 * rr - rmin - rcut) * inv, e = rcut - rr, e2 = e * e;
        double q0 = 1.0, q1 = x;
        Q[i] = scaling * e2;
        if (R > 1)
            Q[cap + i] = (scaling * x) * e2;
        for (int r = 2; r < R; r++) {
            const double q2 = 2.0 * x * q1 - q0;
            Q[r * cap + i] = (scaling * q2) * e2;
            q0 = q1;
            q1 = q2;
        }
    }
}

/* Δf of the changed pairs of a Monte Carlo trial, one species, as one small matrix product:
 *   DF[(s·K + mu)·cap + i] = Σ_c H[(s·K + mu)·RM + c]·QP[(s·RM + c)·cap + i]     (c = r·M + b)
 * and the same with H2 into DF2 (when H2 is not NULL), for lanes i < n (a multiple of 4).
 * QP[s, (r, b), i] = σ_s(b)·Q_r[i]·ψ_b[i]. Two rows and up to 16 lanes at a time in registers. */
static __attribute__((noinline)) void mmtp_pair_gemm(const double *H, const double *H2, int nsets, int K, int RM,
                                  const double *QP, int cap, int n, double *DF, double *DF2)
{
    const int nh = H2 ? 2 : 1;
    for (int s = 0; s < nsets; s++) {
        const double *qp = QP + (long)s * RM * cap;
        for (int row = 0; row < nh * K; row += 2) {
            /* rows `row` and `row + 1` of the stacked (H; H2) of set s */
            const double *h[2];
            double *out[2];
            int nr = (row + 1 < nh * K) ? 2 : 1;
            for (int u = 0; u < nr; u++) {
                const int rr = row + u, mu = rr % K;
                const double *Hs = rr < K ? H : H2;
                double *Ds = rr < K ? DF : DF2;
                h[u] = Hs + (long)(s * K + mu) * RM;
                out[u] = Ds + (long)(s * K + mu) * cap;
            }
            int i0 = 0;
#if defined(__AVX2__) && defined(__FMA__)
            for (; i0 + 16 <= n; i0 += 16) {
                __m256d a0 = _mm256_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;
                __m256d b0 = a0, b1 = a0, b2 = a0, b3 = a0;
                for (int c = 0; c < RM; c++) {
                    const double *q = qp + (long)c * cap + i0;
                    const __m256d q0 = _mm256_loadu_pd(q), q1 = _mm256_loadu_pd(q + 4);
                    const __m256d q2 = _mm256_loadu_pd(q + 8), q3 = _mm256_loadu_pd(q + 12);
                    const __m256d x = _mm256_broadcast_sd(h[0] + c);
                    a0 = _mm256_fmadd_pd(x, q0, a0); a1 = _mm256_fmadd_pd(x, q1, a1);
                    a2 = _mm256_fmadd_pd(x, q2, a2); a3 = _mm256_fmadd_pd(x, q3, a3);
                    if (nr == 2) {
                        const __m256d y = _mm256_broadcast_sd(h[1] + c);
                        b0 = _mm256_fmadd_pd(y, q0, b0); b1 = _mm256_fmadd_pd(y, q1, b1);
                        b2 = _mm256_fmadd_pd(y, q2, b2); b3 = _mm256_fmadd_pd(y, q3, b3);
                    }
                }
                _mm256_storeu_pd(out[0] + i0, a0); _mm256_storeu_pd(out[0] + i0 + 4, a1);
                _mm256_storeu_pd(out[0] + i0 + 8, a2); _mm256_storeu_pd(out[0] + i0 + 12, a3);
                if (nr == 2) {
                    _mm256_storeu_pd(out[1] + i0, b0); _mm256_storeu_pd(out[1] + i0 + 4, b1);
                    _mm256_storeu_pd(out[1] + i0 + 8, b2); _mm256_storeu_pd(out[1] + i0 + 12, b3);
                }
            }
            for (; i0 + 4 <= n; i0 += 4) {
                __m256d a0 = _mm256_setzero_pd(), b0 = a0;
                for (int c = 0; c < RM; c++) {
                    const __m256d q0 = _mm256_loadu_pd(qp + (long)c * cap + i0);
                    a0 = _mm256_fmadd_pd(_mm256_broadcast_sd(h[0] + c), q0, a0);
                    if (nr == 2)
                        b0 = _mm256_fmadd_pd(_mm256_broadcast_sd(h[1] + c), q0, b0);
                }
                _mm256_storeu_pd(out[0] + i0, a0);
                if (nr == 2)
                    _mm256_storeu_pd(out[1] + i0, b0);
            }
#endif
            for (; i0 < n; i0 += 4) {
                for (int u = 0; u < nr; u++) {
                    double acc[4] = {0.0, 0.0, 0.0, 0.0};
                    for (int c = 0; c < RM; c++) {
                        const double hh = h[u][c];
                        const double *q = qp + (long)c * cap + i0;
                        for (int l = 0; l < 4; l++) acc[l] += hh * q[l];
                    }
                    for (int l = 0; l < 4; l++) out[u][i0 + l] = acc[l];
                }
            }
        }
    }
}

/* The moved atom's own basic moments gain its changed terms with the P neighbours of a Monte Carlo
 * trial (lane 0 of every set): mom[β·L + s·Sp] += (−1)^|q| Σ_i DF2[(s·K + mu)·cap + i]·MONO[q·cap + i]
 * over i < Sp (β's radial function mu = basic[4β], monomial q = basic_q[β]; lanes without a
 * pair have DF2 = 0). Sp a multiple of 4. */
static __attribute__((noinline)) void mmtp_own_rows(double *mom, long L, int Sp, int nsets, int nb, const int *basic,
                                 const int *basic_q, const int *mono_exp, const double *DF2,
                                 const double *MONO, int cap, int K)
{
    for (int b = 0; b < nb; b++) {
        const int mu = basic[4 * b], q = basic_q[b];
        const double *m = MONO + (long)q * cap;
        const double sign = ((mono_exp[3 * q] + mono_exp[3 * q + 1] + mono_exp[3 * q + 2]) & 1) ? -1.0 : 1.0;
        const double *c0 = DF2 + (long)mu * cap, *c1 = DF2 + (long)(K + mu) * cap;
        double h0, h1 = 0.0;
        int i = 0;
#if defined(__AVX2__) && defined(__FMA__)
        __m256d x0 = _mm256_setzero_pd(), x1 = x0, y0 = x0, y1 = x0;
        for (; i + 8 <= Sp; i += 8) {
            const __m256d m0 = _mm256_loadu_pd(m + i), m1 = _mm256_loadu_pd(m + i + 4);
            x0 = _mm256_fmadd_pd(_mm256_loadu_pd(c0 + i), m0, x0);
            x1 = _mm256_fmadd_pd(_mm256_loadu_pd(c0 + i + 4), m1, x1);
            if (nsets > 1) {
                y0 = _mm256_fmadd_pd(_mm256_loadu_pd(c1 + i), m0, y0);
                y1 = _mm256_fmadd_pd(_mm256_loadu_pd(c1 + i + 4), m1, y1);
            }
        }
        for (; i + 4 <= Sp; i += 4) {
            const __m256d m0 = _mm256_loadu_pd(m + i);
            x0 = _mm256_fmadd_pd(_mm256_loadu_pd(c0 + i), m0, x0);
            if (nsets > 1)
                y0 = _mm256_fmadd_pd(_mm256_loadu_pd(c1 + i), m0, y0);
        }
        x0 = _mm256_add_pd(x0, x1);
        y0 = _mm256_add_pd(y0, y1);
        {
            const __m128d xs = _mm_add_pd(_mm256_castpd256_pd128(x0), _mm256_extractf128_pd(x0, 1));
            const __m128d ys = _mm_add_pd(_mm256_castpd256_pd128(y0), _mm256_extractf128_pd(y0, 1));
            h0 = _mm_cvtsd_f64(_mm_add_sd(xs, _mm_unpackhi_pd(xs, xs)));
            h1 = _mm_cvtsd_f64(_mm_add_sd(ys, _mm_unpackhi_pd(ys, ys)));
        }
#else
        h0 = 0.0;
#endif
        for (; i < Sp; i++) {
            h0 += c0[i] * m[i];
            if (nsets > 1)
                h1 += c1[i] * m[i];
        }
        mom[b * L] += sign * h0;
        if (nsets > 1)
            mom[b * L + Sp] += sign * h1;
    }
}

/* Cache rows into lanes, each basic row gaining its pair change (Monte Carlo, the lane path):
 * mom[β·L + s·Sp + l] = rows[l][s·nb + β] + DF[(s·K + mu_β)·cap + l]·MONO[q_β·cap + l]
 * for l < Sp (a multiple of 4), β < nb, s < nsets. Four rows β at a time over all lanes (the
 * 2·Sp cache lines of those rows, their MONO and DF rows and the output rows stay in L1), in
 * blocks of 4 rows × 4 lanes transposed in registers where AVX is available. */
static __attribute__((noinline)) void mmtp_lane_tile_add(double *const *rows, int Sp, int nb, int nsets,
                                                         double *mom, long L, const double *DF,
                                                         const double *MONO, int cap, int K,
                                                         const int *basic, const int *basic_q)
{
    int b = 0;
#if defined(__AVX2__) && defined(__FMA__)
    for (; b + 4 <= nb; b += 4) {
        const double *m[4];
        for (int u = 0; u < 4; u++)
            m[u] = MONO + (long)basic_q[b + u] * cap;
        for (int s = 0; s < nsets; s++) {
            const long off = (long)s * nb + b;
            const double *f[4];
            double *o[4];
            for (int u = 0; u < 4; u++) {
                f[u] = DF + (long)(s * K + basic[4 * (b + u)]) * cap;
                o[u] = mom + (b + u) * L + (long)s * Sp;
            }
            for (int h = 0; h < Sp; h += 4) {
                const __m256d r0 = _mm256_loadu_pd(rows[h] + off), r1 = _mm256_loadu_pd(rows[h + 1] + off);
                const __m256d r2 = _mm256_loadu_pd(rows[h + 2] + off), r3 = _mm256_loadu_pd(rows[h + 3] + off);
                const __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1);
                const __m256d t2 = _mm256_unpacklo_pd(r2, r3), t3 = _mm256_unpackhi_pd(r2, r3);
                _mm256_storeu_pd(o[0] + h, _mm256_fmadd_pd(_mm256_loadu_pd(f[0] + h), _mm256_loadu_pd(m[0] + h),
                                                           _mm256_permute2f128_pd(t0, t2, 0x20)));
                _mm256_storeu_pd(o[1] + h, _mm256_fmadd_pd(_mm256_loadu_pd(f[1] + h), _mm256_loadu_pd(m[1] + h),
                                                           _mm256_permute2f128_pd(t1, t3, 0x20)));
                _mm256_storeu_pd(o[2] + h, _mm256_fmadd_pd(_mm256_loadu_pd(f[2] + h), _mm256_loadu_pd(m[2] + h),
                                                           _mm256_permute2f128_pd(t0, t2, 0x31)));
                _mm256_storeu_pd(o[3] + h, _mm256_fmadd_pd(_mm256_loadu_pd(f[3] + h), _mm256_loadu_pd(m[3] + h),
                                                           _mm256_permute2f128_pd(t1, t3, 0x31)));
            }
        }
    }
#endif
    for (; b < nb; b++)
        for (int s = 0; s < nsets; s++) {
            const double *f = DF + (long)(s * K + basic[4 * b]) * cap, *m = MONO + (long)basic_q[b] * cap;
            double *q = mom + b * L + (long)s * Sp;
            for (int l = 0; l < Sp; l++)
                q[l] = rows[l][(long)s * nb + b] + f[l] * m[l];
        }
}

/* Lanes back into cache rows (Monte Carlo, an accepted trial): rows[l][s·nb + β] = mom[β·L + s·Sp + l]
 * for l < Sp (a multiple of 4), β < nb, s < nsets; four lanes at a time, each row written front
 * to back, in blocks of 4 rows × 4 lanes transposed in registers where AVX is available. (Four
 * rows β at a time over all lanes, the order of mmtp_lane_tile_add, is slower here: 2·Sp rows
 * written 32 bytes at a time.) */
static __attribute__((noinline)) void mmtp_lanes_to_rows(double *const *rows, int Sp, int nb, int nsets,
                                                         const double *mom, long L)
{
    for (int h = 0; h < Sp; h += 4)
        for (int s = 0; s < nsets; s++) {
            double *p0 = rows[h] + (long)s * nb, *p1 = rows[h + 1] + (long)s * nb;
            double *p2 = rows[h + 2] + (long)s * nb, *p3 = rows[h + 3] + (long)s * nb;
            const double *o = mom + (long)s * Sp + h;
            int b = 0;
#if defined(__AVX__)
            for (; b + 4 <= nb; b += 4) {
                const __m256d r0 = _mm256_loadu_pd(o + b * L), r1 = _mm256_loadu_pd(o + (b + 1) * L);
                const __m256d r2 = _mm256_loadu_pd(o + (b + 2) * L), r3 = _mm256_loadu_pd(o + (b + 3) * L);
                const __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1);
                const __m256d t2 = _mm256_unpacklo_pd(r2, r3), t3 = _mm256_unpackhi_pd(r2, r3);
                _mm256_storeu_pd(p0 + b, _mm256_permute2f128_pd(t0, t2, 0x20));
                _mm256_storeu_pd(p1 + b, _mm256_permute2f128_pd(t1, t3, 0x20));
                _mm256_storeu_pd(p2 + b, _mm256_permute2f128_pd(t0, t2, 0x31));
                _mm256_storeu_pd(p3 + b, _mm256_permute2f128_pd(t1, t3, 0x31));
            }
#endif
            for (; b < nb; b++) {
                const double *q = o + b * L;
                p0[b] = q[0]; p1[b] = q[1]; p2[b] = q[2]; p3[b] = q[3];
            }
        }
}

/* The product table and the site energies of many lanes at once (Monte Carlo), the rows
 * grouped by output: run r computes mom[out[r]·L + l] = Σ_k w[k]·mom[ab[2k]·L + l]·mom[ab[2k+1]·L + l]
 * over its rows k = run_start[r] .. run_start[r + 1] − 1 (every output has one run, after the
 * runs of its factors), then e[l] = Σ_k moment[k]·mom[mapping[k]·L + l]. The lanes go in chunks
 * (32 at a time, then the remaining 24, 16 or 8) whose sums stay in registers over a run: a row costs two loads and
 * two vector operations per 4 lanes, and no load or store of the output. Every lane runs the same
 * operations in the same order, whatever its chunk, so a centre's energy does not depend on its
 * lane. L is a multiple of 8. */
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define MMTP_LANE_CHUNK(NV)                                                                          \
static inline void mmtp_lane_chunk_##NV(double *mom, const int *ab, const double *w,                \
                                        const int *run_start, const int *run_out, int n_runs,       \
                                        const int *mapping, const double *moment, int n_basis,       \
                                        long L, int l0, double *e)                                   \
{                                                                                                    \
    __m256d acc[NV];                                                                                 \
    for (int r = 0; r < n_runs; r++) {                                                               \
        for (int v = 0; v < NV; v++) acc[v] = _mm256_setzero_pd();                                   \
        for (int k = run_start[r]; k < run_start[r + 1]; k++) {                                      \
            const double *pa = mom + (long)ab[2 * k] * L + l0;                                       \
            const double *pb = mom + (long)ab[2 * k + 1] * L + l0;                                   \
            const __m256d ww = _mm256_broadcast_sd(w + k);                                           \
            for (int v = 0; v < NV; v++)                                                             \
                acc[v] = _mm256_fmadd_pd(_mm256_mul_pd(ww, _mm256_loadu_pd(pa + 4 * v)),            \
                                         _mm256_loadu_pd(pb + 4 * v), acc[v]);                       \
        }                                                                                            \
        double *px = mom + (long)run_out[r] * L + l0;                                                \
        for (int v = 0; v < NV; v++) _mm256_storeu_pd(px + 4 * v, acc[v]);                          \
    }                                                                                                \
    for (int v = 0; v < NV; v++) acc[v] = _mm256_setzero_pd();                                       \
    for (int k = 0; k < n_basis; k++) {                                                              \
        const double *p = mom + (long)mapping[k] * L + l0;                                           \
        const __m256d c = _mm256_broadcast_sd(moment + k);                                          \
        for (int v = 0; v < NV; v++) acc[v] = _mm256_fmadd_pd(c, _mm256_loadu_pd(p + 4 * v), acc[v]); \
    }                                                                                                \
    for (int v = 0; v < NV; v++) _mm256_storeu_pd(e + l0 + 4 * v, acc[v]);                          \
}
MMTP_LANE_CHUNK(8)
MMTP_LANE_CHUNK(6)
MMTP_LANE_CHUNK(4)
MMTP_LANE_CHUNK(2)
#undef MMTP_LANE_CHUNK
#endif

static inline void mmtp_lane_products_energies(double *mom, const int *ab, const double *w,
                                               const int *run_start, const int *run_out, int n_runs,
                                               const int *mapping, const double *moment, int n_basis,
                                               int L, double *e)
{
    int l0 = 0;
#if defined(__AVX2__) && defined(__FMA__)
    for (; l0 + 32 <= L; l0 += 32)
        mmtp_lane_chunk_8(mom, ab, w, run_start, run_out, n_runs, mapping, moment, n_basis, L, l0, e);
    if (l0 + 24 <= L)
        mmtp_lane_chunk_6(mom, ab, w, run_start, run_out, n_runs, mapping, moment, n_basis, L, l0, e);
    else if (l0 + 16 <= L)
        mmtp_lane_chunk_4(mom, ab, w, run_start, run_out, n_runs, mapping, moment, n_basis, L, l0, e);
    else if (l0 + 8 <= L)
        mmtp_lane_chunk_2(mom, ab, w, run_start, run_out, n_runs, mapping, moment, n_basis, L, l0, e);
#else
    for (; l0 + 8 <= L; l0 += 8) {
        double acc[8];
        for (int r = 0; r < n_runs; r++) {
            for (int l = 0; l < 8; l++) acc[l] = 0.0;
            for (int k = run_start[r]; k < run_start[r + 1]; k++) {
                const double ww = w[k];
                const double *pa = mom + (long)ab[2 * k] * L + l0;
                const double *pb = mom + (long)ab[2 * k + 1] * L + l0;
                #pragma omp simd
                for (int l = 0; l < 8; l++) acc[l] += ww * pa[l] * pb[l];
            }
            double *px = mom + (long)run_out[r] * L + l0;
            for (int l = 0; l < 8; l++) px[l] = acc[l];
        }
        for (int l = 0; l < 8; l++) acc[l] = 0.0;
        for (int k = 0; k < n_basis; k++) {
            const double c = moment[k];
            const double *p = mom + (long)mapping[k] * L + l0;
            #pragma omp simd
            for (int l = 0; l < 8; l++) acc[l] += c * p[l];
        }
        for (int l = 0; l < 8; l++) e[l0 + l] = acc[l];
    }
#endif
}

#endif
