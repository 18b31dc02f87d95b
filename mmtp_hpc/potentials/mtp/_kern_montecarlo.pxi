# Kernel module, part 4: incremental Metropolis moves on the moments.

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
# set per lane of the product table (``mmtp_lane_products_energies``: the rows grouped by output,
# chunks of lanes summed in registers), so a trial costs about one product sweep of vector width instead of one
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
    int* start      # (n_runs + 1,) run r: rows start[r]..start[r + 1] − 1, all of one output
    int* out        # (n_runs,) the output of each run
    int* ab         # (n_times, 2) the factors of each row, rows grouped by output
    double* w       # (n_times,) the weight of each row
    int n_clear
    int* clear      # (n_clear,) moment rows ≥ n_basic that no row writes: zero before the products


cdef int lane_runs_make(Tables* t, LaneRuns* lr) noexcept nogil:
    """The product table grouped by output for the lane kernel: outputs in order of their level
    (a product of level ℓ has factors of levels < ℓ; basic moments are level 0), then of first
    appearance; each output's rows in table order (so every moment is the same sum as in the
    table's order). O(rows). 0, or −1 when out of memory."""
    cdef int k, r, x, a, b, nm = t.n_moments, nt = t.n_times, n_out = 0, max_level = 0, lv
    cdef int* level = <int*> calloc(nm + 1, sizeof(int))
    cdef int* count = <int*> calloc(nm + 1, sizeof(int))
    cdef int* first = <int*> malloc((nm + 1) * sizeof(int))      # outputs in order of first appearance
    cdef int* pos = <int*> malloc((nm + 1) * sizeof(int))
    cdef int* by_level = NULL
    lr.start = <int*> malloc((nt + 1) * sizeof(int))
    lr.out = <int*> malloc((nt + 1) * sizeof(int))
    lr.ab = <int*> malloc((2 * nt + 2) * sizeof(int))
    lr.w = <double*> malloc((nt + 1) * sizeof(double))
    lr.clear = <int*> malloc((nm + 1) * sizeof(int))
    if level != NULL:
        for k in range(nt):
            a = t.times[3 * k]
            b = t.times[3 * k + 1]
            x = t.times[3 * k + 2]
            lv = 1 + (level[a] if level[a] > level[b] else level[b])
            if lv > level[x]:
                level[x] = lv
            if lv > max_level:
                max_level = lv
        by_level = <int*> calloc(max_level + 2, sizeof(int))
    if level == NULL or count == NULL or first == NULL or pos == NULL or by_level == NULL or lr.start == NULL \
            or lr.out == NULL or lr.ab == NULL or lr.w == NULL or lr.clear == NULL:
        free(level); free(count); free(first); free(pos); free(by_level)
        lane_runs_free(lr)
        return -1
    for k in range(nt):
        x = t.times[3 * k + 2]
        if count[x] == 0:
            first[n_out] = x
            n_out += 1
            by_level[level[x] + 1] += 1
        count[x] += 1
    for lv in range(1, max_level + 2):
        by_level[lv] += by_level[lv - 1]
    for r in range(n_out):                       # stable counting sort of the outputs by level
        x = first[r]
        lr.out[by_level[level[x]]] = x
        by_level[level[x]] += 1
    k = 0
    for r in range(n_out):
        x = lr.out[r]
        lr.start[r] = k
        pos[x] = k
        k += count[x]
    lr.start[n_out] = nt
    lr.n_runs = n_out
    for k in range(nt):                          # each output's rows in table order
        x = t.times[3 * k + 2]
        lr.ab[2 * pos[x]] = t.times[3 * k]
        lr.ab[2 * pos[x] + 1] = t.times[3 * k + 1]
        lr.w[pos[x]] = t.weights[k]
        pos[x] += 1
    lr.n_clear = 0
    for x in range(t.n_basic, nm):
        if count[x] == 0:
            lr.clear[lr.n_clear] = x
            lr.n_clear += 1
    free(level); free(count); free(first); free(pos); free(by_level)
    return 0


cdef void lane_runs_free(LaneRuns* lr) noexcept nogil:
    free(lr.start); free(lr.out); free(lr.ab); free(lr.w); free(lr.clear)
    lr.start = NULL; lr.out = NULL; lr.ab = NULL; lr.w = NULL; lr.clear = NULL


