"""Plain-NumPy reference evaluation of (magnetic) MTPs: slow, readable, the oracle in tests.

Every formula is spec §2 (MLIP-3 compatible); the Cython kernels in ``_kernels.pyx``
compute the same quantities and are tested against this module. This module
has its own brute-force neighbour search so that it shares no code with the
fast path.

Per atom i with neighbours n (vectors r_n = r_j − r_i, r = |r_n|, u = r_n / r)::

    Q_k   = scaling · T_k(ξ(r)) · (R_cut − r)²
    ψ_b   = T_b(η_z(m))
    f_μ,n = Σ_{kbc} C[z_i, z_j, μ, k, b, c] Q_k ψ_b(m_i) ψ_c(m_j)
    M_s   = Σ_n f_{μ_s,n} u_x^a u_y^b u_z^c,  M_k += w M_i M_j,  E_i = s_{z_i} + Σ_α ξ_α M[map α]

Derivatives are by hand: a reverse sweep g = ∂E_i/∂M over the product table,
then the chain rule down to r_n, m_i, m_j and the parameters. For derivatives of
forces, virial and ∂E/∂m with respect to θ the model is differentiated along a
tangent (δr, δε, δm) in forward mode (``Ṁ``), and the tangent's value T is then
differentiated with respect to θ in reverse mode (adjoints g for Ṁ, h for M).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmtp_hpc.errors import InputError
from mmtp_hpc.potentials.mtp.parameters import MTPPotential
from mmtp_hpc.system.configuration import EV_PER_A3_TO_GPA, Configuration


# --------------------------------------------------------------------------- neighbours
@dataclass
class Neighborhood:
    """Neighbours of one atom: local index of each neighbour and the vectors r_j − r_i."""

    index: np.ndarray   # (n,) int: which atom of the configuration each neighbour is
    vectors: np.ndarray  # (n, 3) Å


def brute_force_neighborhoods(cfg: Configuration, cutoff: float) -> list[Neighborhood]:
    """All j (images included, j ≠ i itself) with |r_j + T − r_i| < cutoff, by brute force."""
    cell, pbc = cfg.cell, cfg.pbc
    reps = np.zeros(3, dtype=int)
    if np.any(pbc):
        volume = abs(np.linalg.det(cell))
        for k in range(3):
            if pbc[k]:
                other = np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3])
                reps[k] = int(np.ceil(cutoff * np.linalg.norm(other) / volume)) + 1
    shifts = np.array([(a, b, c) for a in range(-reps[0], reps[0] + 1)
                       for b in range(-reps[1], reps[1] + 1)
                       for c in range(-reps[2], reps[2] + 1)], dtype=float)
    translations = shifts @ cell
    pos = cfg.positions
    out = []
    for i in range(len(pos)):
        d = pos[None, :, :] + translations[:, None, :] - pos[i]
        dist = np.linalg.norm(d, axis=2)
        mask = dist < cutoff
        mask[np.all(shifts == 0, axis=1), i] = False  # the atom itself
        t_idx, j_idx = np.nonzero(mask)
        order = np.lexsort((t_idx, j_idx))
        out.append(Neighborhood(j_idx[order], d[t_idx[order], j_idx[order]]))
    return out


# --------------------------------------------------------------------------- bases
def chebyshev(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """T_0..T_{n-1}(x) and their derivatives, shape x.shape + (n,)."""
    x = np.asarray(x, dtype=np.float64)
    t = np.zeros(x.shape + (n,))
    dt = np.zeros(x.shape + (n,))
    t[..., 0] = 1.0
    if n > 1:
        t[..., 1] = x
        dt[..., 1] = 1.0
    for k in range(2, n):
        t[..., k] = 2 * x * t[..., k - 1] - t[..., k - 2]
        dt[..., k] = 2 * t[..., k - 1] + 2 * x * dt[..., k - 1] - dt[..., k - 2]
    return t, dt


def radial_basis(pot: MTPPotential, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q_k(r) and dQ_k/dr, shape (n, R)."""
    rmin, rcut = pot.min_dist, pot.max_dist
    xi = (2 * r - rmin - rcut) / (rcut - rmin)
    t, dt = chebyshev(xi, pot.radial_basis_size)
    env = (rcut - r)[:, None] ** 2
    denv = -2 * (rcut - r)[:, None]
    q = pot.scaling * t * env
    dq = pot.scaling * (dt * (2 / (rcut - rmin)) * env + t * denv)
    return q, dq


