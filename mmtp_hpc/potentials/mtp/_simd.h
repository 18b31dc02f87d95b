/* Inner loops of the MTP kernels that the compiler may vectorise.
 *
 * `omp simd reduction` allows reassociating these sums (and only these): results change
 * at the 1e-16 relative level, and stay independent of the number of threads because
 * every sum belongs to one atom. Without -fopenmp the pragmas are ignored (scalar code).
 */
#ifndef MMTP_SIMD_H
#define MMTP_SIMD_H

#if defined(__AVX__)
#include <immintrin.h>
#endif

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

/* The changed pair terms of a Monte Carlo trial into the lanes (``lane_pair_changes``): for every
 * basic row β (radial function mu = basic[4β], monomial q = basic_q[β]) and set s,
 *   mom[β·L + s·Sp + i] += DF[(s·K + mu)·cap + i]·MONO[q·cap + i]      (i < Sp, the set's lanes)
 * and, with DF2, the moved atom's own row (lane s·Sp) gains
 * (−1)^|q| Σ_i DF2[(s·K + mu)·cap + i]·MONO[q·cap + i].
 * Sp is a multiple of 4; lanes without a changed pair have DF = DF2 = 0. */
static inline void mmtp_pair_rows(double *mom, long L, int Sp, int nsets, int nb, const int *basic,
                                  const int *basic_q, const int *mono_exp, const double *DF,
                                  const double *DF2, const double *MONO, int cap, int K)
{
    for (int b = 0; b < nb; b++) {
        const int mu = basic[4 * b], q = basic_q[b];
        const double *m = MONO + (long)q * cap;
        const double sign = ((mono_exp[3 * q] + mono_exp[3 * q + 1] + mono_exp[3 * q + 2]) & 1) ? -1.0 : 1.0;
        for (int s = 0; s < nsets; s++) {
            double *restrict y = mom + b * L + (long)s * Sp;
            const double *a = DF + (long)(s * K + mu) * cap;
            if (DF2 == 0) {
                #pragma omp simd
                for (int i = 0; i < Sp; i++) y[i] += a[i] * m[i];
                continue;
            }
            const double *c = DF2 + (long)(s * K + mu) * cap;
            double h;
            int i = 0;
#if defined(__AVX2__) && defined(__FMA__)
            __m256d h0 = _mm256_setzero_pd(), h1 = _mm256_setzero_pd();
            for (; i + 8 <= Sp; i += 8) {
                const __m256d m0 = _mm256_loadu_pd(m + i), m1 = _mm256_loadu_pd(m + i + 4);
                _mm256_storeu_pd(y + i, _mm256_fmadd_pd(_mm256_loadu_pd(a + i), m0, _mm256_loadu_pd(y + i)));
                _mm256_storeu_pd(y + i + 4,
                                 _mm256_fmadd_pd(_mm256_loadu_pd(a + i + 4), m1, _mm256_loadu_pd(y + i + 4)));
                h0 = _mm256_fmadd_pd(_mm256_loadu_pd(c + i), m0, h0);
                h1 = _mm256_fmadd_pd(_mm256_loadu_pd(c + i + 4), m1, h1);
            }
            for (; i + 4 <= Sp; i += 4) {
                const __m256d m0 = _mm256_loadu_pd(m + i);
                _mm256_storeu_pd(y + i, _mm256_fmadd_pd(_mm256_loadu_pd(a + i), m0, _mm256_loadu_pd(y + i)));
                h0 = _mm256_fmadd_pd(_mm256_loadu_pd(c + i), m0, h0);
            }
            h0 = _mm256_add_pd(h0, h1);
            const __m128d hs = _mm_add_pd(_mm256_castpd256_pd128(h0), _mm256_extractf128_pd(h0, 1));
            h = _mm_cvtsd_f64(_mm_add_sd(hs, _mm_unpackhi_pd(hs, hs)));
#else
            h = 0.0;
#endif
            for (; i < Sp; i++) {
                y[i] += a[i] * m[i];
                h += c[i] * m[i];
            }
            y[0] += sign * h;
        }
    }
}

