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
#include <string.h>

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

/* One row against one column block: out[k] = Σ_{j<len} a[j] · x[j·ldx + k], k < MMTP_NB (the
 * adjoint row G of one radial function alone: ∂E/∂m needs no ∇_u rows) */
static inline void mmtp_row_block(const double *a, int len, const double *x, int ldx, double *out)
{
    const mmtp_vd z = mmtp_bc(0.0);
    mmtp_vd c0 = z, d0 = z, c1 = z, d1 = z;
    int j = 0;
    for (; j + 2 <= len; j += 2) {
        const mmtp_vd s0 = mmtp_bc(a[j]), s1 = mmtp_bc(a[j + 1]);
        c0 += s0 * mmtp_ld(x + j * ldx); d0 += s0 * mmtp_ld(x + j * ldx + MMTP_VW);
        c1 += s1 * mmtp_ld(x + (j + 1) * ldx); d1 += s1 * mmtp_ld(x + (j + 1) * ldx + MMTP_VW);
    }
    for (; j < len; j++) {
        const mmtp_vd s0 = mmtp_bc(a[j]);
        c0 += s0 * mmtp_ld(x + j * ldx); d0 += s0 * mmtp_ld(x + j * ldx + MMTP_VW);
    }
    mmtp_st(out, c0 + c1); mmtp_st(out + MMTP_VW, d0 + d1);
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
 *   A[j]  = Σ_μ G[μ,0,j] f'_μ[j],   B_d[j] = Σ_μ f_μ[j] G[μ,d,j] (d = 1..3)   (when forces),
 *   dmj[j] = Σ_μ G[μ,0,j] ∂f_μ/∂m_j,  dmi[j] = Σ_μ G[μ,0,j] ∂f_μ/∂m_i       (when mag)
 * G rows (μ, d) at G[(4μ + d)·ld]; f, f', ∂f/∂m_j, ∂f/∂m_i rows μ at [μ·ld]. out: 6 rows of ld
 * (rows 0..3 only written with forces, rows 4..5 only with mag; f and fr unused without forces:
 * the magnetic-only evaluation forms no G rows d = 1..3). */
static inline void mmtp_combine_cols(const double *G, const double *f, const double *fr,
                                     const double *fmj, const double *fmi, int K, int n, int ld,
                                     int forces, int mag, double *out)
{
    double *A = out, *Bx = out + ld, *By = out + 2 * ld, *Bz = out + 3 * ld;
    double *Dj = out + 4 * ld, *Di = out + 5 * ld;
    int mu, j;
    if (forces) {
        #pragma omp simd
        for (j = 0; j < n; j++) {
            A[j] = 0.0; Bx[j] = 0.0; By[j] = 0.0; Bz[j] = 0.0;
        }
    }
    if (mag) {
        #pragma omp simd
        for (j = 0; j < n; j++) {
            Dj[j] = 0.0; Di[j] = 0.0;
        }
    }
    for (mu = 0; mu < K; mu++) {
        const double *g0 = G + (4 * mu) * ld;
        if (forces) {
            const double *g1 = g0 + ld, *g2 = g1 + ld, *g3 = g2 + ld;
            const double *fm = f + mu * ld, *frm = fr + mu * ld;
            #pragma omp simd
            for (j = 0; j < n; j++) {
                A[j] += g0[j] * frm[j];
                Bx[j] += fm[j] * g1[j];
                By[j] += fm[j] * g2[j];
                Bz[j] += fm[j] * g3[j];
            }
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

/* ---- parameter-gradient kernel (_kern_paramcols.pxi) ---------------------------------- */

/* Monomial tangents along per-column direction rates p (3 rows of ld):
 * tmono[q] = tmono[parent_q]·u[dir_q] + mono[parent_q]·p[dir_q], tmono[0] = 0 */
static inline void mmtp_tmono_cols(const int *parent, const int *dir, int nm, const double *u,
                                   const double *p, const double *mono, int n, int ld,
                                   double *tmono)
{
    int q, j;
    #pragma omp simd
    for (j = 0; j < n; j++)
        tmono[j] = 0.0;
    for (q = 1; q < nm; q++) {
        const double *tp = tmono + parent[q] * ld, *mp = mono + parent[q] * ld;
        const double *d = u + dir[q] * ld, *pd = p + dir[q] * ld;
        double *o = tmono + q * ld;
        #pragma omp simd
        for (j = 0; j < n; j++)
            o[j] = tp[j] * d[j] + mp[j] * pd[j];
    }
}

/* out[q] = Σ_{j<n} (f[j]·x[q·ldx + j] + g[j]·y[q·ldx + j]) for q < nq (n a multiple of MMTP_NB) */
static inline void mmtp_rowdots2(const double *f, const double *x, const double *g, const double *y,
                                 int ldx, int nq, int n, double *out)
{
    int q = 0, j;
    const mmtp_vd z = mmtp_bc(0.0);
    for (; q + 2 <= nq; q += 2) {
        const double *x0 = x + q * ldx, *x1 = x0 + ldx, *y0 = y + q * ldx, *y1 = y0 + ldx;
        mmtp_vd c0 = z, d0 = z, c1 = z, d1 = z, e0 = z, h0 = z, e1 = z, h1 = z;
        for (j = 0; j < n; j += MMTP_NB) {
            const mmtp_vd f0 = mmtp_ld(f + j), f1 = mmtp_ld(f + j + MMTP_VW);
            const mmtp_vd g0 = mmtp_ld(g + j), g1 = mmtp_ld(g + j + MMTP_VW);
            c0 += f0 * mmtp_ld(x0 + j); d0 += f1 * mmtp_ld(x0 + j + MMTP_VW);
            c1 += f0 * mmtp_ld(x1 + j); d1 += f1 * mmtp_ld(x1 + j + MMTP_VW);
            e0 += g0 * mmtp_ld(y0 + j); h0 += g1 * mmtp_ld(y0 + j + MMTP_VW);
            e1 += g0 * mmtp_ld(y1 + j); h1 += g1 * mmtp_ld(y1 + j + MMTP_VW);
        }
        out[q] = mmtp_hsum((c0 + d0) + (e0 + h0));
        out[q + 1] = mmtp_hsum((c1 + d1) + (e1 + h1));
    }
    for (; q < nq; q++) {
        const double *x0 = x + q * ldx, *y0 = y + q * ldx;
        mmtp_vd c0 = z, d0 = z, e0 = z, h0 = z;
        for (j = 0; j < n; j += MMTP_NB) {
            c0 += mmtp_ld(f + j) * mmtp_ld(x0 + j);
            d0 += mmtp_ld(f + j + MMTP_VW) * mmtp_ld(x0 + j + MMTP_VW);
            e0 += mmtp_ld(g + j) * mmtp_ld(y0 + j);
            h0 += mmtp_ld(g + j + MMTP_VW) * mmtp_ld(y0 + j + MMTP_VW);
        }
        out[q] = mmtp_hsum((c0 + d0) + (e0 + h0));
    }
}

/* One column block of the adjoint dots of one radial function:
 *   G[k] = Σ_{q<len} gm[q]·mono[q·ldx + k]
 *   A[k] = Σ_{q<len} hm[q]·mono[q·ldx + k] + gm[q]·tmono[q·ldx + k]     (when tangent)
 * for k < MMTP_NB. */
static inline void mmtp_ga_block(const double *gm, const double *hm, int len, const double *mono,
                                 const double *tmono, int ldx, double *G, double *A, int tangent)
{
    const mmtp_vd z = mmtp_bc(0.0);
    mmtp_vd g0 = z, g1 = z, a0 = z, a1 = z, b0 = z, b1 = z;
    int q;
    if (tangent) {
        for (q = 0; q < len; q++) {
            const mmtp_vd m0 = mmtp_ld(mono + q * ldx), m1 = mmtp_ld(mono + q * ldx + MMTP_VW);
            const mmtp_vd s = mmtp_bc(gm[q]), h = mmtp_bc(hm[q]);
            g0 += s * m0; g1 += s * m1;
            a0 += h * m0; a1 += h * m1;
            b0 += s * mmtp_ld(tmono + q * ldx); b1 += s * mmtp_ld(tmono + q * ldx + MMTP_VW);
        }
        mmtp_st(A, a0 + b0); mmtp_st(A + MMTP_VW, a1 + b1);
    } else {
        for (q = 0; q < len; q++) {
            const mmtp_vd s = mmtp_bc(gm[q]);
            g0 += s * mmtp_ld(mono + q * ldx); g1 += s * mmtp_ld(mono + q * ldx + MMTP_VW);
        }
    }
    mmtp_st(G, g0); mmtp_st(G + MMTP_VW, g1);
}

/* Reduction over columns (a product A·Bᵀ, the columns of one species group):
 *   out[i·ldo + k] += Σ_{j<n} a[i·lda + j]·b[k·ldb + j] (+ a2[i·lda + j]·b2[k·ldb + j] when a2)
 * for i < na, k < nbr; n a multiple of MMTP_NB. Blocks of 4 rows of a × 2 rows of b; each
 * output is one sum (fixed order: vector lanes, then the horizontal sum). */
static inline void mmtp_rowgemm(const double *a, const double *a2, int lda, int na,
                                const double *b, const double *b2, int ldb, int nbr, int n,
                                double *out, int ldo)
{
    const mmtp_vd z = mmtp_bc(0.0);
    int i, k, j, ii, kk;
    for (i = 0; i < na; i += 4) {
        const int ni = na - i < 4 ? na - i : 4;
        for (k = 0; k < nbr; k += 2) {
            const int nk = nbr - k < 2 ? nbr - k : 2;
            if (ni == 4 && nk == 2) {
                const double *A0 = a + i * lda, *A1 = A0 + lda, *A2 = A1 + lda, *A3 = A2 + lda;
                const double *B0 = b + k * ldb, *B1 = B0 + ldb;
                mmtp_vd c00 = z, c01 = z, c10 = z, c11 = z, c20 = z, c21 = z, c30 = z, c31 = z;
                for (j = 0; j < n; j += MMTP_VW) {
                    const mmtp_vd y0 = mmtp_ld(B0 + j), y1 = mmtp_ld(B1 + j);
                    mmtp_vd x = mmtp_ld(A0 + j);
                    c00 += x * y0; c01 += x * y1;
                    x = mmtp_ld(A1 + j);
                    c10 += x * y0; c11 += x * y1;
                    x = mmtp_ld(A2 + j);
                    c20 += x * y0; c21 += x * y1;
                    x = mmtp_ld(A3 + j);
                    c30 += x * y0; c31 += x * y1;
                }
                if (a2) {
                    const double *E0 = a2 + i * lda, *E1 = E0 + lda, *E2 = E1 + lda, *E3 = E2 + lda;
                    const double *D0 = b2 + k * ldb, *D1 = D0 + ldb;
                    for (j = 0; j < n; j += MMTP_VW) {
                        const mmtp_vd y0 = mmtp_ld(D0 + j), y1 = mmtp_ld(D1 + j);
                        mmtp_vd x = mmtp_ld(E0 + j);
                        c00 += x * y0; c01 += x * y1;
                        x = mmtp_ld(E1 + j);
                        c10 += x * y0; c11 += x * y1;
                        x = mmtp_ld(E2 + j);
                        c20 += x * y0; c21 += x * y1;
                        x = mmtp_ld(E3 + j);
                        c30 += x * y0; c31 += x * y1;
                    }
                }
                out[i * ldo + k] += mmtp_hsum(c00); out[i * ldo + k + 1] += mmtp_hsum(c01);
                out[(i + 1) * ldo + k] += mmtp_hsum(c10); out[(i + 1) * ldo + k + 1] += mmtp_hsum(c11);
                out[(i + 2) * ldo + k] += mmtp_hsum(c20); out[(i + 2) * ldo + k + 1] += mmtp_hsum(c21);
                out[(i + 3) * ldo + k] += mmtp_hsum(c30); out[(i + 3) * ldo + k + 1] += mmtp_hsum(c31);
            } else {
                for (ii = i; ii < i + ni; ii++) {
                    for (kk = k; kk < k + nk; kk++) {
                        const double *A0 = a + ii * lda, *B0 = b + kk * ldb;
                        mmtp_vd c = z;
                        for (j = 0; j < n; j += MMTP_VW)
                            c += mmtp_ld(A0 + j) * mmtp_ld(B0 + j);
                        if (a2) {
                            const double *E0 = a2 + ii * lda, *D0 = b2 + kk * ldb;
                            for (j = 0; j < n; j += MMTP_VW)
                                c += mmtp_ld(E0 + j) * mmtp_ld(D0 + j);
                        }
                        out[ii * ldo + kk] += mmtp_hsum(c);
                    }
                }
            }
        }
    }
}

/* Rates of the radial functions of one set along a tangent, K rows:
 * fdot[μ] = f'_μ·tr + ∂f_μ/∂m_i·δm_i + ∂f_μ/∂m_j·δm_j */
static inline void mmtp_fdot_cols(const double *fr, const double *fmi, const double *fmj,
                                  const double *tr, double tmi, const double *tmj, int K, int n,
                                  int ld, double *fdot)
{
    int mu, j;
    for (mu = 0; mu < K; mu++) {
        const double *a = fr + mu * ld, *b = fmi + mu * ld, *c = fmj + mu * ld;
        double *o = fdot + mu * ld;
        #pragma omp simd
        for (j = 0; j < n; j++)
            o[j] = a[j] * tr[j] + b[j] * tmi + c[j] * tmj[j];
    }
}

/* Left factors of the radial-coefficient reductions of one set, rows (μ, c) (K·M rows of ld),
 * columns [w0, w1):
 *   lz = G_μ ψ_c,   la = A_μ ψ_c + G_μ δm_j ψ'_c,   lb = G_μ tr ψ_c   (la, lb when tangent) */
static inline void mmtp_lrows_cols(const double *G, const double *A, const double *psi,
                                   const double *dpsi, const double *tr, const double *tmj, int K,
                                   int M, int w0, int w1, int ld, double *la, double *lb,
                                   double *lz, int tangent)
{
    int mu, c, j;
    for (mu = 0; mu < K; mu++) {
        const double *g = G + mu * ld, *a = A + mu * ld;
        for (c = 0; c < M; c++) {
            const double *p = psi + c * ld, *dp = dpsi + c * ld;
            const int row = (mu * M + c) * ld;
            double *oz = lz + row, *oa = la + row, *ob = lb + row;
            #pragma omp simd
            for (j = w0; j < w1; j++)
                oz[j] = g[j] * p[j];
            if (tangent) {
                #pragma omp simd
                for (j = w0; j < w1; j++) {
                    oa[j] = a[j] * p[j] + g[j] * tmj[j] * dp[j];
                    ob[j] = g[j] * tr[j] * p[j];
                }
            }
        }
    }
}

/* Forward tangent sweep and reverse sweep of Ė over the product table, L interleaved lanes
 * (coefficient sets; arrays indexed [x·L + l]):
 *   ṁ_x += w (ṁ_a M_b + M_a ṁ_b);   h_a += w (g_x ṁ_b + h_x M_b),  h_b += w (g_x ṁ_a + h_x M_a) */
static inline void mmtp_tangent_sweeps_L(const int *times, const double *weights, int n_times,
                                         const double *mom, const double *g, double *mdot,
                                         double *h, const int L)
{
    int k, l;
    for (k = 0; k < n_times; k++) {
        const int a = times[3 * k] * L, b = times[3 * k + 1] * L, x = times[3 * k + 2] * L;
        const double w = weights[k];
        for (l = 0; l < L; l++)
            mdot[x + l] += w * (mdot[a + l] * mom[b + l] + mom[a + l] * mdot[b + l]);
    }
    for (k = n_times - 1; k >= 0; k--) {
        const int a = times[3 * k] * L, b = times[3 * k + 1] * L, x = times[3 * k + 2] * L;
        const double w = weights[k];
        for (l = 0; l < L; l++) {
            const double gk = w * g[x + l], hk = w * h[x + l];
            h[a + l] += gk * mdot[b + l] + hk * mom[b + l];
            h[b + l] += gk * mdot[a + l] + hk * mom[a + l];
        }
    }
}

static inline void mmtp_tangent_sweeps(const int *times, const double *weights, int n_times,
                                       const double *mom, const double *g, double *mdot, double *h,
                                       int L)
{
    if (L == 2)
        mmtp_tangent_sweeps_L(times, weights, n_times, mom, g, mdot, h, 2);
    else
        mmtp_tangent_sweeps_L(times, weights, n_times, mom, g, mdot, h, 1);
}

/* Product-table sweeps of the parameter kernel, fused over E and its tangent rate Ė and over
 * L = 1 or 2 interleaved coefficient sets (arrays indexed [x·L + l]; with L = 2 both sets run
 * in one 2-wide vector, the same operations on each lane):
 *   forward   M_x += w M_a M_b,   Ṁ_x += w (Ṁ_a M_b + M_a Ṁ_b)                 (Ṁ when tangent)
 *   reverse   g = ∂E/∂M seeded with the moment coefficients, h = ∂Ė/∂M seeded with 0:
 *             g_a += w g_x M_b,  h_a += w (g_x Ṁ_b + h_x M_b)   (and a ↔ b)
 * On entry mom and mdot hold the basic moments and zeros above them. */
typedef double mmtp_v2 __attribute__((vector_size(2 * sizeof(double)), aligned(8), may_alias));

static inline mmtp_v2 mmtp_ld2(const double *p) { return *(const mmtp_v2 *)p; }
static inline void mmtp_st2(double *p, mmtp_v2 v) { *(mmtp_v2 *)p = v; }

static inline void mmtp_param_sweeps(const int *times, const double *weights, int n_times,
                                     const int *mapping, const double *moment, int n_basis,
                                     int n_moments, double *mom, double *mdot, double *g,
                                     double *h, int L, int tangent)
{
    int k;
    memset(g, 0, (size_t)L * n_moments * sizeof(double));
    if (tangent)
        memset(h, 0, (size_t)L * n_moments * sizeof(double));
    if (L == 2) {
        for (k = 0; k < n_times; k++) {
            const int a = 2 * times[3 * k], b = 2 * times[3 * k + 1], x = 2 * times[3 * k + 2];
            const double w = weights[k];
            const mmtp_v2 ma = mmtp_ld2(mom + a), mb = mmtp_ld2(mom + b);
            mmtp_st2(mom + x, mmtp_ld2(mom + x) + w * (ma * mb));
            if (tangent)
                mmtp_st2(mdot + x, mmtp_ld2(mdot + x) + w * (mmtp_ld2(mdot + a) * mb + ma * mmtp_ld2(mdot + b)));
        }
        for (k = 0; k < n_basis; k++) {
            g[2 * mapping[k]] += moment[k];
            g[2 * mapping[k] + 1] += moment[k];
        }
        for (k = n_times - 1; k >= 0; k--) {
            const int a = 2 * times[3 * k], b = 2 * times[3 * k + 1], x = 2 * times[3 * k + 2];
            const double w = weights[k];
            const mmtp_v2 gk = w * mmtp_ld2(g + x);
            const mmtp_v2 ma = mmtp_ld2(mom + a), mb = mmtp_ld2(mom + b);
            mmtp_st2(g + a, mmtp_ld2(g + a) + gk * mb);
            mmtp_st2(g + b, mmtp_ld2(g + b) + gk * mmtp_ld2(mom + a));
            if (tangent) {
                const mmtp_v2 hk = w * mmtp_ld2(h + x);
                mmtp_st2(h + a, mmtp_ld2(h + a) + (gk * mmtp_ld2(mdot + b) + hk * mb));
                mmtp_st2(h + b, mmtp_ld2(h + b) + (gk * mmtp_ld2(mdot + a) + hk * mmtp_ld2(mom + a)));
            }
            (void)ma;
        }
    } else {
        for (k = 0; k < n_times; k++) {
            const int a = times[3 * k], b = times[3 * k + 1], x = times[3 * k + 2];
            const double w = weights[k];
            mom[x] += w * mom[a] * mom[b];
            if (tangent)
                mdot[x] += w * (mdot[a] * mom[b] + mom[a] * mdot[b]);
        }
        for (k = 0; k < n_basis; k++)
            g[mapping[k]] += moment[k];
        for (k = n_times - 1; k >= 0; k--) {
            const int a = times[3 * k], b = times[3 * k + 1], x = times[3 * k + 2];
            const double w = weights[k];
            const double gk = w * g[x];
            g[a] += gk * mom[b];
            g[b] += gk * mom[a];
            if (tangent) {
                const double hk = w * h[x];
                h[a] += gk * mdot[b] + hk * mom[b];
                h[b] += gk * mdot[a] + hk * mom[a];
            }
        }
    }
}

#endif