cdef void lane_site_energies(Tables* t, LaneRuns* lr, double* mom, int L, int n_slots, int nsets,
                             int slot_stride, int set_stride, const int* z, double* e_lane,
                             double* e_slot) noexcept nogil:
    """Products and energies of lanes 0..L-1 (rows 0..n_basic-1 of ``mom`` hold the basic
    moments; lane slot·slot_stride + s·set_stride); e_slot[slot] = mean over the sets (E_k or
    ½[E_k + E⁻_k])."""
    cdef int slot, s, q
    cdef double acc
    for q in range(lr.n_clear):
        memset(mom + <size_t> lr.clear[q] * L, 0, L * sizeof(double))
    mmtp_lane_products_energies(mom, lr.ab, lr.w, lr.start, lr.out, lr.n_runs, t.mapping, t.moment,
                                t.n_basis, L, e_lane)
    for slot in range(n_slots):
        acc = 0.0
        for s in range(nsets):
            acc = acc + (t.species[z[slot]] + e_lane[slot * slot_stride + s * set_stride])
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
                       double* H, double* ps) noexcept nogil:
    """H[s, z_k, μ, r, b] = Σ_c C[z_k, z_a, μ, r, b, c]·σ_s^c [ψ_c(m_a') − ψ_c(m_a)] for a trial
    on an atom of species za (σ_1^c = (−1)^c: the set E(−M)). ``ps``: scratch of 3·M."""
    cdef int s, zk, mu, r, b, cc, C = t.C, K = t.K, R = t.R, M = t.M
    cdef double* dpsi = ps
    cdef double* p0 = ps + M
    cdef double* p1 = ps + 2 * M
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


cdef void trial_tables_centre(Tables* t, int za, double old, double new, int nsets, bint odd,
                              double* H2, double* ps) noexcept nogil:
    """H2[s, z_n, μ, r, c] = Σ_b C[z_a, z_n, μ, r, b, c]·σ_s^b [ψ_b(m_a') − ψ_b(m_a)]: trial_tables
    for the moved atom's own terms (its ψ is the centre's, index b). ``ps``: scratch of 3·M."""
    cdef int s, zn, mu, r, b, cc, C = t.C, K = t.K, R = t.R, M = t.M
    cdef double* dpsi = ps
    cdef double* p0 = ps + M
    cdef double* p1 = ps + 2 * M
    cdef double acc
    cdef const double* cf
    cdef double* h
    psi_of(t, za, old, odd, p0)
    psi_of(t, za, new, odd, p1)
    for s in range(nsets):
        for b in range(M):
            dpsi[b] = p1[b] - p0[b]
            if s == 1 and (b & 1):
                dpsi[b] = -dpsi[b]
        for zn in range(C):
            for mu in range(K):
                for r in range(R):
                    cf = t.coeffs + ((((za * C + zn) * K + mu) * R + r) * M * M)
                    h = H2 + ((((s * C + zn) * K + mu) * R + r) * M)
                    for cc in range(M):
                        acc = 0.0
                        for b in range(M):
                            acc = acc + cf[b * M + cc] * dpsi[b]
                        h[cc] = acc


cdef void add_pair_change(Tables* t, const double* H, int nsets, int zk, double mk, bint odd,
                          const double* d, const int* mu_start, double* Q, double* mono, double* monoB,
                          double* df, double* B, double* ps) noexcept nogil:
    """Adds to the basic moments B[s, β] of centre k (species zk, moment mk) the change of its
    term with a neighbour at d = r_n − r_k (inside the cutoff): Δf_μβ mono_qβ. ``mu_start``
    (K + 1): the basic rows of μ are mu_start[μ]..mu_start[μ + 1] − 1 (rows ordered by μ), or
    NULL where they are not ordered. ``ps``: scratch of M + R·M."""
    cdef int s, mu, r, b, b_, R = t.R, M = t.M, K = t.K, C = t.C, nb = t.n_basic
    cdef double r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2], rr = sqrt(r2), x, e
    cdef double u[3]
    cdef double* psik = ps
    cdef double* qs = ps + M
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
        # qs[r, b] = Q_r·σ_s(b)·ψ_b(m_k) (multiplying by ±1 is exact); then one dot of length
        # R·M per radial function with the contiguous block H[s, z_k, μ, :, :]
        for r in range(R):
            for b in range(M):
                qs[r * M + b] = -(Q[r] * psik[b]) if (s == 1 and (b & 1)) else Q[r] * psik[b]
        for mu in range(K):
            h = H + (((s * C + zk) * K + mu) * R * M)
            df[s * K + mu] = mmtp_dot(qs, h, R * M)
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


