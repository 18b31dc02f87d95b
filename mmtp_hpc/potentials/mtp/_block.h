/* Column-blocked inner loops of the MTP site kernels.
 *
 * Per centre atom the neighbours are columns: every per-neighbour quantity is stored as a
 * row of length `ld` (neighbour-contiguous), so the work over neighbours becomes small
 * matrix products with the neighbours as the vectorised dimension:
 *
 *   f[μ, n]      = Σ_kc D[μ, kc] · (Q_k ψ_c)[kc, n]          radial functions (and derivatives)
 *   M[μ, q]      = Σ_n  f[μ, n] · mono[q, n]                  basic moments, (μ, q) layout
 *   G[μ, d, n]   = Σ_q  adj[μ, d, q] · mono[q, n]             adjoints dotted with monomials
 *
 * The products use register blocks of 4 rows × MMTP_NB columns, so each loaded monomial
 * column feeds several multiply-adds (the older per-neighbour dot products loaded one
 * coefficient per multiply-add and were bound by loads and add latency).
 *
 * Column counts passed to these functions are multiples of MMTP_NB; callers pad the
 * neighbour columns with finite values whose results are discarded.
 */
#ifndef MMTP_BLOCK_H
#define MMTP_BLOCK_H

#include <math.h>

/* Explicit SIMD with GCC/Clang vector extensions, so the register blocking does not depend on
 * the auto-vectoriser: MMTP_VW doubles per vector (4 with AVX, 2 otherwise), blocks of
 * MMTP_NB = 2 vectors of neighbour columns. */
#if defined(__AVX__)
#  define MMTP_VW 4
#else
#  define MMTP_VW 2
#endif
#define MMTP_NB (2 * MMTP_VW)
typedef double mmtp_vd __attribute__((vector_size(MMTP_VW * sizeof(double)), aligned(8), may_alias));

static inline mmtp_vd mmtp_ld(const double *p) { return *(const mmtp_vd *)p; }
static inline void mmtp_st(double *p, mmtp_vd v) { *(mmtp_vd *)p = v; }
static inline mmtp_vd mmtp_bc(double x) { mmtp_vd v = {0.0}; return v + x; }
static inline double mmtp_hsum(mmtp_vd v)
{
    double s = v[0];
    for (int k = 1; k < MMTP_VW; k++)
        s += v[k];
    return s;
}

static int mmtp_block_width(void) { return MMTP_NB; }

/* u[d·ld + j] /= r_j after r_j = sqrt(r_j) (u holds the difference vectors, r the squared
 * distances on entry) */
static inline void mmtp_unit_cols(double *u, double *r, int n, int ld)
{
    int j;
    #pragma omp simd
    for (j = 0; j < n; j++) {
        double x = sqrt(r[j]);
        r[j] = x;
        u[j] /= x;
        u[ld + j] /= x;
        u[2 * ld + j] /= x;
    }
}

/* Chebyshev radial basis with the (R_cut − r)² envelope for columns [0, n):
 * Q[k·ld + j] = s·T_k(x_j)·(R_cut − r_j)², dQ = ∂Q/∂r (when deriv). */
