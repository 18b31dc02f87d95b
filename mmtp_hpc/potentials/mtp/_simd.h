/* Inner loops of the MTP kernels that the compiler may vectorise.
 *
 * `omp simd reduction` allows reassociating these sums (and only these): results change
 * at the 1e-16 relative level, and stay independent of the number of threads because
 * every sum belongs to one atom. Without -fopenmp the pragmas are ignored (scalar code).
 */
#ifndef MMTP_SIMD_H
#define MMTP_SIMD_H

/* s = Σ cf·qp, w = Σ cf·dqp, wd = Σ cf·qdp, wi = Σ cfd·qp over n terms */
static inline void mmtp_dot4(const double *cf, const double *cfd, const double *qp,
                             const double *dqp, const double *qdp, int n,
                             double *s, double *w, double *wd, double *wi)
{
    double a = 0.0, b = 0.0, c = 0.0, d = 0.0;
    #pragma omp simd reduction(+:a,b,c,d)
    for (int k = 0; k < n; k++) {
        a += cf[k] * qp[k];
        b += cf[k] * dqp[k];
        c += cf[k] * qdp[k];
        d += cfd[k] * qp[k];
    }
    *s = a; *w = b; *wd = c; *wi = d;
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

/* s = Σ cf·q, w = Σ cf·dq */
static inline void mmtp_dot2(const double *cf, const double *q, const double *dq, int n,
                             double *s, double *w)
{
    double a = 0.0, b = 0.0;
    #pragma omp simd reduction(+:a,b)
    for (int k = 0; k < n; k++) {
        a += cf[k] * q[k];
        b += cf[k] * dq[k];
    }
    *s = a; *w = b;
}

/* y += alpha·x */
static inline void mmtp_axpy(double *y, double alpha, const double *x, int n)
{
    #pragma omp simd
    for (int k = 0; k < n; k++)
        y[k] += alpha * x[k];
}

/* four dot products of a, b, c, d with the same vector m */
static inline void mmtp_dot4m(const double *a, const double *b, const double *c, const double *d,
                              const double *m, int n, double *sa, double *sb, double *sc, double *sd)
{
    double x = 0.0, y = 0.0, z = 0.0, w = 0.0;
    #pragma omp simd reduction(+:x,y,z,w)
    for (int k = 0; k < n; k++) {
        x += a[k] * m[k];
        y += b[k] * m[k];
        z += c[k] * m[k];
        w += d[k] * m[k];
    }
    *sa = x; *sb = y; *sc = z; *sd = w;
}

/* One-pass symmetrised evaluation: two coefficient sets on the same per-neighbour vectors.
 * out[0..3] = (cf·qp, cf·dqp, cf·qdp, cfd·qp), out[4..7] the same with cf2, cfd2 */
static inline void mmtp_dot8(const double *cf, const double *cfd, const double *cf2,
                             const double *cfd2, const double *qp, const double *dqp,
                             const double *qdp, int n, double *out)
{
    double a = 0.0, b = 0.0, c = 0.0, d = 0.0, a2 = 0.0, b2 = 0.0, c2 = 0.0, d2 = 0.0;
    #pragma omp simd reduction(+:a,b,c,d,a2,b2,c2,d2)
    for (int k = 0; k < n; k++) {
        a += cf[k] * qp[k];
        b += cf[k] * dqp[k];
        c += cf[k] * qdp[k];
        d += cfd[k] * qp[k];
        a2 += cf2[k] * qp[k];
        b2 += cf2[k] * dqp[k];
        c2 += cf2[k] * qdp[k];
        d2 += cfd2[k] * qp[k];
    }
    out[0] = a; out[1] = b; out[2] = c; out[3] = d;
    out[4] = a2; out[5] = b2; out[6] = c2; out[7] = d2;
}

/* y += alpha·x, y2 += alpha2·x */
static inline void mmtp_axpy2(double *y, double alpha, double *y2, double alpha2,
                              const double *x, int n)
{
    #pragma omp simd
    for (int k = 0; k < n; k++) {
        y[k] += alpha * x[k];
        y2[k] += alpha2 * x[k];
    }
}

/* eight dot products of a, b, c, d, a2, b2, c2, d2 with the same vector m (into out[0..7]) */
static inline void mmtp_dot8m(const double *a, const double *b, const double *c, const double *d,
                              const double *a2, const double *b2, const double *c2,
                              const double *d2, const double *m, int n, double *out)
{
    double x = 0.0, y = 0.0, z = 0.0, w = 0.0, x2 = 0.0, y2 = 0.0, z2 = 0.0, w2 = 0.0;
    #pragma omp simd reduction(+:x,y,z,w,x2,y2,z2,w2)
    for (int k = 0; k < n; k++) {
        x += a[k] * m[k];
        y += b[k] * m[k];
        z += c[k] * m[k];
        w += d[k] * m[k];
        x2 += a2[k] * m[k];
        y2 += b2[k] * m[k];
        z2 += c2[k] * m[k];
        w2 += d2[k] * m[k];
    }
    out[0] = x; out[1] = y; out[2] = z; out[3] = w;
    out[4] = x2; out[5] = y2; out[6] = z2; out[7] = w2;
}

#endif