cdef struct PairBuf:
    int cap         # pairs per trial at most: every array below is (rows, cap)
    double* U       # (3, cap) unit vectors
    double* Q       # (R, cap) radial basis
    double* PS      # (M, cap) ψ_b(m_k) of the centres
    double* DF      # (nsets·K, cap) Δf of each set and radial function (the centres' terms)
    double* DF2     # (nsets·K, cap) Δf of the moved atom's own terms with the same neighbours
    double* QP      # (nsets, R·M, cap) σ_s(b)·Q_r·ψ_b
    double* MONO    # (n_mono, cap) monomials of the unit vectors
    int* Z          # (cap,) species of the centres


cdef int pairbuf_alloc(Tables* t, int nsets, int cap, PairBuf* pb) noexcept nogil:
    """0, or −1 when out of memory (then every pointer is NULL)."""
    cdef size_t n = <size_t> (cap if cap > 0 else 1)
    pb.cap = <int> n
    pb.U = <double*> mmtp_calloc64(3 * n, sizeof(double))      # rows of cap doubles (a multiple of 8),
    pb.Q = <double*> mmtp_calloc64(t.R * n, sizeof(double))      # each on a cache line
    pb.PS = <double*> mmtp_calloc64(t.M * n, sizeof(double))
    pb.DF = <double*> mmtp_calloc64(nsets * t.K * n, sizeof(double))
    pb.DF2 = <double*> mmtp_calloc64(nsets * t.K * n, sizeof(double))
    pb.QP = <double*> mmtp_calloc64(nsets * t.R * t.M * n, sizeof(double))
    pb.MONO = <double*> mmtp_calloc64(t.n_mono * n, sizeof(double))
    pb.Z = <int*> malloc(n * sizeof(int))
    if pb.U == NULL or pb.Q == NULL or pb.PS == NULL or pb.DF == NULL or pb.DF2 == NULL \
            or pb.MONO == NULL or pb.Z == NULL or pb.QP == NULL:
        pairbuf_free(pb)
        return -1
    return 0


cdef void pairbuf_free(PairBuf* pb) noexcept nogil:
    free(pb.U); free(pb.Q); free(pb.PS); free(pb.DF); free(pb.DF2); free(pb.MONO); free(pb.Z)
    free(pb.QP)
    pb.U = NULL; pb.Q = NULL; pb.PS = NULL; pb.DF = NULL; pb.DF2 = NULL; pb.MONO = NULL
    pb.Z = NULL; pb.QP = NULL


cdef void lane_pair_changes(Tables* t, const double* H, const double* H2, int nsets, bint odd, int P,
                            const int64_t* pk, const double* pd, const int* types, const double* mag,
                            PairBuf* pb, int Sp) noexcept nogil:
    """Δf of the changed pair terms of the P centres pk[j] (vectors pd[3j..3j+2] to the moved atom),
    all pairs at once (vectorised over the pairs), and the monomials of their unit vectors: the
    basic moments of lane slot 1 + j of every set s then change by Δf^s_μ(β)[1 + j]·mono_qβ[1 + j]
    (``mmtp_lane_tile_add``; the same sums as add_pair_change, there one pair at a time). The pair
    arrays of ``pb`` are indexed by lane slot (pair j at 1 + j) over all Sp slots of a set, with
    zero radial functions in slot 0 (the moved atom) and the padding slots: their Δf is 0.

    With ``H2`` (trial_tables_centre) the moved atom's own terms change too (``mmtp_own_rows``):
    its neighbours are the P centres (vector −d, the same distance: mono_q(−u) = (−1)^|q| mono_q(u))
    and B_a[s, β] += Σ_j Δf'^s_μ(β)[j] (−1)^|qβ| mono_qβ[j], Δf' = Σ_{r,c} Q_r σ_s(c) ψ_c(m_k) H2."""
    cdef int j, i, r, b, R = t.R, M = t.M, cap = pb.cap
    cdef int z
    cdef double width
    cdef double* U = pb.U
    cdef double* Q = pb.Q
    cdef double* PS = pb.PS
    cdef double* MONO = pb.MONO
    for i in range(Sp):
        if i == 0 or i > P:             # the moved atom's slot and the padding: Δf = 0
            U[i] = 0.0
            U[cap + i] = 0.0
            U[2 * cap + i] = 0.0
            for r in range(R):
                Q[r * cap + i] = 0.0
            pb.Z[i] = 0
            PS[i] = 1.0
            for b in range(1, M):
                PS[b * cap + i] = 0.0
    mmtp_pair_geometry(pd, P, cap, t.rmin, t.rcut, t.scaling, R, U, Q)
    for j in range(P):
        i = j + 1
        z = types[pk[j]]
        pb.Z[i] = z
        width = t.mag_max[z] - t.mag_min[z]
        PS[i] = 1.0
        if M > 1:
            if odd:
                PS[cap + i] = 2.0 * mag[pk[j]] / width
            else:
                PS[cap + i] = (2.0 * mag[pk[j]] - t.mag_min[z] - t.mag_max[z]) / width
    for b in range(2, M):
        for i in range(Sp):
            PS[b * cap + i] = 2.0 * PS[cap + i] * PS[(b - 1) * cap + i] - PS[(b - 2) * cap + i]
    # Δf^s_μ = Σ_{r,b} Q_r σ_s(b) ψ_b(m_k) H[s, z_k, μ, r, b] (and Δf' with H2)
    pair_deltas(t, H, H2, nsets, Sp, pb)
    # the monomials of the unit vectors
    for i in range(Sp):
        MONO[i] = 1.0
    for b in range(1, t.n_mono):
        mmtp_mul_elem(MONO + b * cap, MONO + t.mono_parent[b] * cap, U + t.mono_dir[b] * cap, Sp)