static inline void mmtp_radial_cols(const double *r, int n, int R, double rmin, double rcut,
                                    double scaling, double *Q, double *dQ, int ld, int deriv)
{
    const double xs = 2.0 / (rcut - rmin);
    int k, j;
    #pragma omp simd
    for (j = 0; j < n; j++) {
        Q[j] = 1.0;
        if (R > 1)
            Q[ld + j] = (2.0 * r[j] - rmin - rcut) / (rcut - rmin);
    }
    for (k = 2; k < R; k++) {
        double *t = Q + k * ld;
        const double *t1 = t - ld, *t2 = t - 2 * ld, *x = Q + ld;
        #pragma omp simd
        for (j = 0; j < n; j++)
            t[j] = 2.0 * x[j] * t1[j] - t2[j];
    }
    if (deriv) {
        #pragma omp simd
        for (j = 0; j < n; j++) {
            dQ[j] = 0.0;
            if (R > 1)
                dQ[ld + j] = xs;
        }
        for (k = 2; k < R; k++) {
            double *d = dQ + k * ld;
            const double *d1 = d - ld, *d2 = d - 2 * ld, *t1 = Q + (k - 1) * ld, *x = Q + ld;
            #pragma omp simd
            for (j = 0; j < n; j++)
                d[j] = 2.0 * xs * t1[j] + 2.0 * x[j] * d1[j] - d2[j];
        }
        for (k = 0; k < R; k++) {
            double *t = Q + k * ld, *d = dQ + k * ld;
            #pragma omp simd
            for (j = 0; j < n; j++) {
                double e = rcut - r[j];
                d[j] = scaling * (d[j] * (e * e) + t[j] * (-2.0 * e));
            }
        }
    }
    for (k = 0; k < R; k++) {
        double *t = Q + k * ld;
        #pragma omp simd
        for (j = 0; j < n; j++) {
            double e = rcut - r[j];
            t[j] = scaling * t[j] * (e * e);
        }
    }
}

/* Chebyshev magnetic basis of the columns: psi[c·ld + j] = T_c(eta_j), dpsi = scale_j·T'_c */
static inline void mmtp_cheb_cols(const double *eta, const double *scale, int n, int M,
                                  double *psi, double *dpsi, int ld)
{
    int c, j;
    #pragma omp simd
    for (j = 0; j < n; j++) {
        psi[j] = 1.0;
        dpsi[j] = 0.0;
        if (M > 1) {
            psi[ld + j] = eta[j];
            dpsi[ld + j] = scale[j];
        }
    }
    for (c = 2; c < M; c++) {
        double *t = psi + c * ld, *d = dpsi + c * ld;
        const double *t1 = t - ld, *t2 = t - 2 * ld, *d1 = d - ld, *d2 = d - 2 * ld;
        #pragma omp simd
        for (j = 0; j < n; j++) {
            t[j] = 2.0 * eta[j] * t1[j] - t2[j];
            d[j] = 2.0 * scale[j] * t1[j] + 2.0 * eta[j] * d1[j] - d2[j];
        }
    }
}

/* qp[(k·M + c)·ld + j] = Q_k ψ_c, dqp = Q'_k ψ_c, qdp = Q_k ψ'_c (the last two when deriv) */
static inline void mmtp_qp_cols(const double *Q, const double *dQ, const double *psi,
                                const double *dpsi, int R, int M, int n, int ld,
                                double *qp, double *dqp, double *qdp, int deriv)
{
    int k, c, j;
    for (k = 0; k < R; k++) {
        for (c = 0; c < M; c++) {
            const double *q = Q + k * ld, *p = psi + c * ld;
            double *o = qp + (k * M + c) * ld;
            #pragma omp simd
            for (j = 0; j < n; j++)
                o[j] = q[j] * p[j];
            if (deriv) {
                const double *dq = dQ + k * ld, *dp = dpsi + c * ld;
                double *o1 = dqp + (k * M + c) * ld, *o2 = qdp + (k * M + c) * ld;
                #pragma omp simd
                for (j = 0; j < n; j++) {
                    o1[j] = dq[j] * p[j];
                    o2[j] = q[j] * dp[j];
                }
            }
        }
    }
}

/* Four rows against one column block: out[d·ldo + k] = Σ_j a[d·lda + j] · x[j·ldx + k] for
 * d < 4, k < MMTP_NB, where row 0 runs over j < len0 and rows 1..3 over j < len1 ≤ len0 (for
 * the adjoint rows of one radial function: the adjoint, and its lowered copies whose
 * monomials have one degree less). */
