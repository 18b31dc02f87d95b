/* Inner loops of the MTP kernels that the compiler may vectorise.
 *
 * `omp simd reduction` allows reassociating these sums (and only these): results change
 * at the 1e-16 relative level, and stay independent of the number of threads because
 * every sum belongs to one atom. Without -fopenmp the pragmas are ignored (scalar code).
 */
#ifndef MMTP_SIMD_H
#define MMTP_SIMD_H

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

/* y += a·b (elementwise) */
static inline void mmtp_fma_elem(double *restrict y, const double *restrict a, const double *restrict b, int n)
{
    #pragma omp simd
    for (int k = 0; k < n; k++)
        y[k] += a[k] * b[k];
}

/* y += (a·b)·h (elementwise, h a scalar) */
static inline void mmtp_fma_elem_scaled(double *restrict y, const double *restrict a, const double *restrict b,
                                        double h, int n)
{
    #pragma omp simd
    for (int k = 0; k < n; k++)
        y[k] += (a[k] * b[k]) * h;
}

/* y += a·b (elementwise); returns Σ c·b */
static inline double mmtp_fma_elem_dot(double *restrict y, const double *restrict a, const double *restrict b,
                                       const double *restrict c, int n)
{
    double x = 0.0;
    #pragma omp simd reduction(+:x)
    for (int k = 0; k < n; k++) {
        y[k] += a[k] * b[k];
        x += c[k] * b[k];
    }
    return x;
}

/* y = a·b (elementwise) */
static inline void mmtp_mul_elem(double *restrict y, const double *restrict a, const double *restrict b, int n)
{
    #pragma omp simd
    for (int k = 0; k < n; k++)
        y[k] = a[k] * b[k];
}

/* Lane-parallel product table for many site-energy evaluations at once (Monte Carlo):
 * mom[x·L + l] += w·mom[a·L + l]·mom[b·L + l] for every row (a, b, x) and every lane l.
 * The rows come in runs of one output x (run r: rows run_start[r]..run_start[r + 1] − 1; x is
 * never a or b). fresh[r]: no earlier run wrote or read x, so the run clears x itself (no
 * clearing of the whole table first). Every lane runs the same instructions (L is a multiple
 * of the vector width), so a centre's energy does not depend on the lane it is computed in.
 * (Tiling the lanes into L1-sized chunks, also with the run summed in registers, measured
 * slower: 8, 16 or 32 lanes.) */
static inline void mmtp_lane_products(double *mom, const int *times, const double *weights,
                                      const int *run_start, const char *fresh, int n_runs, int L)
{
    for (int r = 0; r < n_runs; r++) {
        double *restrict px = mom + (long)times[3 * run_start[r] + 2] * L;
        if (fresh[r])
            for (int l = 0; l < L; l++) px[l] = 0.0;
        for (int k = run_start[r]; k < run_start[r + 1]; k++) {
            const double w = weights[k];
            const double *pa = mom + (long)times[3 * k] * L;
            const double *pb = mom + (long)times[3 * k + 1] * L;
            #pragma omp simd
            for (int l = 0; l < L; l++)
                px[l] += w * pa[l] * pb[l];
        }
    }
}

/* e[l] += Σ_k moment[k]·mom[mapping[k]·L + l] */
static inline void mmtp_lane_energies(const double *mom, const int *mapping, const double *moment,
                                      int n_basis, int L, double *restrict e)
{
    for (int k = 0; k < n_basis; k++) {
        const double c = moment[k];
        const double *p = mom + (long)mapping[k] * L;
        #pragma omp simd
        for (int l = 0; l < L; l++)
            e[l] += c * p[l];
    }
}

#endif
