/* Distance test of one centre against a contiguous run of binned entries (mmtp_hpc.system._neighbors).
 *
 * Appends the entries s <= q < e with r2 = |(x, y, z)[q] - centre|^2 < r2_max to found[k:]
 * (branch-free compaction: store always, advance on a hit) and lowers *r2_min to the
 * smallest r2 seen. Returns the new k. The arrays must be readable one entry past e.
 *
 * Every r2 is computed by the same two-lane instruction sequence (a single entry in the
 * low lane), so a pair gets the same r2, bit for bit, from either end: the pair search
 * relies on that symmetry.
 */
#ifndef MMTP_NEIGHBORS_SCAN_H
#define MMTP_NEIGHBORS_SCAN_H

#include <stdint.h>

#if defined(__SSE2__)
#include <emmintrin.h>

/* squared distances of entries q and q + 1 from (cx, cy, cz) */
static inline __m128d mmtp_r2_two(const double *x, const double *y, const double *z, int64_t q,
                                  __m128d cx, __m128d cy, __m128d cz)
{
    __m128d dx = _mm_sub_pd(_mm_loadu_pd(x + q), cx);
    __m128d dy = _mm_sub_pd(_mm_loadu_pd(y + q), cy);
    __m128d dz = _mm_sub_pd(_mm_loadu_pd(z + q), cz);
    return _mm_add_pd(_mm_add_pd(_mm_mul_pd(dx, dx), _mm_mul_pd(dy, dy)), _mm_mul_pd(dz, dz));
}

static inline int64_t mmtp_nb_scan(const double *x, const double *y, const double *z, const int32_t *idx,
                                   int64_t s, int64_t e, double xi, double yi, double zi, double r2_max,
                                   int32_t *found, int64_t k, double *r2_min)
{
    const __m128d cx = _mm_set1_pd(xi), cy = _mm_set1_pd(yi), cz = _mm_set1_pd(zi);
    const __m128d lim = _mm_set1_pd(r2_max);
    __m128d low = _mm_set1_pd(*r2_min);
    __m128d r2;
    int64_t q = s;
    int m;
    for (; q + 2 <= e; q += 2) {
        r2 = mmtp_r2_two(x, y, z, q, cx, cy, cz);
        m = _mm_movemask_pd(_mm_cmplt_pd(r2, lim));
        low = _mm_min_pd(low, r2);
        found[k] = idx[q];
        k += m & 1;
        found[k] = idx[q + 1];
        k += m >> 1;
    }
    if (q < e) {
        /* The last entry in the low lane; the high lane (entry e) is ignored. */
        r2 = mmtp_r2_two(x, y, z, q, cx, cy, cz);
        m = _mm_movemask_pd(_mm_cmplt_pd(r2, lim));
        low = _mm_min_sd(low, r2);
        found[k] = idx[q];
        k += m & 1;
    }
    low = _mm_min_sd(low, _mm_unpackhi_pd(low, low));
    *r2_min = _mm_cvtsd_f64(low);
    return k;
}

#else

static inline int64_t mmtp_nb_scan(const double *x, const double *y, const double *z, const int32_t *idx,
                                   int64_t s, int64_t e, double xi, double yi, double zi, double r2_max,
                                   int32_t *found, int64_t k, double *r2_min)
{
    double low = *r2_min, dx, dy, dz, r2;
    int64_t q;
    for (q = s; q < e; q++) {
        dx = x[q] - xi;
        dy = y[q] - yi;
        dz = z[q] - zi;
        r2 = dx * dx + dy * dy + dz * dz;
        found[k] = idx[q];
        k += r2 < r2_max;
        low = r2 < low ? r2 : low;
    }
    *r2_min = low;
    return k;
}

#endif
#endif