/* Δf of the changed pairs of a Monte Carlo trial, one species (``pair_deltas``): for lanes
 * i < n (a multiple of 4),
 *   DF[(s·K + mu)·cap + i] = Σ_b σ_s(b) PS[b·cap + i] Σ_r H[((s·K + mu)·R + r)·M + b]·Q[r·cap + i]
 * with σ_0(b) = 1, σ_1(b) = (−1)^b; four lanes at a time, the sums in registers. */
static inline void mmtp_pair_deltas(const double *H, int nsets, int K, int R, int M, const double *Q,
                                    const double *PS, int cap, int n, double *DF)
{
    for (int i0 = 0; i0 < n; i0 += 4) {
        for (int s = 0; s < nsets; s++)
            for (int mu = 0; mu < K; mu++) {
                const double *h = H + (long)(s * K + mu) * R * M;
                double df[4] = {0.0, 0.0, 0.0, 0.0};
                for (int b = 0; b < M; b++) {
                    double g[4] = {0.0, 0.0, 0.0, 0.0};
                    for (int r = 0; r < R; r++) {
                        const double hh = h[r * M + b];
                        const double *q = Q + (long)r * cap + i0;
                        for (int l = 0; l < 4; l++) g[l] += hh * q[l];
                    }
                    const double sg = (s == 1 && (b & 1)) ? -1.0 : 1.0;
                    const double *ps = PS + (long)b * cap + i0;
                    for (int l = 0; l < 4; l++) df[l] += (sg * ps[l]) * g[l];
                }
                double *out = DF + (long)(s * K + mu) * cap + i0;
                for (int l = 0; l < 4; l++) out[l] = df[l];
            }
    }
}

/* Four cache rows into four lanes and back (Monte Carlo): mom[β·L + s·Sp + l] = rows[l][s·nb + β]
 * for l < 4, β < nb, s < nsets (to_lanes != 0), or the reverse (to_lanes == 0); 4×4 blocks
 * transposed in registers where AVX is available. */
static inline void mmtp_lane_tile(double *const *rows, int nb, int nsets, double *mom, long L, int Sp,
                                  int to_lanes)
{
    for (int s = 0; s < nsets; s++) {
        double *p0 = rows[0] + (long)s * nb, *p1 = rows[1] + (long)s * nb;
        double *p2 = rows[2] + (long)s * nb, *p3 = rows[3] + (long)s * nb;
        double *o = mom + (long)s * Sp;
        int b = 0;
#if defined(__AVX__)
        for (; b + 4 <= nb; b += 4) {
            __m256d r0, r1, r2, r3;
            if (to_lanes) {
                r0 = _mm256_loadu_pd(p0 + b); r1 = _mm256_loadu_pd(p1 + b);
                r2 = _mm256_loadu_pd(p2 + b); r3 = _mm256_loadu_pd(p3 + b);
            } else {
                r0 = _mm256_loadu_pd(o + b * L); r1 = _mm256_loadu_pd(o + (b + 1) * L);
                r2 = _mm256_loadu_pd(o + (b + 2) * L); r3 = _mm256_loadu_pd(o + (b + 3) * L);
            }
            const __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1);
            const __m256d t2 = _mm256_unpacklo_pd(r2, r3), t3 = _mm256_unpackhi_pd(r2, r3);
            const __m256d c0 = _mm256_permute2f128_pd(t0, t2, 0x20), c1 = _mm256_permute2f128_pd(t1, t3, 0x20);
            const __m256d c2 = _mm256_permute2f128_pd(t0, t2, 0x31), c3 = _mm256_permute2f128_pd(t1, t3, 0x31);
            if (to_lanes) {
                _mm256_storeu_pd(o + b * L, c0); _mm256_storeu_pd(o + (b + 1) * L, c1);
                _mm256_storeu_pd(o + (b + 2) * L, c2); _mm256_storeu_pd(o + (b + 3) * L, c3);
            } else {
                _mm256_storeu_pd(p0 + b, c0); _mm256_storeu_pd(p1 + b, c1);
                _mm256_storeu_pd(p2 + b, c2); _mm256_storeu_pd(p3 + b, c3);
            }
        }
#endif
        for (; b < nb; b++) {
            double *q = o + b * L;
            if (to_lanes) {
                q[0] = p0[b]; q[1] = p1[b]; q[2] = p2[b]; q[3] = p3[b];
            } else {
                p0[b] = q[0]; p1[b] = q[1]; p2[b] = q[2]; p3[b] = q[3];
            }
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
