r"""A built-in analytic magnetic model for Fe–Al: the "DFT" of tests, demos and active learning.

The model is an embedded-atom (EAM) potential plus longitudinal magnetism: a
distance-dependent Heisenberg exchange between collinear moments and a Landau
expansion on every site whose quadratic coefficient depends on the local
density (so moments grow when the lattice expands, as in real Fe). Moments
``m_i`` (μB) are *inputs*, as in constrained-moment DFT: :meth:`evaluate`
returns the energy at the moments given, and ``∂E/∂m_i`` is the constraining
field needed to hold them there. :meth:`relax_moments` finds the unconstrained
moments (∂E/∂m = 0) at fixed positions.

Equations (units eV, Å, μB; ``z_i`` the species of atom i; sums over
neighbours ``j ≠ i`` with ``r_ij = |r_j − r_i| < r_c``, periodic images
included)::

    E   = Σ_i E_i
    E_i = E0_z + F_z(ρ_i) + ½ Σ_j φ_zz'(r_ij)                          (EAM)
               + a_z(ρ_i) m_i² + b_z m_i⁴                               (Landau)
               − ½ Σ_j J_zz'(r_ij) m_i m_j                              (Heisenberg)

    ρ_i      = Σ_j g_z'(r_ij)                       local density of atom i
    g_z(r)   = c_z exp(−β_z (r − r_z)) · S(r)        density that species z gives its neighbours
    F_z(ρ)   = −A_z (√(ρ + ε_z) − √ε_z) + C_z ρ²     embedding (ε_z keeps F' finite at ρ → 0)
    φ(r)     = D [e^{−2α(r − r0)} − 2 e^{−α(r − r0)}] · S(r)      Morse pair term
    J(r)     = J0 exp(−κ (r − rJ)) · S(r)                          exchange (J > 0: ferromagnetic)
    a_z(ρ)   = a0_z + a1_z (ρ − ρ0_z)                              Landau quadratic coefficient
    S(r)     = 1 for r ≤ r_s;  1 − 10t³ + 15t⁴ − 6t⁵, t = (r − r_s)/(r_c − r_s), for r_s < r < r_c;
               0 for r ≥ r_c

Parameter names in the JSON file: per element ``energy_ref`` (E0), ``embedding_A/C/eps``
(A, C, ε), ``density_c/beta/r0`` (c, β, r_z), ``landau_a0/a1/rho0/b``; per unordered pair
``"Fe-Al"`` ``morse_D/alpha/r0`` and ``exchange_J/kappa/r0`` (J0, κ, rJ); globally
``cutoff`` (r_c) and ``taper_start`` (r_s).

``S`` and its first two derivatives vanish at ``r_c`` (and match 1 at ``r_s``),
so energy, forces and force constants are continuous when a neighbour crosses
the cutoff. ``φ``, ``J`` are symmetric in the species pair. Spin-flip symmetry
``E(m) = E(−m)`` holds by construction (only m², m⁴ and m_i m_j appear).

Derivatives (evaluated analytically, vectorised over the pairs of a full
neighbour list; each unordered pair appears once from each end)::

    ∂E/∂m_i  = 2 a_z(ρ_i) m_i + 4 b_z m_i³ − Σ_j J(r_ij) m_j           (eV/μB, MLIP-3 en_der sign)
    ∂E/∂r_ij|_(i→j) = U_i g'_z'(r_ij) + ½ φ'(r_ij) − ½ J'(r_ij) m_i m_j,
                        U_i = F'_z(ρ_i) + a1_z m_i²
    F = −∂E/∂r;  virial (PlusStress) S_ab = −Σ_(i→j) (∂E/∂r_ij)_a (r_ij)_b  (eV, > 0 under compression)
    stress (GPa, ASE sign) = −S / V · 160.21766208

Default parameters: :data:`DEFAULT_PARAMETERS`, identical to
``inputs/models/fe_al_model.json`` (types 0 = Fe, 1 = Al; ``E0_Fe`` makes an isolated Fe
atom, which relaxes to 3.38 μB, have zero energy, so −E/N of a crystal is its cohesive
energy). They were fitted to the targets below; measured with relaxed moments
(ferromagnetic start) and checked by ``tests/test_analytic_model.py``:

=====================  =========================================================
bcc Fe (FM)            a = 2.855 Å, E = −4.246 eV/atom, B ≈ 181 GPa,
                       C11/C12/C44 ≈ 245/151/94 GPa, m = 2.25 μB,
                       E(FM) − E(m = 0) = −0.62 eV/atom
Fe moment vs a         2.70: 1.72, 2.75: 1.95, 2.80: 2.12, 2.855: 2.25,
                       2.90: 2.33, 2.95: 2.39, 3.00: 2.44 μB
other Fe phases        AFM (B2-type) bcc +0.31 eV/atom (m = 1.89), hcp +0.067,
                       fcc +0.11 (mechanically unstable, Bain path has bcc lowest)
defects                vacancy formation 1.69 eV, (100) surface 1.85 J/m²
B2 FeAl                a = 2.896 Å, B ≈ 165 GPa, C' ≈ 30, C44 ≈ 90 GPa,
                       ΔH = −0.33 eV/atom, m(Fe) = 1.09, m(Al) = −0.013 μB;
                       Fe moment collapses below a ≈ 2.82 Å
D0₃ Fe₃Al              ΔH ≈ −0.18 eV/atom
fcc Al                 a = 4.043 Å, B ≈ 75 GPa, E = −3.40 eV/atom, m = 0
=====================  =========================================================

The density ``g_Fe`` decays slowly (β = 0.4 Å⁻¹), so the Fe embedding and the
Landau coefficient see a smooth, volume-like measure of the neighbourhood out to the
taper; shorter-ranged densities made bcc Fe mechanically unstable (C' < 0) in this
functional form.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from mmtp_hpc.errors import InputError
from mmtp_hpc.system.configuration import EV_PER_A3_TO_GPA, Configuration
from mmtp_hpc.system.neighbors import NeighborList, build_neighbor_list

MODEL_FORMAT = "mmtp_analytic_model"
MODEL_VERSION = 1
EFS_BY = "mmtp_analytic"


@dataclass
class SpeciesParameters:
    """On-site parameters of one species (units in the names' comments)."""

    energy_ref: float = 0.0      # E0_z, eV, constant per atom
    embedding_A: float = 1.0     # A_z, eV
    embedding_C: float = 0.0     # C_z, eV
    embedding_eps: float = 0.01  # ε_z, dimensionless density
    density_c: float = 1.0       # c_z, dimensionless
    density_beta: float = 3.0    # β_z, 1/Å
    density_r0: float = 2.5      # r_z, Å
    landau_a0: float = 1.0       # a0_z, eV/μB²
    landau_a1: float = 0.0       # a1_z, eV/μB² per unit density
    landau_rho0: float = 1.0     # ρ0_z, dimensionless density
    landau_b: float = 0.05       # b_z, eV/μB⁴ (> 0 keeps the energy bounded below)


@dataclass
class PairParameters:
    """Parameters of one unordered species pair."""

    morse_D: float = 0.0         # D, eV
    morse_alpha: float = 1.5     # α, 1/Å
    morse_r0: float = 2.5        # r0, Å
    exchange_J: float = 0.0      # J0, eV/μB²
    exchange_kappa: float = 1.0  # κ, 1/Å
    exchange_r0: float = 2.5     # rJ, Å


# The built-in Fe–Al parameters (kept identical to inputs/models/fe_al_model.json by a test).
DEFAULT_PARAMETERS: dict = {
    "format": MODEL_FORMAT,
    "version": MODEL_VERSION,
    "description": "EAM + Heisenberg exchange + density-dependent Landau moments for Fe-Al "
                   "(mmtp_hpc built-in analytic model, a stand-in for constrained-moment DFT)",
    "cutoff": 5.0,
    "taper_start": 4.0,
    "species": ["Fe", "Al"],
    "elements": {
        # E0_Fe makes an isolated Fe atom (ρ = 0, relaxed m = 3.38 μB) have zero energy, so
        # −E/N of a crystal is its cohesive energy; Al has no moment when isolated.
        "Fe": {"energy_ref": 3.176, "embedding_A": 4.195, "embedding_C": 1.674, "embedding_eps": 0.005,
               "density_c": 0.04771, "density_beta": 0.4, "density_r0": 2.5,
               "landau_a0": -0.1696, "landau_a1": 0.3851, "landau_rho0": 1.0, "landau_b": 0.02422},
        "Al": {"energy_ref": 0.0, "embedding_A": 0.4343, "embedding_C": 1.004, "embedding_eps": 0.005,
               "density_c": 0.1058, "density_beta": 1.055, "density_r0": 2.5,
               "landau_a0": 1.0, "landau_a1": 0.0, "landau_rho0": 1.0, "landau_b": 0.05},
    },
    "pairs": {
        "Fe-Fe": {"morse_D": 0.5187, "morse_alpha": 1.172, "morse_r0": 2.544,
                  "exchange_J": 0.008127, "exchange_kappa": 0.5907, "exchange_r0": 2.5},
        "Fe-Al": {"morse_D": 0.6943, "morse_alpha": 1.302, "morse_r0": 2.487,
                  "exchange_J": -0.003, "exchange_kappa": 1.3, "exchange_r0": 2.5},
        "Al-Al": {"morse_D": 0.5716, "morse_alpha": 1.271, "morse_r0": 2.761,
                  "exchange_J": 0.0, "exchange_kappa": 1.3, "exchange_r0": 2.5},
    },
}

# The same parameters as a file, for users to copy and edit (exists in a source checkout only;
# default() never reads it).
DEFAULT_JSON = Path(__file__).resolve().parents[2] / "inputs" / "models" / "fe_al_model.json"


def taper(r: np.ndarray, r_s: float, r_c: float) -> tuple[np.ndarray, np.ndarray]:
    """Quintic smoothstep S(r) and dS/dr: 1 below r_s, 0 above r_c, C² everywhere."""
    t = np.clip((r - r_s) / (r_c - r_s), 0.0, 1.0)
    s = 1.0 - t * t * t * (10.0 - 15.0 * t + 6.0 * t * t)
    ds = -30.0 * t * t * (1.0 - t) ** 2 / (r_c - r_s)
    return s, ds


class AnalyticMagneticModel:
    """EAM + Heisenberg + Landau model; see the module docstring for the equations.

    ``species`` lists the chemical symbols of potential types 0, 1, ... (default:
    the parameter file's ``species``, ``["Fe", "Al"]`` for the built-in model).
    Every symbol must have element parameters, and every pair of them pair
    parameters.
    """

    def __init__(self, cutoff: float, taper_start: float, elements: dict[str, SpeciesParameters],
                 pairs: dict[tuple[str, str], PairParameters], species: Sequence[str] | None = None,
                 description: str = ""):
        self.cutoff = float(cutoff)
        self.taper_start = float(taper_start)
        if not (math.isfinite(self.cutoff) and 0.0 < self.taper_start < self.cutoff):
            raise InputError(f"need 0 < taper_start < cutoff, got {self.taper_start}, {self.cutoff}",
                             field="cutoff")
        self.elements = {k: copy.deepcopy(v) for k, v in elements.items()}
        self.pairs = {tuple(sorted(k)): copy.deepcopy(v) for k, v in pairs.items()}
        self.description = description
        self.species = list(species) if species is not None else list(self.elements)
        self._tabulate()

    # ------------------------------------------------------------------ construction and I/O
    def _tabulate(self) -> None:
        """Per-type vectors and per-type-pair matrices, so the pair loop is pure NumPy indexing."""
        for sym in self.species:
            if sym not in self.elements:
                raise InputError(f"no element parameters for species {sym!r} "
                                 f"(have {sorted(self.elements)})", field="species")
            if self.elements[sym].landau_b <= 0.0:
                raise InputError(f"{sym}: landau_b must be > 0 (energy bounded below in m), got "
                                 f"{self.elements[sym].landau_b}", field="landau_b")
        n = len(self.species)
        self.site = {f.name: np.array([getattr(self.elements[s], f.name) for s in self.species])
                     for f in fields(SpeciesParameters)}
        self.pair = {f.name: np.zeros((n, n)) for f in fields(PairParameters)}
        for p, zi in enumerate(self.species):
            for q, zj in enumerate(self.species):
                key = tuple(sorted((zi, zj)))
                if key not in self.pairs:
                    raise InputError(f"no pair parameters for {zi}-{zj}", field="pairs")
                for name in self.pair:
                    self.pair[name][p, q] = getattr(self.pairs[key], name)

    @classmethod
    def from_dict(cls, data: dict, species: Sequence[str] | None = None,
                  source: str | None = None) -> AnalyticMagneticModel:
        """Model from the JSON structure of ``inputs/models/fe_al_model.json``."""
        if data.get("format", MODEL_FORMAT) != MODEL_FORMAT:
            raise InputError(f"not an analytic model file (format = {data.get('format')!r})",
                             path=source, field="format")
        if int(data.get("version", MODEL_VERSION)) > MODEL_VERSION:
            raise InputError(f"model file version {data['version']} is newer than {MODEL_VERSION}",
                             path=source, field="version")
        try:
            elements = {sym: _dataclass_from(SpeciesParameters, values, f"elements.{sym}", source)
                        for sym, values in data["elements"].items()}
            pairs: dict[tuple[str, str], PairParameters] = {}
            for name, values in data["pairs"].items():
                parts = name.split("-")
                if len(parts) != 2:
                    raise InputError(f"pair key {name!r} is not 'A-B'", path=source, field="pairs")
                key = tuple(sorted(parts))
                if key in pairs:
                    raise InputError(f"pair {name!r} given twice", path=source, field="pairs")
                pairs[key] = _dataclass_from(PairParameters, values, f"pairs.{name}", source)
            return cls(cutoff=data["cutoff"], taper_start=data["taper_start"], elements=elements,
                       pairs=pairs, species=species if species is not None else data.get("species"),
                       description=data.get("description", ""))
        except KeyError as exc:
            raise InputError(f"missing key {exc.args[0]!r}", path=source) from None

    def to_dict(self) -> dict:
        return {
            "format": MODEL_FORMAT, "version": MODEL_VERSION, "description": self.description,
            "cutoff": self.cutoff, "taper_start": self.taper_start, "species": list(self.species),
            "elements": {sym: asdict(p) for sym, p in self.elements.items()},
            "pairs": {"-".join(self._pair_order(key)): asdict(p) for key, p in self.pairs.items()},
        }

    def _pair_order(self, key: tuple[str, str]) -> tuple[str, str]:
        """A pair's two symbols in type order ("Fe-Al" for the default model)."""
        rank = {sym: k for k, sym in enumerate(self.species)}
        return tuple(sorted(key, key=lambda sym: (rank.get(sym, len(rank)), sym)))

    @classmethod
    def from_json(cls, path: str | os.PathLike, species: Sequence[str] | None = None
                  ) -> AnalyticMagneticModel:
        try:
            with open(path) as f:
                data = json.load(f)
        except json.JSONDecodeError as exc:
            raise InputError(f"not valid JSON: {exc}", path=str(path), line=exc.lineno) from None
        return cls.from_dict(data, species=species, source=str(path))

    def to_json(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")

    @classmethod
    def default(cls, species: Sequence[str] | None = None) -> AnalyticMagneticModel:
        """The built-in Fe–Al model (:data:`DEFAULT_PARAMETERS`)."""
        return cls.from_dict(DEFAULT_PARAMETERS, species=species)

    @classmethod
    def load(cls, spec: str | os.PathLike, species: Sequence[str] | None = None
             ) -> AnalyticMagneticModel:
        """``"builtin"`` (or ``"default"``) for the built-in model, else a JSON file path."""
        if str(spec).lower() in ("builtin", "default"):
            return cls.default(species=species)
        if not Path(spec).is_file():
            raise FileNotFoundError(f"no such model file: {spec} (or use 'builtin')")
        return cls.from_json(spec, species=species)

    # ------------------------------------------------------------------ checks
    def check_configuration(self, cfg: Configuration, magmoms: np.ndarray | None,
                            required: bool = True) -> np.ndarray | None:
        """Validate types, finiteness and moments; return the moments to use (N,) or None."""
        n = len(cfg)
        if not np.all(np.isfinite(cfg.positions)):
            bad = int(np.argwhere(~np.isfinite(cfg.positions))[0, 0])
            raise InputError(f"position of atom {bad} is not finite")
        if not np.all(np.isfinite(cfg.cell)):
            raise InputError("cell is not finite")
        if n and (cfg.types.min() < 0 or cfg.types.max() >= len(self.species)):
            raise InputError(f"configuration has atom types {sorted(set(cfg.types.tolist()))} but the "
                             f"model has species {self.species} (types 0..{len(self.species) - 1})")
        if magmoms is None:
            magmoms = cfg.magmoms
        if magmoms is None:
            if required:
                raise InputError("the analytic model needs magnetic moments (moments are constrained "
                                 "inputs); give moments (a value, or relax them)")
            return None
        magmoms = np.array(magmoms, dtype=np.float64)
        if magmoms.size != n:
            raise InputError(f"expected {n} moments, got {magmoms.size}", field="magmoms")
        magmoms = magmoms.reshape(n)
        if not np.all(np.isfinite(magmoms)):
            raise InputError(f"magnetic moment of atom {int(np.argwhere(~np.isfinite(magmoms))[0, 0])} "
                             "is not finite", field="magmoms")
        return magmoms

    def neighbor_list(self, cfg: Configuration) -> NeighborList:
        return build_neighbor_list(cfg.cell, cfg.pbc, cfg.positions, self.cutoff)

    # ------------------------------------------------------------------ pair functions
    def _pairs(self, nl: NeighborList, types: np.ndarray) -> dict:
        """Pair geometry and the radial functions (with r-derivatives) on every directed pair."""
        i = nl.pair_centers()
        j = nl.image_of[nl.neighbors]
        vec = nl.positions[nl.neighbors] - nl.positions[i]
        r = np.sqrt(np.einsum("pk,pk->p", vec, vec))
        ti, tj = types[i], types[j]
        s, ds = taper(r, self.taper_start, self.cutoff)
        site, pair = self.site, self.pair
        # density that neighbour j (species z_j) contributes to i
        beta = site["density_beta"][tj]
        g0 = site["density_c"][tj] * np.exp(-beta * (r - site["density_r0"][tj]))
        g = g0 * s
        dg = g0 * (ds - beta * s)
        # Morse pair term
        D, alpha = pair["morse_D"][ti, tj], pair["morse_alpha"][ti, tj]
        e1 = np.exp(-alpha * (r - pair["morse_r0"][ti, tj]))
        phi0 = D * e1 * (e1 - 2.0)
        dphi0 = 2.0 * alpha * D * e1 * (1.0 - e1)
        phi = phi0 * s
        dphi = dphi0 * s + phi0 * ds
        # exchange
        kappa = pair["exchange_kappa"][ti, tj]
        J0 = pair["exchange_J"][ti, tj] * np.exp(-kappa * (r - pair["exchange_r0"][ti, tj]))
        J = J0 * s
        dJ = J0 * (ds - kappa * s)
        return {"i": i, "j": j, "vec": vec, "r": r, "g": g, "dg": dg, "phi": phi, "dphi": dphi,
                "J": J, "dJ": dJ}

    def _density(self, pairs: dict, n: int) -> np.ndarray:
        return np.bincount(pairs["i"], weights=pairs["g"], minlength=n)

    def landau_a(self, types: np.ndarray, rho: np.ndarray) -> np.ndarray:
        """a_z(ρ) (eV/μB²) per atom."""
        return self.site["landau_a0"][types] + self.site["landau_a1"][types] * (
            rho - self.site["landau_rho0"][types])

    def densities(self, cfg: Configuration) -> np.ndarray:
        """Local densities ρ_i (dimensionless) of every atom."""
        self.check_configuration(cfg, None, required=False)
        nl = self.neighbor_list(cfg)
        return self._density(self._pairs(nl, cfg.types), len(cfg))

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, cfg: Configuration, magmoms: np.ndarray | None = None, *,
                 derivatives: bool = True) -> dict:
        """Energy (eV), site energies, forces (eV/Å), virial (eV), stress (GPa), ∂E/∂m (eV/μB).

        ``magmoms`` (N,) μB overrides ``cfg.magmoms``; one of them is required.
        Keys and signs are those of :meth:`mmtp_hpc.potentials.mtp.engine.MTPEngine.evaluate`.
        """
        m = self.check_configuration(cfg, magmoms)
        n = len(cfg)
        types = cfg.types
        nl = self.neighbor_list(cfg)
        p = self._pairs(nl, types)
        i, j = p["i"], p["j"]
        site = self.site
        rho = self._density(p, n)
        A, C, eps = (site["embedding_A"][types], site["embedding_C"][types],
                     site["embedding_eps"][types])
        sq = np.sqrt(rho + eps)
        embed = -A * (sq - np.sqrt(eps)) + C * rho * rho
        a = self.landau_a(types, rho)
        b = site["landau_b"][types]
        m2 = m * m
        mm = m[i] * m[j]
        site_energies = (site["energy_ref"][types] + embed + a * m2 + b * m2 * m2
                         + 0.5 * np.bincount(i, weights=p["phi"] - p["J"] * mm, minlength=n))
        out: dict = {"energy": float(site_energies.sum()), "site_energies": site_energies}
        if not derivatives:
            return out
        # U_i = ∂E/∂ρ_i: the embedding and, through a_z(ρ), the Landau term both depend on ρ_i
        U = -0.5 * A / sq + 2.0 * C * rho + site["landau_a1"][types] * m2
        dEdr = U[i] * p["dg"] + 0.5 * (p["dphi"] - p["dJ"] * mm)
        d = (dEdr / p["r"])[:, None] * p["vec"]      # ∂E/∂r_j contribution of directed pair i→j
        forces = np.empty((n, 3))
        for k in range(3):
            forces[:, k] = (np.bincount(i, weights=d[:, k], minlength=n)
                            - np.bincount(j, weights=d[:, k], minlength=n))
        virial = -d.T @ p["vec"]
        # J is symmetric in the pair, so row i of the full list holds all of m_i's partners
        dEdm = 2.0 * a * m + 4.0 * b * m2 * m - np.bincount(i, weights=p["J"] * m[j], minlength=n)
        volume = cfg.volume
        out["forces"] = forces
        out["virial"] = virial
        out["stress"] = (-virial / volume * EV_PER_A3_TO_GPA) if volume > 0 else np.full((3, 3), np.nan)
        out["magnetic_gradient"] = dEdm
        return out

    # ------------------------------------------------------------------ moments
    def landau_minimum(self, cfg: Configuration) -> np.ndarray:
        """Single-site moments √(max(−a_z(ρ_i), 0) / 2b_z) (μB, ≥ 0), ignoring exchange."""
        types = cfg.types
        a = self.landau_a(types, self.densities(cfg))
        return np.sqrt(np.maximum(-a, 0.0) / (2.0 * self.site["landau_b"][types]))

    def relax_moments(self, cfg: Configuration, m0: np.ndarray | None = None, tol: float = 1e-6,
                      bounds: tuple[float, float] | np.ndarray | None = None,
                      max_iter: int = 10000) -> np.ndarray:
        """Moments (N,) μB minimising E at fixed positions, to max|∂E/∂m| ≤ ``tol`` eV/μB.

        ``m0``: start (default ``cfg.magmoms``, else the single-site Landau minimum,
        i.e. a ferromagnetic start). The minimum found is the local one reached from
        ``m0`` (antiferromagnetic starts stay antiferromagnetic). ``bounds``: one
        ``(lo, hi)`` for all atoms or an (N, 2) array; the gradient criterion is then
        the projected one. The positions enter only through ρ_i and J(r_ij), so the
        energy in m is a quartic with a sparse exchange matrix, minimised by
        L-BFGS-B on its analytic gradient and polished by Newton steps.
        """
        from scipy.optimize import minimize
        from scipy.sparse import csr_matrix

        self.check_configuration(cfg, None, required=False)
        n = len(cfg)
        if n == 0:
            return np.zeros(0)
        if m0 is None:
            m0 = cfg.magmoms if cfg.magmoms is not None else self.landau_minimum(cfg)
        m0 = self.check_configuration(cfg, m0)
        types = cfg.types
        nl = self.neighbor_list(cfg)
        p = self._pairs(nl, types)
        a = self.landau_a(types, self._density(p, n))
        b = self.site["landau_b"][types]
        Jmat = csr_matrix((p["J"], (p["i"], p["j"])), shape=(n, n))  # duplicates (images) summed
        if bounds is None:
            lo, hi = np.full(n, -np.inf), np.full(n, np.inf)
        else:
            bb = np.asarray(bounds, dtype=float)
            bb = np.broadcast_to(bb, (n, 2)) if bb.shape == (2,) else bb
            if bb.shape != (n, 2) or np.any(bb[:, 0] > bb[:, 1]):
                raise InputError(f"bounds must be (lo, hi) or shape ({n}, 2) with lo <= hi",
                                 field="bounds")
            lo, hi = bb[:, 0].copy(), bb[:, 1].copy()
        m = np.clip(m0, lo, hi)

        def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
            x2 = x * x
            Jx = Jmat @ x
            return (float(np.sum(a * x2 + b * x2 * x2) - 0.5 * x @ Jx),
                    2.0 * a * x + 4.0 * b * x2 * x - Jx)

        def projected(x: np.ndarray, grad: np.ndarray) -> np.ndarray:
            g = grad.copy()
            g[(x <= lo) & (g > 0)] = 0.0
            g[(x >= hi) & (g < 0)] = 0.0
            return g

        res = minimize(fun, m, jac=True, method="L-BFGS-B",
                       bounds=None if bounds is None else list(zip(lo, hi, strict=True)),
                       options={"maxiter": max_iter, "ftol": 1e-16, "gtol": 0.1 * tol, "maxcor": 20})
        m = np.clip(res.x, lo, hi)
        # Newton polish on the free atoms: the Hessian diag(2a + 12 b m²) − J is sparse and cheap,
        # and L-BFGS-B's stopping rule is relative to the energy, not to tol.
        from scipy.sparse import diags
        from scipy.sparse.linalg import spsolve
        for _ in range(20):
            e, grad = fun(m)
            g = projected(m, grad)
            if np.max(np.abs(g)) <= tol:
                break
            free = ~(((m <= lo) & (grad > 0)) | ((m >= hi) & (grad < 0)))
            H = (diags(2.0 * a + 12.0 * b * m * m) - Jmat).tocsr()[free][:, free]
            step = np.zeros(n)
            step[free] = spsolve(H.tocsc(), grad[free])
            # accept only descent steps (the quartic is not convex everywhere)
            trial = np.clip(m - step, lo, hi)
            if not fun(trial)[0] <= e + 1e-14 * max(1.0, abs(e)):
                break
            m = trial
        return m

    # ------------------------------------------------------------------ labelling
    def label(self, cfg: Configuration, relax: bool = False, magmoms: np.ndarray | None = None,
              tol: float = 1e-6) -> Configuration:
        """A copy of ``cfg`` with energy, forces, virial, site energies and ∂E/∂m from this model.

        The moments are ``magmoms``, else ``cfg.magmoms``; with ``relax`` they are first
        relaxed (starting there, or at the Landau minimum when there are none) and the
        copy carries the relaxed moments. Non-periodic configurations get no virial,
        as in ``mmtp efs``.
        """
        out = cfg.copy()
        m = self.check_configuration(cfg, magmoms, required=not relax)
        if relax:
            m = self.relax_moments(cfg, m0=m, tol=tol)
        out.magmoms = m
        res = self.evaluate(out)
        out.energy = res["energy"]
        out.site_energies = res["site_energies"]
        out.forces = res["forces"]
        out.virial = res["virial"] if cfg.pbc.all() else None
        out.magnetic_gradient = res["magnetic_gradient"]
        out.nbh_grades = None
        out.features = dict(out.features)
        out.features["EFS_by"] = EFS_BY
        return out

    def __call__(self, cfg: Configuration) -> Configuration:
        """Oracle interface: ``model(cfg)`` is ``model.label(cfg)`` (moments as given)."""
        return self.label(cfg)

    def summary(self) -> dict:
        return {"kind": "analytic model", "species": list(self.species), "cutoff": self.cutoff,
                "taper_start": self.taper_start, "description": self.description}


def _dataclass_from(cls: type, values: dict, where: str, source: str | None):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"unknown parameter(s) {unknown}; known: {sorted(known)}", path=source,
                         field=where)
    kwargs = {}
    for key, value in values.items():
        try:
            kwargs[key] = float(value)
        except (TypeError, ValueError):
            raise InputError(f"{key} must be a number, got {value!r}", path=source,
                             field=where) from None
        if not math.isfinite(kwargs[key]):
            raise InputError(f"{key} must be finite, got {value!r}", path=source, field=where)
    return cls(**kwargs)


# Short alias used by the CLI and the active-learning oracle.
FeAlModel = AnalyticMagneticModel
