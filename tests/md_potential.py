"""TEST SCAFFOLDING: a hand-built magnetic MTP for the MD tests, not a trained potential.

The MD tests need a magnetic potential that gives stable dynamics of bcc Fe with moments
coupled to positions. Until the training issue ships trained potentials in
``inputs/potentials/``, this module *constructs* one: a level-10 magnetic MTP whose
coefficients encode an analytic Finnis–Sinclair-like model exactly (up to a Chebyshev fit
of the pair term), so its physics is known and bcc Fe is mechanically stable.

The model, for a centre ``i`` of species Fe (η = m / m_max, T_b Chebyshev polynomials)::

    E_i = F(ρ_i) + ½ Σ_j V(r_ij) + a η_i² Σ_j φ(r_ij)
          + b η_i⁴ Σ_j φ_b(r_ij) + J η_i Σ_{j ∈ Fe} φ_b(r_ij) η_j
    ρ_i = Σ_j φ(r_ij)

with Finnis & Sinclair's (Phil. Mag. A 50, 45 (1984)) Fe density ``φ(r) = (d − r)² +
β (r − d)³ / d`` and pair term V (refitted to ``(R_cut − r)² × polynomial``, :func:`model_pair`), the
embedding ``F(ρ) = −A √ρ`` replaced by a quartic polynomial in ρ (least squares on the
densities met in MD), ``φ_b = (d − r)³ / d``. The a < 0, b > 0 terms are a Landau
expansion (zero at m = 0) with a minimum near 2.3 μB that shifts with the local structure
(the two radial shapes differ, so moments and positions are coupled), J < 0 couples
moments ferromagnetically. An Al centre (second species, if asked for) has the same
non-magnetic part and a Landau term ``a_Al m² ρ`` (a_Al > 0) with its minimum at m = 0.

How the MTP encodes it (level 10: scalar moments M_{μ,0} = Σ_j f_μ): basis functions
B_0 = M_{0,0} (= ρ), B_3 = ρ², B_9 = ρ³, B_14 = ρ⁴ carry F; B_1 = M_{1,0} carries
½V + a η² φ; B_2 = M_{2,0} carries b η⁴ φ_b + J η_i η_j φ_b (η² = (T₀ + T₂)/2,
η⁴ = (3T₀ + 4T₂ + T₄)/8); all other ξ are zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from mmtp_hpc.potentials.mtp.basis import new_potential
from mmtp_hpc.potentials.mtp.mlip_io import save_potential
from mmtp_hpc.potentials.mtp.parameters import MTPPotential

# Finnis & Sinclair (1984), Fe
FS_D = 3.569745
FS_A = 1.828905
FS_BETA = 1.8
FS_C = 3.4
FS_C0, FS_C1, FS_C2 = 1.2371147, -0.3592185, -0.0385607

# magnetic model parameters (eV); Landau minimum ≈ 2.2 μB in bcc near a = 2.87 Å
M_MAX = 4.0
LANDAU_A = -0.322
LANDAU_B = 0.947
EXCHANGE_J = -0.08
AL_LANDAU_A = 0.1
AL_M_MAX = 1.0

RMIN = 1.9
RCUT = FS_D


def fs_phi(r: np.ndarray) -> np.ndarray:
    return np.where(r < FS_D, (r - FS_D) ** 2 + FS_BETA * (r - FS_D) ** 3 / FS_D, 0.0)


def fs_pair(r: np.ndarray) -> np.ndarray:
    return np.where(r < FS_C, (r - FS_C) ** 2 * (FS_C0 + FS_C1 * r + FS_C2 * r * r), 0.0)


def phi_b(r: np.ndarray) -> np.ndarray:
    return np.where(r < FS_D, (FS_D - r) ** 3 / FS_D, 0.0)


def _xi(r: np.ndarray) -> np.ndarray:
    return (2.0 * r - RMIN - RCUT) / (RCUT - RMIN)


def _chebyshev_fit(target, size: int) -> np.ndarray:
    """Coefficients c_k with Σ_k c_k T_k(ξ(r)) (R_cut − r)² ≈ target(r) on [R_min, R_cut)."""
    r = np.linspace(RMIN, RCUT - 1e-3, 2000)
    g = target(r) / (RCUT - r) ** 2
    # weight the region where neighbours are found in bcc/fcc Fe at 0–1500 K
    w = np.where(r > 2.1, 1.0, 0.05)
    T = np.polynomial.chebyshev.chebvander(_xi(r), size - 1)
    coeffs, *_ = np.linalg.lstsq(T * w[:, None], g * w, rcond=None)
    return coeffs


def model_pair(r: np.ndarray) -> np.ndarray:
    """The pair term V(r) the MTP encodes: the Chebyshev refit of Finnis–Sinclair's."""
    r = np.asarray(r, dtype=float)
    c = _chebyshev_fit(lambda x: 0.5 * fs_pair(x), 8)
    inside = r < RCUT
    g = np.polynomial.chebyshev.chebval(_xi(np.where(inside, r, RCUT)), c)
    return np.where(inside, 2.0 * g * (RCUT - r) ** 2, 0.0)