cdef void pair_deltas(Tables* t, const double* H, const double* H2, int nsets, int P, PairBuf* pb) noexcept nogil:
    """pb.DF[s·K + μ, j] = Σ_{r,b} Q_r[j] σ_s(b) ψ_b[j] H[s, z_j, μ, r, b] over the P pairs (lanes) of
    ``pb``, and pb.DF2 the same with H2 (when not NULL). One species and P a multiple of 4: one
    small matrix product (``mmtp_pair_gemm``) with QP[s, (r, b), j] = σ_s(b)·Q_r[j]·ψ_b[j]."""
    cdef int j, r, b, s, mu, R = t.R, M = t.M, K = t.K, C = t.C, cap = pb.cap, u
    cdef double h, sign
    cdef double* row
    cdef double* qp
    cdef const double* HH
    cdef double* DF
    if C == 1 and P % 4 == 0:
        for s in range(nsets):
            for r in range(R):
                for b in range(M):
                    qp = pb.QP + ((s * R + r) * M + b) * cap
                    mmtp_mul_elem(qp, pb.Q + r * cap, pb.PS + b * cap, P)
                    if s == 1 and (b & 1):
                        for j in range(P):
                            qp[j] = -qp[j]
        mmtp_pair_gemm(H, H2, nsets, K, R * M, pb.QP, cap, P, pb.DF, pb.DF2)
        return
    for u in range(2):
        HH = H if u == 0 else H2
        DF = pb.DF if u == 0 else pb.DF2
        if HH == NULL:
            continue
        for s in range(nsets):
            for mu in range(K):
                row = DF + (s * K + mu) * cap
                memset(row, 0, P * sizeof(double))
                for r in range(R):
                    for b in range(M):
                        sign = -1.0 if (s == 1 and (b & 1)) else 1.0
                        if C == 1:
                            h = HH[((s * K + mu) * R + r) * M + b] * sign
                            mmtp_fma_elem_scaled(row, pb.Q + r * cap, pb.PS + b * cap, h, P)
                        else:
                            for j in range(P):
                                h = HH[(((s * C + pb.Z[j]) * K + mu) * R + r) * M + b] * sign
                                row[j] += (pb.Q[r * cap + j] * pb.PS[b * cap + j]) * h