static inline void mmtp_adjoint_block(const double *a, int lda, int len0, int len1,
                                      const double *x, int ldx, double *out, int ldo)
{
    const double *a0 = a, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
    const mmtp_vd z = mmtp_bc(0.0);
    mmtp_vd c0 = z, d0 = z, c1 = z, d1 = z, c2 = z, d2 = z, c3 = z, d3 = z;
    int j;
    for (j = 0; j < len1; j++) {
        const mmtp_vd x0 = mmtp_ld(x + j * ldx), x1 = mmtp_ld(x + j * ldx + MMTP_VW);
        mmtp_vd s = mmtp_bc(a0[j]);
        c0 += s * x0; d0 += s * x1;
        s = mmtp_bc(a1[j]);
        c1 += s * x0; d1 += s * x1;
        s = mmtp_bc(a2[j]);
        c2 += s * x0; d2 += s * x1;
        s = mmtp_bc(a3[j]);
        c3 += s * x0; d3 += s * x1;
    }
    for (; j < len0; j++) {
        const mmtp_vd s = mmtp_bc(a0[j]);
        c0 += s * mmtp_ld(x + j * ldx);
        d0 += s * mmtp_ld(x + j * ldx + MMTP_VW);
    }
    mmtp_st(out, c0); mmtp_st(out + MMTP_VW, d0);
    mmtp_st(out + ldo, c1); mmtp_st(out + ldo + MMTP_VW, d1);
    mmtp_st(out + 2 * ldo, c2); mmtp_st(out + 2 * ldo + MMTP_VW, d2);
    mmtp_st(out + 3 * ldo, c3); mmtp_st(out + 3 * ldo + MMTP_VW, d3);
}

/* One column block: out[r·ldo + k] = Σ_{j<len} a[r·lda + j] · x[j·ldx + k], r < nr, k < MMTP_NB */
static inline void mmtp_gemm_block(const double *a, int lda, int nr, int len,
                                   const double *x, int ldx, double *out, int ldo)
{
    int r = 0, j;
    const mmtp_vd z = mmtp_bc(0.0);
    for (; r + 4 <= nr; r += 4)
        mmtp_adjoint_block(a + r * lda, lda, len, len, x, ldx, out + r * ldo, ldo);
    for (; r < nr; r++) {
        const double *a0 = a + r * lda;
        mmtp_vd c0 = z, d0 = z;
        for (j = 0; j < len; j++) {
            const mmtp_vd s = mmtp_bc(a0[j]);
            c0 += s * mmtp_ld(x + j * ldx);
            d0 += s * mmtp_ld(x + j * ldx + MMTP_VW);
        }
        mmtp_st(out + r * ldo, c0); mmtp_st(out + r * ldo + MMTP_VW, d0);
    }
}

/* Columns [0, n): out = a · x over blocks of MMTP_NB (n a multiple of MMTP_NB) */
static inline void mmtp_gemm_cols(const double *a, int lda, int nr, int len,
                                  const double *x, int ldx, int n, double *out, int ldo)
{
    for (int j0 = 0; j0 < n; j0 += MMTP_NB)
        mmtp_gemm_block(a, lda, nr, len, x + j0, ldx, out + j0, ldo);
}

/* Monomials of the unit vectors: mono[q·ld + j] = mono[parent_q·ld + j] · u[dir_q·ld + j] */
static inline void mmtp_monomials_cols(const int *parent, const int *dir, int nm,
                                       const double *u, int n, int ld, double *mono)
{
    int q, j;
    #pragma omp simd
    for (j = 0; j < n; j++)
        mono[j] = 1.0;
    for (q = 1; q < nm; q++) {
        const double *p = mono + parent[q] * ld, *d = u + dir[q] * ld;
        double *o = mono + q * ld;
        #pragma omp simd
        for (j = 0; j < n; j++)
            o[j] = p[j] * d[j];
    }
}