def _embedding_polynomial() -> np.ndarray:
    """Quartic p(ρ) ≈ −A √ρ on the densities met in MD (ρ₀ ≈ 6.2 in bcc), low to high order."""
    rho = np.linspace(3.0, 10.0, 400)
    return np.polynomial.polynomial.polyfit(rho, -FS_A * np.sqrt(rho), 4)


def fe_model_potential(species: tuple[str, ...] = ("Fe",), radial_size: int = 8,
                       symmetric: bool = False) -> MTPPotential:
    """The level-10 magnetic model MTP described in the module docstring (species Fe[, Al])."""
    C = len(species)
    if species[0] != "Fe" or (C == 2 and species[1] != "Al") or C > 2:
        raise ValueError("species must be ('Fe',) or ('Fe', 'Al')")
    intervals = [(-M_MAX, M_MAX)] + ([(-AL_M_MAX, AL_M_MAX)] if C == 2 else [])
    pot = new_potential(10, species_count=C, radial_basis_size=radial_size, mag_basis_size=5,
                        mag_interval=intervals, min_dist=RMIN, max_dist=RCUT,
                        species_names=list(species), init="none")
    basic = pot.alpha_index_basic
    scalar = {int(mu): s for s, (mu, a, b, c) in enumerate(basic) if a == b == c == 0}
    mapping = list(pot.alpha_moment_mapping)
    # identify the basis functions B = ρ, ρ², ρ³, ρ⁴, M_{1,0}, M_{2,0} from the product rows
    power = {scalar[0]: 1}
    for i, j, _w, k in pot.alpha_index_times:
        if i in power and j in power and (i == scalar[0] or j == scalar[0]):
            power[int(k)] = power[int(i)] + power[int(j)]
    by_power = {p: m for m, p in power.items()}
    xi = np.zeros(pot.n_basis)
    poly = _embedding_polynomial()
    for p in (1, 2, 3, 4):
        xi[mapping.index(by_power[p])] = poly[p]
    xi[mapping.index(scalar[1])] = 1.0
    xi[mapping.index(scalar[2])] = 1.0

    R, M, K = radial_size, 5, pot.radial_funcs_count
    coeffs = np.zeros((C, C, K, R, M, M))
    c_rho = _chebyshev_fit(fs_phi, R)
    c_pair = _chebyshev_fit(lambda r: 0.5 * fs_pair(r), R)
    c_b = _chebyshev_fit(phi_b, R)
    for zi in range(C):
        for zj in range(C):
            coeffs[zi, zj, 0, :, 0, 0] = c_rho
            coeffs[zi, zj, 1, :, 0, 0] = c_pair
            if zi == 0:
                # a η² φ with η² = (T0 + T2)/2; b η⁴ φ_b with η⁴ = (3 T0 + 4 T2 + T4)/8
                coeffs[zi, zj, 1, :, 0, 0] += 0.5 * LANDAU_A * c_rho
                coeffs[zi, zj, 1, :, 2, 0] += 0.5 * LANDAU_A * c_rho
                coeffs[zi, zj, 2, :, 0, 0] += 3 / 8 * LANDAU_B * c_b
                coeffs[zi, zj, 2, :, 2, 0] += 4 / 8 * LANDAU_B * c_b
                coeffs[zi, zj, 2, :, 4, 0] += 1 / 8 * LANDAU_B * c_b
                if zj == 0:
                    coeffs[zi, zj, 2, :, 1, 1] = EXCHANGE_J * c_b
            else:
                coeffs[zi, zj, 1, :, 0, 0] += 0.5 * AL_LANDAU_A * c_rho
                coeffs[zi, zj, 1, :, 2, 0] += 0.5 * AL_LANDAU_A * c_rho
    pot.radial_coeffs = coeffs
    pot.species_coeffs = np.full(C, poly[0])
    pot.moment_coeffs = xi
    pot.symmetric = symmetric
    pot.potential_name = "MTP1m"
    pot.potential_tag = "hand-built magnetic Finnis-Sinclair model (tests/md_potential.py), not fitted to DFT"
    return pot