def metropolis_maps(const double[:, ::1] pos, const int64_t[::1] offsets, const int64_t[::1] nbrs,
                    Py_ssize_t n_centres, const int64_t[::1] entry_owner, int64_t n_atoms, double cutoff):
    """What the moves of :func:`metropolis_moves` change, found in one pass over the pairs for
    the positions of its calls (one per sector in a parallel sweep): (centres, offsets, pairs).

    ``centres``/``offsets``: the centres whose energy depends on the moment of each atom a <
    ``n_atoms`` (a and every centre with an entry that is (an image of)
    a inside ``cutoff``, with a relative margin of 1e-9 on r² so borderline pairs are kept),
    ascending, each once; a marker per atom drops repeats (several images of a seen by the same
    centre). ``pairs`` = (pair_off (n_atoms + 2,), pair_k, pair_d (n_pairs + 1, 3), fast
    (n_atoms + 1,) uint8): atom a's pairs are q in [pair_off[a], pair_off[a + 1]), the centre
    pair_k[q] ≠ a with an entry that is (an image of) a strictly inside the cutoff and that
    entry's vector pair_d[q] from the centre, in the order of the centres and their entries.
    ``fast[a]``: a's trials take the lane path (1: a's affected centres are a and the centres of
    its pairs, each once; 2: also a's own site from the same pair data, its entries inside the
    cutoff being the reverse of its pairs); 0: the general path (a centre sees several images
    of a, or a borderline pair)."""
    cdef double rc2 = cutoff * cutoff, rc2m = cutoff * cutoff * (1.0 + 1e-9), d2
    cdef Py_ssize_t k, p, q
    cdef int64_t a, j, total, n_pairs, n_in
    cdef int pass_
    if n_atoms > n_centres:
        raise ValueError(f"{n_atoms} atoms but only {n_centres} centres: every atom must be a centre")
    if offsets.shape[0] < n_centres + 1:
        raise ValueError("metropolis_maps: offsets shorter than the centres")
    cdef int64_t[::1] count = np.zeros(n_atoms + 1, dtype=np.int64)
    cdef int64_t[::1] last = np.full(n_atoms, -1, dtype=np.int64)
    out_off_a = np.zeros(n_atoms + 1, dtype=np.int64)
    pair_off_a = np.zeros(n_atoms + 2, dtype=np.int64)
    cdef int64_t[::1] out_off = out_off_a
    cdef int64_t[::1] pair_off = pair_off_a
    cdef int64_t[::1] out
    cdef int64_t[::1] pair_k
    cdef double[:, ::1] pair_d
    for pass_ in range(2):
        if pass_ == 1:
            total = 0
            for a in range(n_atoms):
                out_off[a] = total
                total += count[a]
                count[a] = out_off[a]          # the fill position
                last[a] = -1
            out_off[n_atoms] = total
            out_a = np.empty(total, dtype=np.int64)
            out = out_a
            for a in range(n_atoms):
                pair_off[a + 2] += pair_off[a + 1]
            n_pairs = pair_off[n_atoms + 1]
            pair_k_a = np.zeros(n_pairs + 1, dtype=np.int64)
            pair_d_a = np.zeros((n_pairs + 1, 3), dtype=np.float64)
            pair_k = pair_k_a
            pair_d = pair_d_a
        with nogil:
            for k in range(n_centres):
                if k < n_atoms and last[k] != k:
                    last[k] = k
                    if pass_ == 1:
                        out[count[k]] = k
                    count[k] += 1
                for p in range(offsets[k], offsets[k + 1]):
                    j = nbrs[p]
                    a = entry_owner[j]
                    if a < 0 or a == k or a >= n_atoms:
                        continue                   # (k itself: above)
                    d2 = (pos[j, 0] - pos[k, 0]) ** 2 + (pos[j, 1] - pos[k, 1]) ** 2 + (pos[j, 2] - pos[k, 2]) ** 2
                    if d2 >= rc2m:
                        continue
                    if last[a] != k:
                        last[a] = k
                        if pass_ == 1:
                            out[count[a]] = k
                        count[a] += 1
                    if d2 >= rc2:
                        continue
                    if pass_ == 0:
                        pair_off[a + 2] += 1
                    else:
                        q = pair_off[a + 1]
                        pair_k[q] = k
                        pair_d[q, 0] = pos[j, 0] - pos[k, 0]     # the pair's vector, in trial order
                        pair_d[q, 1] = pos[j, 1] - pos[k, 1]
                        pair_d[q, 2] = pos[j, 2] - pos[k, 2]
                        pair_off[a + 1] += 1
    fast_a = np.zeros(n_atoms + 1, dtype=np.uint8)
    cdef unsigned char[::1] fast = fast_a
    with nogil:
        for a in range(n_atoms):
            if out_off[a + 1] - out_off[a] != 1 + pair_off[a + 1] - pair_off[a]:
                continue
            fast[a] = 1
            for q in range(pair_off[a] + 1, pair_off[a + 1]):
                if pair_k[q] == pair_k[q - 1]:
                    fast[a] = 0
            if fast[a] == 0:
                continue
            # its own site from the same pair data (fast = 2) when its entries inside the
            # cutoff are the reverse of its pairs: as many, none an image of itself (full
            # neighbour lists are symmetric; a ghost that is no centre makes the counts differ)
            n_in = 0
            for p in range(offsets[a], offsets[a + 1]):
                j = nbrs[p]
                if (pos[j, 0] - pos[a, 0]) ** 2 + (pos[j, 1] - pos[a, 1]) ** 2 \
                        + (pos[j, 2] - pos[a, 2]) ** 2 >= rc2:
                    continue
                if entry_owner[j] == a:
                    n_in = -1
                    break
                n_in += 1
            if n_in == pair_off[a + 1] - pair_off[a]:
                fast[a] = 2
    return out_a, out_off_a, (pair_off_a, pair_k_a, pair_d_a, fast_a)