def magnetic_basis(pot: MTPPotential, m: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ψ_b(m) and dψ_b/dm for moments m of species z, shape (n, M); ψ ≡ 1 when not magnetic."""
    m = np.atleast_1d(np.asarray(m, dtype=np.float64))
    if not pot.magnetic:
        return np.ones((len(m), 1)), np.zeros((len(m), 1))
    lo, hi = pot.mag_min[z], pot.mag_max[z]
    eta = (2 * m - lo - hi) / (hi - lo)
    t, dt = chebyshev(eta, pot.mag_basis_size)
    return t, dt * (2 / (hi - lo))[:, None]


def monomials(pot: MTPPotential, u: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """u_x^a u_y^b u_z^c for each basic row, shape (n, n_basic), and its gradient w.r.t. the
    vector r_n, shape (n, n_basic, 3): (∇_u mono − ν mono u) / r."""
    abc = pot.alpha_index_basic[:, 1:]
    mono = np.prod(u[:, None, :] ** abc[None, :, :], axis=2)
    grad = np.zeros(mono.shape + (3,))
    for d in range(3):
        lowered = abc.copy()
        lowered[:, d] = np.maximum(lowered[:, d] - 1, 0)
        grad[:, :, d] = abc[None, :, d] * np.prod(u[:, None, :] ** lowered[None, :, :], axis=2)
    nu = abc.sum(axis=1)
    grad -= (nu[None, :] * mono)[:, :, None] * u[:, None, :]
    return mono, grad / r[:, None, None]


# --------------------------------------------------------------------------- one atom
@dataclass
class AtomResult:
    energy: float
    basis: np.ndarray          # (n_basis,)
    d_vectors: np.ndarray      # (n, 3) ∂E_i/∂r_n
    d_mi: float                # ∂E_i/∂m_i
    d_mj: np.ndarray           # (n,) ∂E_i/∂m_j
    d_radial: np.ndarray | None = None   # (C, K, R, M, M) ∂E_i/∂C[z_i, ...]
    tangent: float = 0.0                 # Ė_i along the tangent
    t_radial: np.ndarray | None = None   # ∂Ė_i/∂C[z_i, ...]
    t_moment: np.ndarray | None = None   # ∂Ė_i/∂ξ


def atom_terms(pot: MTPPotential, zi: int, mi: float, zj: np.ndarray, mj: np.ndarray,
               vectors: np.ndarray, param_grad: bool = False,
               t_vectors: np.ndarray | None = None, t_mi: float = 0.0,
               t_mj: np.ndarray | None = None) -> AtomResult:
    """E_i and its derivatives for one neighbourhood (spec §2)."""
    C, K, R, M = pot.species_count, pot.radial_funcs_count, pot.radial_basis_size, pot.mag_basis_size
    basic, times, mapping = pot.alpha_index_basic, pot.alpha_index_times, pot.alpha_moment_mapping
    mu = basic[:, 0]
    n_basic = len(basic)
    r = np.linalg.norm(vectors, axis=1)
    u = vectors / r[:, None] if len(r) else vectors
    q, dq = radial_basis(pot, r)                                   # (n, R)
    psi_i, dpsi_i = magnetic_basis(pot, [mi], np.array([zi]))      # (1, M)
    psi_j, dpsi_j = magnetic_basis(pot, mj, zj)                    # (n, M)
    coeff = pot.radial_coeffs[zi][zj]                              # (n, K, R, M, M)
    f = np.einsum("nmkbc,nk,b,nc->nm", coeff, q, psi_i[0], psi_j)
    df_dr = np.einsum("nmkbc,nk,b,nc->nm", coeff, dq, psi_i[0], psi_j)
    df_dmi = np.einsum("nmkbc,nk,b,nc->nm", coeff, q, dpsi_i[0], psi_j)
    df_dmj = np.einsum("nmkbc,nk,b,nc->nm", coeff, q, psi_i[0], dpsi_j)
    mono, dmono = monomials(pot, u, r)                             # (n, S), (n, S, 3)

    moments = np.zeros(pot.alpha_moments_count)
    moments[:n_basic] = np.einsum("ns,ns->s", f[:, mu], mono)
    for i, j, w, k in times:
        moments[k] += w * moments[i] * moments[j]
    basis = moments[mapping]
    energy = pot.species_coeffs[zi] + float(pot.moment_coeffs @ basis)

    g = np.zeros_like(moments)                                    # ∂E_i/∂M
    np.add.at(g, mapping, pot.moment_coeffs)
    for i, j, w, k in times[::-1]:
        g[i] += w * g[k] * moments[j]
        g[j] += w * g[k] * moments[i]
    gb = g[:n_basic]
    d_vectors = (np.einsum("s,ns->n", gb, df_dr[:, mu] * mono)[:, None] * u
                 + np.einsum("s,ns,nsd->nd", gb, f[:, mu], dmono))
    d_mi = float(np.einsum("s,ns,ns->", gb, df_dmi[:, mu], mono))
    d_mj = np.einsum("s,ns,ns->n", gb, df_dmj[:, mu], mono)
    res = AtomResult(energy, basis, d_vectors, d_mi, d_mj)

    def radial_scatter(weight_nm: np.ndarray, basis_nkbc: np.ndarray) -> np.ndarray:
        out = np.zeros((C, K, R, M, M))
        for zz in range(C):
            sel = zj == zz
            out[zz] = np.einsum("nm,nkbc->mkbc", weight_nm[sel], basis_nkbc[sel])
        return out

    # G[n, μ] = Σ_{s: μ_s = μ} g_s mono_s(n)
    G = np.zeros((len(r), K))
    np.add.at(G.T, mu, (gb[None, :] * mono).T)
    qpp = np.einsum("nk,b,nc->nkbc", q, psi_i[0], psi_j)          # ∂f/∂C
    if param_grad:
        res.d_radial = radial_scatter(G, qpp)

    if t_vectors is not None:
        if t_mj is None:
            t_mj = np.zeros(len(r))
        t_r = np.einsum("nd,nd->n", u, t_vectors)                  # δr along u
        f_dot = df_dr * t_r[:, None] + df_dmi * t_mi + df_dmj * t_mj[:, None]
        mono_dot = np.einsum("nsd,nd->ns", dmono, t_vectors)
        mdot = np.zeros_like(moments)
        mdot[:n_basic] = np.einsum("ns,ns->s", f_dot[:, mu], mono) + np.einsum("ns,ns->s", f[:, mu], mono_dot)
        for i, j, w, k in times:
            mdot[k] += w * (mdot[i] * moments[j] + moments[i] * mdot[j])
        res.tangent = float(pot.moment_coeffs @ mdot[mapping])
        res.t_moment = mdot[mapping].copy()
        # adjoint of M for T (g, the adjoint of Ṁ, equals ∂E/∂M)
        h = np.zeros_like(moments)
        for i, j, w, k in times[::-1]:
            h[i] += w * (g[k] * mdot[j] + h[k] * moments[j])
            h[j] += w * (g[k] * mdot[i] + h[k] * moments[i])
        hb = h[:n_basic]
        A = np.zeros((len(r), K))
        np.add.at(A.T, mu, (hb[None, :] * mono + gb[None, :] * mono_dot).T)
        qpp_dot = (np.einsum("nk,b,nc->nkbc", dq * t_r[:, None], psi_i[0], psi_j)
                   + np.einsum("nk,b,nc->nkbc", q, dpsi_i[0] * t_mi, psi_j)
                   + np.einsum("nk,b,nc->nkbc", q, psi_i[0], dpsi_j * t_mj[:, None]))
        res.t_radial = radial_scatter(A, qpp) + radial_scatter(G, qpp_dot)
    return res


# --------------------------------------------------------------------------- configuration
def _moments_for(pot: MTPPotential, cfg: Configuration, magmoms: np.ndarray | None) -> np.ndarray:
    if magmoms is not None:
        return np.asarray(magmoms, dtype=np.float64)
    if cfg.magmoms is not None:
        return cfg.magmoms
    if pot.magnetic:
        raise InputError("magnetic potential applied to a configuration without magnetic moments; "
                         "give moments (a value or relaxation)")
    return np.zeros(len(cfg))


def _evaluate_raw(pot, cfg, mag, param_grad, tangent, nbhs):
    n = len(cfg)
    types = cfg.types
    out = {"site_energies": np.zeros(n), "forces": np.zeros((n, 3)), "virial": np.zeros((3, 3)),
           "magnetic_gradient": np.zeros(n), "basis": np.zeros((n, pot.n_basis))}
    if param_grad:
        out["site_param_grad"] = np.zeros((n, pot.n_params))
    if tangent is not None:
        t_pos, t_strain, t_mag = tangent
        out["tangent"] = 0.0
        out["tangent_param_grad"] = np.zeros(pot.n_params)
    nr, C = pot.n_radial_params, pot.species_count
    rshape = pot.radial_shape
    for i, nb in enumerate(nbhs):
        zj, mj = types[nb.index], mag[nb.index]
        kw = {}
        if tangent is not None:
            kw = dict(t_vectors=t_pos[nb.index] - t_pos[i] + nb.vectors @ t_strain.T,
                      t_mi=t_mag[i], t_mj=t_mag[nb.index])
        a = atom_terms(pot, types[i], mag[i], zj, mj, nb.vectors, param_grad=param_grad, **kw)
        out["site_energies"][i] = a.energy
        out["basis"][i] = a.basis
        np.add.at(out["forces"], nb.index, -a.d_vectors)
        out["forces"][i] += a.d_vectors.sum(axis=0)
        out["virial"] -= a.d_vectors.T @ nb.vectors
        out["magnetic_gradient"][i] += a.d_mi
        np.add.at(out["magnetic_gradient"], nb.index, a.d_mj)
        if param_grad:
            grad = np.zeros(pot.n_params)
            block = np.zeros(rshape)
            block[types[i]] = a.d_radial
            grad[:nr] = block.ravel()
            grad[nr + types[i]] = 1.0
            grad[nr + C:] = a.basis
            out["site_param_grad"][i] = grad
        if tangent is not None:
            out["tangent"] += a.tangent
            block = np.zeros(rshape)
            block[types[i]] = a.t_radial
            out["tangent_param_grad"][:nr] += block.ravel()
            out["tangent_param_grad"][nr + C:] += a.t_moment
    out["energy"] = float(out["site_energies"].sum())
    if param_grad:
        out["energy_param_grad"] = out["site_param_grad"].sum(axis=0)
    return out


def evaluate(pot: MTPPotential, cfg: Configuration, magmoms: np.ndarray | None = None,
             param_grad: bool = False, tangent: tuple | None = None,
             symmetric: bool | None = None) -> dict:
    """Energy, site energies, forces, virial (eV), stress (GPa, ASE sign), ∂E/∂m, basis values.

    ``param_grad``: also ∂E_i/∂θ (``site_param_grad``, (N, n_params)) and ∂E/∂θ.
    ``tangent=(δpositions (N,3), δstrain (3,3), δmagmoms (N,))``: also the directional
    derivative T = Σ ∂E/∂r·δr + Σ ∂E/∂ε:δε + Σ ∂E/∂m·δm and ∂T/∂θ.
    ``symmetric``: evaluate ½[E(M) + E(−M)] (default: the potential's flag).
    """
    pot.require_trained()
    symmetric = pot.symmetric if symmetric is None else symmetric
    mag = _moments_for(pot, cfg, magmoms)
    nbhs = brute_force_neighborhoods(cfg, pot.cutoff)
    out = _evaluate_raw(pot, cfg, mag, param_grad, tangent, nbhs)
    if symmetric and pot.magnetic:
        flipped_tangent = None
        if tangent is not None:
            flipped_tangent = (tangent[0], tangent[1], -np.asarray(tangent[2]))
        neg = _evaluate_raw(pot, cfg, -mag, param_grad, flipped_tangent, nbhs)
        for key, value in out.items():
            if key == "magnetic_gradient":   # d/dm of E(−m) is −E'(−m)
                out[key] = 0.5 * (value - neg[key])
            else:
                out[key] = 0.5 * (value + neg[key])
    out["stress"] = -out["virial"] / cfg.volume * EV_PER_A3_TO_GPA
    return out


def jacobians(pot: MTPPotential, cfg: Configuration, magmoms: np.ndarray | None = None,
              symmetric: bool | None = None) -> dict:
    """Full parameter Jacobians by unit tangents: ∂F/∂θ (N,3,P), ∂S/∂θ (3,3,P), ∂(∂E/∂m)/∂θ (N,P)."""
    n, p = len(cfg), pot.n_params
    zero_pos, zero_strain, zero_mag = np.zeros((n, 3)), np.zeros((3, 3)), np.zeros(n)
    d_forces = np.zeros((n, 3, p))
    d_virial = np.zeros((3, 3, p))
    d_mag = np.zeros((n, p))
    for i in range(n):
        for d in range(3):
            tp = zero_pos.copy()
            tp[i, d] = 1.0
            d_forces[i, d] = -evaluate(pot, cfg, magmoms, tangent=(tp, zero_strain, zero_mag),
                                       symmetric=symmetric)["tangent_param_grad"]
    for a in range(3):
        for b in range(3):
            ts = zero_strain.copy()
            ts[a, b] = 1.0
            d_virial[a, b] = -evaluate(pot, cfg, magmoms, tangent=(zero_pos, ts, zero_mag),
                                       symmetric=symmetric)["tangent_param_grad"]
    if pot.magnetic:
        for i in range(n):
            tm = zero_mag.copy()
            tm[i] = 1.0
            d_mag[i] = evaluate(pot, cfg, magmoms, tangent=(zero_pos, zero_strain, tm),
                                symmetric=symmetric)["tangent_param_grad"]
    return {"forces": d_forces, "virial": d_virial, "magnetic_gradient": d_mag}