/* out[q] = Σ_{j<n} f[j] · x[q·ldx + j] for q < nq (n a multiple of MMTP_NB) */
static inline void mmtp_rowdots(const double *f, const double *x, int ldx, int nq, int n, double *out)
{
    int q = 0, j;
    const mmtp_vd z = mmtp_bc(0.0);
    for (; q + 4 <= nq; q += 4) {
        const double *x0 = x + q * ldx, *x1 = x0 + ldx, *x2 = x1 + ldx, *x3 = x2 + ldx;
        mmtp_vd c0 = z, d0 = z, c1 = z, d1 = z, c2 = z, d2 = z, c3 = z, d3 = z;
        for (j = 0; j < n; j += MMTP_NB) {
            const mmtp_vd f0 = mmtp_ld(f + j), f1 = mmtp_ld(f + j + MMTP_VW);
            c0 += f0 * mmtp_ld(x0 + j); d0 += f1 * mmtp_ld(x0 + j + MMTP_VW);
            c1 += f0 * mmtp_ld(x1 + j); d1 += f1 * mmtp_ld(x1 + j + MMTP_VW);
            c2 += f0 * mmtp_ld(x2 + j); d2 += f1 * mmtp_ld(x2 + j + MMTP_VW);
            c3 += f0 * mmtp_ld(x3 + j); d3 += f1 * mmtp_ld(x3 + j + MMTP_VW);
        }
        out[q] = mmtp_hsum(c0 + d0);
        out[q + 1] = mmtp_hsum(c1 + d1);
        out[q + 2] = mmtp_hsum(c2 + d2);
        out[q + 3] = mmtp_hsum(c3 + d3);
    }
    for (; q < nq; q++) {
        const double *x0 = x + q * ldx;
        mmtp_vd c0 = z, d0 = z;
        for (j = 0; j < n; j += MMTP_NB) {
            c0 += mmtp_ld(f + j) * mmtp_ld(x0 + j);
            d0 += mmtp_ld(f + j + MMTP_VW) * mmtp_ld(x0 + j + MMTP_VW);
        }
        out[q] = mmtp_hsum(c0 + d0);
    }
}

/* Per-neighbour sums over the radial functions of one coefficient set (K rows each):
 *   A[j]  = Σ_μ G[μ,0,j] f'_μ[j],   B_d[j] = Σ_μ f_μ[j] G[μ,d,j] (d = 1..3),
 *   dmj[j] = Σ_μ G[μ,0,j] ∂f_μ/∂m_j,  dmi[j] = Σ_μ G[μ,0,j] ∂f_μ/∂m_i   (the last two when mag)
 * G rows (μ, d) at G[(4μ + d)·ld]; f, f', ∂f/∂m_j, ∂f/∂m_i rows μ at [μ·ld]. out: 6 rows of ld. */
static inline void mmtp_combine_cols(const double *G, const double *f, const double *fr,
                                     const double *fmj, const double *fmi, int K, int n, int ld,
                                     int mag, double *out)
{
    double *A = out, *Bx = out + ld, *By = out + 2 * ld, *Bz = out + 3 * ld;
    double *Dj = out + 4 * ld, *Di = out + 5 * ld;
    int mu, j;
    #pragma omp simd
    for (j = 0; j < n; j++) {
        A[j] = 0.0; Bx[j] = 0.0; By[j] = 0.0; Bz[j] = 0.0; Dj[j] = 0.0; Di[j] = 0.0;
    }
    for (mu = 0; mu < K; mu++) {
        const double *g0 = G + (4 * mu) * ld, *g1 = g0 + ld, *g2 = g1 + ld, *g3 = g2 + ld;
        const double *fm = f + mu * ld, *frm = fr + mu * ld;
        #pragma omp simd
        for (j = 0; j < n; j++) {
            A[j] += g0[j] * frm[j];
            Bx[j] += fm[j] * g1[j];
            By[j] += fm[j] * g2[j];
            Bz[j] += fm[j] * g3[j];
        }
        if (mag) {
            const double *fj = fmj + mu * ld, *fi = fmi + mu * ld;
            #pragma omp simd
            for (j = 0; j < n; j++) {
                Dj[j] += g0[j] * fj[j];
                Di[j] += g0[j] * fi[j];
            }
        }
    }
}

#endif