def metropolis_moves(dict tab, const double[:, ::1] pos, const int[::1] types, double[::1] mag,
                     const int64_t[::1] offsets, const int64_t[::1] nbrs, Py_ssize_t n_centres,
                     const int64_t[::1] entry_owner, const int64_t[::1] image_entries,
                     const int64_t[::1] image_offsets, const int64_t[::1] aff_centres,
                     const int64_t[::1] aff_offsets, const int64_t[::1] moves,
                     const double[:, ::1] draws, int col, const double[::1] lo, const double[::1] hi,
                     double flip_fraction, double max_change, double beta, double[::1] magmoms,
                     double[::1] site_en, double[:, ::1] cache, int init, bint symmetric,
                     bint incremental, double[::1] trial_delta, tuple pairs=None,
                     unsigned char[::1] touched=None):
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
    moments; ``init`` 1 recomputes both first (one energy pass over the centres); 0: they are
    current (the caller's, e.g. from the step's force evaluation: ``site_terms(...,
    basic_out=cache)``). With
    ``incremental`` a trial updates only the pair terms it changes (see above); otherwise every
    affected centre is recomputed from its neighbours (the reference the tests compare with).
    ``trial_delta`` (len(moves),) receives each trial's ΔE (NaN when skipped), if not empty.
    ``symmetric``: ½[E(M) + E(−M)] in one pass (symmetric intervals; see site_terms_symmetric).
    ``pairs``: the pairs of :func:`metropolis_maps` for these positions and maps (found here when
    None).
    ``touched`` (n_centres,): set to 1 for every centre whose cache row and energy an accepted
    move changed (the caller clears it).
    """
    cdef Tables t = make_tables(tab)
    cdef int nsets = 2 if symmetric else 1
    cdef int nb = t.n_basic, width = nsets * t.n_basic, slot, n_aff, L, Lmax, batch
    cdef Py_ssize_t n_moves = moves.shape[0], m_, q, k, k0
    cdef int64_t a, nmax = 0, max_aff = 1
    cdef double old, new, delta
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
    cdef double* ps
    cdef LaneRuns runs
    cdef int* mu_start = NULL
    cdef int* slot_of = NULL
    cdef int64_t* pair_off = NULL
    cdef int64_t* pair_k = NULL
    cdef double* pair_d = NULL
    cdef int64_t n_atoms = magmoms.shape[0], a2
    cdef bint ordered = True
    cdef char* fast = NULL
    cdef PairBuf pb
    cdef int P, S, Sp, max_pairs = 0, j2
    cdef int64_t q0
    cdef double** rows = NULL
    cdef double* zero_row = NULL
    cdef double* H2 = NULL
    cdef const int64_t[::1] po_v
    cdef const int64_t[::1] pk_v
    cdef const double[:, ::1] pd_v
    cdef const unsigned char[::1] fa_v
    cdef bint mark = touched is not None
    pb.U = NULL; pb.Q = NULL; pb.PS = NULL; pb.DF = NULL; pb.DF2 = NULL; pb.MONO = NULL
    pb.Z = NULL; pb.QP = NULL; pb.cap = 0
    if symmetric and t.M < 2:
        raise ValueError("symmetric Monte Carlo needs a magnetic potential (M > 1)")
    if init not in (0, 1):
        raise ValueError(f"init must be 0 or 1, got {init}")
    if mark and touched.shape[0] < n_centres:
        raise ValueError("metropolis_moves: ``touched`` shorter than the centres")
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
    mom = <double*> mmtp_calloc64(<size_t> t.n_moments * Lmax, sizeof(double))   # aligned rows:
    Bs = <double*> mmtp_calloc64(<size_t> nb * Lmax, sizeof(double))              # L is a multiple of 8
    e_lane = <double*> malloc(Lmax * sizeof(double))
    e_new = <double*> malloc(batch * sizeof(double))
    zl = <int*> malloc(batch * sizeof(int))
    H = <double*> malloc(nsets * t.C * t.K * t.R * t.M * sizeof(double))
    Q = <double*> malloc(t.R * sizeof(double))
    mono = <double*> malloc(t.n_mono * sizeof(double))
    monoB = <double*> malloc(nb * sizeof(double))
    df = <double*> malloc(nsets * t.K * sizeof(double))
    ps = <double*> malloc((3 + t.R) * t.M * sizeof(double))   # scratch of trial_tables / add_pair_change
    mu_start = <int*> calloc(t.K + 1, sizeof(int))
    slot_of = <int*> malloc((n_centres + 1) * sizeof(int))
    lane_runs_make(&t, &runs)          # runs.start is NULL when out of memory
    if mom == NULL or Bs == NULL or e_lane == NULL or e_new == NULL or zl == NULL or H == NULL or Q == NULL \
            or mono == NULL or monoB == NULL or df == NULL or ps == NULL or mu_start == NULL or slot_of == NULL \
            or runs.start == NULL:
        free_cols(c)
        lane_runs_free(&runs)
        free(mom); free(Bs); free(e_lane); free(e_new); free(zl); free(H); free(Q); free(mono); free(monoB)
        free(df); free(ps); free(mu_start); free(slot_of)
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
        # the pairs each move changes and the trials that take the lane path: the caller's
        # (``pairs``, from :func:`metropolis_maps` on the same positions and maps: computed once
        # for all the calls of a step, e.g. one per sector) or found here
        if pairs is None:
            pairs = metropolis_maps(pos, offsets, nbrs, n_centres, entry_owner, n_atoms, t.rcut)[2]
        po_v = pairs[0]
        pk_v = pairs[1]
        pd_v = pairs[2]
        fa_v = pairs[3]
        if po_v.shape[0] != n_atoms + 2 or fa_v.shape[0] != n_atoms + 1 or pd_v.shape[0] < pk_v.shape[0] \
                or aff_offsets.shape[0] != n_atoms + 1:
            raise ValueError("metropolis_moves: ``pairs`` do not belong to these atoms")
        pair_off = <int64_t*> &po_v[0]
        pair_k = <int64_t*> &pk_v[0]
        pair_d = <double*> &pd_v[0, 0]
        fast = <char*> &fa_v[0]
        rows = <double**> malloc((max_aff + 8) * sizeof(double*))
        zero_row = <double*> calloc(2 * width, sizeof(double))   # zeros, then scratch
        H2 = <double*> malloc(nsets * t.C * t.K * t.R * t.M * sizeof(double))
        for a2 in range(n_atoms):
            if pair_off[a2 + 1] - pair_off[a2] > max_pairs:
                max_pairs = <int> (pair_off[a2 + 1] - pair_off[a2])
        if rows == NULL or zero_row == NULL or H2 == NULL \
                or pairbuf_alloc(&t, nsets, lanes_for(max_pairs + 1), &pb) != 0:
            free_cols(c)
            free(mom); free(Bs); free(e_lane); free(e_new); free(zl); free(H); free(Q); free(mono); free(monoB)
            free(df); free(ps); free(mu_start); free(slot_of); free(rows); free(zero_row); free(H2)
            pairbuf_free(&pb)
            lane_runs_free(&runs)
            raise MemoryError("Monte Carlo: out of memory for the pair buffers")
    try:
        with nogil:
            if init:
                # every centre: its basic moments, then the energies in batches of lanes
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
                    lane_site_energies(&t, &runs, mom, L, n_aff, nsets, nsets, 1, zl, e_lane, e_new)
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
                if fast != NULL and fast[a]:
                    # lane path: slot 0 is a (recomputed from its neighbours), slot 1 + j the
                    # centre of pair j (cached basic moments + the pair change); lane s·Sp + slot
                    q0 = pair_off[a]
                    P = <int> (pair_off[a + 1] - q0)
                    S = P + 1
                    Sp = ((S + 8 // nsets - 1) // (8 // nsets)) * (8 // nsets)
                    L = nsets * Sp
                    trial_tables(&t, types[a], old, new, nsets, symmetric, H, ps)
                    if fast[a] == 2:
                        trial_tables_centre(&t, types[a], old, new, nsets, symmetric, H2, ps)
                        rows[0] = &cache[a, 0]
                    else:
                        gather_cols(&t, c, a, pos, types, mag, offsets, nbrs, False, symmetric)
                        forward_pm(&t, c)
                        basic_of(&t, c.pm, nsets, Bs)
                        rows[0] = Bs
                    zl[0] = types[a]
                    for j2 in range(P):
                        rows[1 + j2] = &cache[pair_k[q0 + j2], 0]
                        zl[1 + j2] = types[pair_k[q0 + j2]]
                    for j2 in range(S, Sp):
                        rows[j2] = zero_row          # padding lanes: zeros
                    # the pair changes first (Δf, monomials), then the cached rows into the lanes
                    # (Sp is a multiple of 4), each gaining its pair change
                    lane_pair_changes(&t, H, H2 if fast[a] == 2 else NULL, nsets, symmetric, P, pair_k + q0,
                                      pair_d + 3 * q0, &types[0], &mag[0], &pb, Sp)
                    mmtp_lane_tile_add(rows, Sp, nb, nsets, mom, L, pb.DF, pb.MONO, pb.cap, t.K, t.basic,
                                       t.basic_q)
                    if fast[a] == 2:
                        mmtp_own_rows(mom, L, Sp, nsets, nb, t.basic, t.basic_q, t.mono_exp, pb.DF2, pb.MONO,
                                      pb.cap, t.K)
                    if m_ + 1 < n_moves:
                        # the next trial's cache rows (random order: from memory) load while this
                        # trial computes
                        a2 = moves[m_ + 1]
                        mmtp_prefetch(&cache[a2, 0], width * sizeof(double))
                        for q in range(pair_off[a2], pair_off[a2 + 1]):
                            mmtp_prefetch(&cache[pair_k[q], 0], width * sizeof(double))
                    lane_site_energies(&t, &runs, mom, L, S, nsets, 1, Sp, zl, e_lane, e_new)
                    delta = e_new[0] - site_en[a]
                    for j2 in range(P):
                        delta = delta + (e_new[1 + j2] - site_en[pair_k[q0 + j2]])
                    if record:
                        trial_delta[m_] = delta
                    accept = delta <= 0.0 or draws[a, col + 2] < exp(-beta * delta)
                    if accept:
                        magmoms[a] = new
                        rows[0] = &cache[a, 0]
                        for j2 in range(S, Sp):
                            rows[j2] = zero_row + width    # padding lanes: written to scratch
                        mmtp_lanes_to_rows(rows, Sp, nb, nsets, mom, L)
                        site_en[a] = e_new[0]
                        for j2 in range(P):
                            site_en[pair_k[q0 + j2]] = e_new[1 + j2]
                        if mark:
                            touched[a] = 1
                            for j2 in range(P):
                                touched[pair_k[q0 + j2]] = 1
                        accepted += 1
                    else:
                        for q in range(image_offsets[a], image_offsets[a + 1]):
                            mag[image_entries[q]] = old
                    continue
                n_aff = <int> (aff_offsets[a + 1] - aff_offsets[a])
                L = lanes_for(n_aff * nsets)
                memset(Bs + n_aff * width, 0, (L - n_aff * nsets) * nb * sizeof(double))
                if incremental and t.M > 1:
                    trial_tables(&t, types[a], old, new, nsets, symmetric, H, ps)
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
                        add_pair_change(&t, H, nsets, types[k], mag[k], symmetric, pair_d + 3 * q, mu_start,
                                        Q, mono, monoB, df, Bs + slot * width, ps)
                for slot in range(n_aff):
                    slot_of[aff_centres[aff_offsets[a] + slot]] = -1
                to_lanes(Bs, nb, mom, L)
                lane_site_energies(&t, &runs, mom, L, n_aff, nsets, nsets, 1, zl, e_lane, e_new)
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
                        if mark:
                            touched[k] = 1
                        memcpy(&cache[k, 0], Bs + slot * width, width * sizeof(double))
                    accepted += 1
                else:
                    for q in range(image_offsets[a], image_offsets[a + 1]):
                        mag[image_entries[q]] = old
    finally:
        free_cols(c)
        free(mom); free(Bs); free(e_lane); free(e_new); free(zl); free(H); free(Q); free(mono); free(monoB)
        free(df); free(ps); free(mu_start); free(slot_of); free(rows); free(zero_row); free(H2)
        pairbuf_free(&pb)
        lane_runs_free(&runs)
    return accepted