def write_model_potential(path: str | Path, species: tuple[str, ...] = ("Fe",)) -> Path:
    path = Path(path)
    save_potential(fe_model_potential(species), path)
    return path


def model_site_energies(positions: np.ndarray, cell: np.ndarray, magmoms: np.ndarray,
                        types: np.ndarray | None = None) -> np.ndarray:
    """The analytic model (with the exact FS pair term and the quartic embedding), plain NumPy.

    For sanity tests of the encoding; O(N²·27), small cells only.
    """
    n = len(positions)
    types = np.zeros(n, dtype=int) if types is None else np.asarray(types)
    shifts = np.array([(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)]) @ cell
    poly = _embedding_polynomial()
    out = np.zeros(n)
    for i in range(n):
        d = positions[None, :, :] + shifts[:, None, :] - positions[i]
        r = np.linalg.norm(d, axis=2)
        mask = (r > 1e-9) & (r < RCUT)
        rr = r[mask]
        jj = np.broadcast_to(np.arange(n), r.shape)[mask]
        rho = fs_phi(rr).sum()
        e = np.polynomial.polynomial.polyval(rho, poly) + 0.5 * model_pair(rr).sum()
        if types[i] == 0:
            eta_i = magmoms[i] / M_MAX
            fe = types[jj] == 0
            e += LANDAU_A * eta_i ** 2 * rho + LANDAU_B * eta_i ** 4 * phi_b(rr).sum()
            e += EXCHANGE_J * eta_i * (phi_b(rr[fe]) * magmoms[jj[fe]] / M_MAX).sum()
        else:
            eta_i = magmoms[i] / AL_M_MAX
            e += AL_LANDAU_A * eta_i ** 2 * rho
        out[i] = e
    return out


# --------------------------------------------------------------------------- fixtures
@dataclass
class MDPotential:
    """A potential for the MD physics tests and how to build its natural crystal."""

    path: Path
    species: list[str]
    lattice: str
    a: float                 # lattice parameter (Å) near zero pressure at 300 K
    magmoms: float           # a moment (μB) near the relaxed one

    def system(self, repeat: int | list[int], **extra) -> dict:
        """A [system] section for this potential's crystal."""
        return {"lattice": self.lattice, "a": self.a, "repeat": repeat, "species": self.species,
                "magmoms": self.magmoms, **extra}


@pytest.fixture(scope="session")
def fe_potential(tmp_path_factory) -> MDPotential:
    """The magnetic bcc Fe potential of the MD physics tests: the shipped trained one.

    ``inputs/potentials/fe_bcc_analytic_l16.almtp`` (level 16, spin-symmetrised, trained on the built-in
    analytic model: a ≈ 2.855 Å and m ≈ 2.25 μB at equilibrium). The hand-built model above
    (:func:`write_model_potential`) remains for the example and for unit tests that need a
    potential with a known closed form.
    """
    return MDPotential(Path(__file__).resolve().parents[1] / "inputs" / "potentials" / "fe_bcc_analytic_l16.almtp",
                       ["Fe"], "bcc", 2.855, 2.25)


def md_settings(pot: MDPotential, base: Path, *, repeat: int | list[int] = 3, system: dict | None = None,
                md: dict | None = None, moments: dict | None = None, output: dict | None = None,
                extrapolation: dict | None = None, potential: dict | None = None):
    """RunSettings for a test run in ``base`` (no trajectory/checkpoint unless asked for)."""
    from mmtp_hpc.dynamics.settings import settings_from_dict

    data = {
        "system": system if system is not None else pot.system(repeat),
        "potential": {"file": str(pot.path), **(potential or {})},
        "md": {"steps": 100, "timestep_fs": 1.0, "ensemble": "nve", "temperature_K": 300.0, "seed": 11,
               **(md or {})},
        "moments": moments or {},
        "output": {"trajectory": "", "checkpoint": "", "log_every": 10 ** 9, **(output or {})},
    }
    if extrapolation:
        data["extrapolation"] = extrapolation
    return settings_from_dict(data, source=str(base / "input.toml"), base_dir=str(base))
