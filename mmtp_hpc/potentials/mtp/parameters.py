"""`MTPPotential`: the parameters and tables of a (magnetic) Moment Tensor Potential.

Model (spec §2, MLIP-3 compatible)::

    E_i   = s[z_i] + Σ_α ξ_α B_α(i)
    Q_k(r)= scaling · T_k((2r − R_min − R_cut)/(R_cut − R_min)) · (R_cut − r)²
    ψ_b(m)= T_b((2m − m_min[z] − m_max[z])/(m_max[z] − m_min[z]))
    f_μ   = Σ_{k,b,c} C[z_i, z_j, μ, k, b, c] Q_k(r) ψ_b(m_i) ψ_c(m_j)
    M_s   = Σ_j f_μ r̂_x^a r̂_y^b r̂_z^c                 (rows of alpha_index_basic)
    M_k  += w M_i M_j                                   (rows of alpha_index_times)
    B_α   = M[alpha_moment_mapping[α]]

The magnetic interval is per species (``mag_min``/``mag_max`` of shape (C,));
MLIP-3's single interval is the case of equal entries. A non-magnetic
potential has ``mag_basis_size == 1`` and ψ ≡ 1.

Parameter vector θ (MLIP-3 order, spec §2): radial coefficients flattened
from shape (C, C, K, R, M, M), then species coefficients (C,), then moment
coefficients ξ (n_basis,).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from mmtp_hpc.errors import InputError


_MAX_TENSOR_RANK = 32
# Å: far beyond any interatomic potential's range; a larger max_dist is a damaged file
MAX_CUTOFF = 100.0
_MAX_COUNT = {"species_count": 128, "radial_funcs_count": 10_000, "radial_basis_size": 1_000,
              "mag_basis_size": 100, "alpha_moments_count": 10_000_000}


@dataclass
class MTPPotential:
    species_count: int
    min_dist: float
    max_dist: float
    radial_basis_size: int
    radial_funcs_count: int
    alpha_index_basic: np.ndarray          # (n_basic, 4) int: μ, a, b, c
    alpha_index_times: np.ndarray          # (n_times, 4) int: i, j, w, k
    alpha_moment_mapping: np.ndarray       # (n_basis,) int
    alpha_moments_count: int
    radial_coeffs: np.ndarray | None = None   # (C, C, K, R, M, M); None = untrained
    species_coeffs: np.ndarray | None = None  # (C,)
    moment_coeffs: np.ndarray | None = None   # (n_basis,)
    scaling: float = 1.0
    magnetic: bool = False
    mag_basis_size: int = 1
    mag_min: np.ndarray | None = None         # (C,) μB
    mag_max: np.ndarray | None = None         # (C,) μB
    symmetric: bool = False                   # evaluate ½[E(M) + E(−M)]
    potential_name: str = "MTP1m"
    potential_tag: str = ""
    version: str = "1.1.0"
    species_names: list[str] | None = None    # chemical symbols for types 0..C-1
    radial_basis_type: str = "RBChebyshev"
    magnetic_basis_type: str = "BChebyshev"
    active_set: object | None = None          # raw MLIP-3 #MVS block (bytes) or parsed
    extra: dict = field(default_factory=dict)  # unknown-but-kept metadata

    def __post_init__(self) -> None:
        self.alpha_index_basic = np.ascontiguousarray(self.alpha_index_basic, dtype=np.int64).reshape(-1, 4)
        self.alpha_index_times = np.ascontiguousarray(self.alpha_index_times, dtype=np.int64).reshape(-1, 4)
        self.alpha_moment_mapping = np.ascontiguousarray(self.alpha_moment_mapping, dtype=np.int64).reshape(-1)
        C = self.species_count
        if not self.magnetic:
            self.mag_basis_size = 1
        if self.magnetic and (self.mag_min is None or self.mag_max is None):
            raise InputError("magnetic potential needs a magnetic interval (mag_min, mag_max)")
        if self.mag_min is not None:
            self.mag_min = np.broadcast_to(np.asarray(self.mag_min, dtype=np.float64), (C,)).copy()
            self.mag_max = np.broadcast_to(np.asarray(self.mag_max, dtype=np.float64), (C,)).copy()
        if self.radial_coeffs is not None:
            self.radial_coeffs = np.ascontiguousarray(self.radial_coeffs, dtype=np.float64).reshape(self.radial_shape)
        if self.species_coeffs is not None:
            self.species_coeffs = np.ascontiguousarray(self.species_coeffs, dtype=np.float64).reshape(C)
        if self.moment_coeffs is not None:
            self.moment_coeffs = np.ascontiguousarray(self.moment_coeffs, dtype=np.float64).reshape(self.n_basis)
        self.validate()

    # ------------------------------------------------------------ sizes
    @property
    def n_basis(self) -> int:
        """Number of basis functions B_α (MLIP-3's alpha_scalar_moments)."""
        return len(self.alpha_moment_mapping)

    @property
    def radial_shape(self) -> tuple[int, int, int, int, int, int]:
        C, K, R, M = self.species_count, self.radial_funcs_count, self.radial_basis_size, self.mag_basis_size
        return (C, C, K, R, M, M)

    @property
    def n_radial_params(self) -> int:
        return int(np.prod(self.radial_shape))

    @property
    def n_params(self) -> int:
        return self.n_radial_params + self.species_count + self.n_basis

    @property
    def cutoff(self) -> float:
        return float(self.max_dist)

    @property
    def trained(self) -> bool:
        return self.radial_coeffs is not None and self.moment_coeffs is not None

    @property
    def level(self) -> int:
        """Highest level of a basis function (lev{μ,a,b,c} = 2 + 4μ + a + b + c)."""
        lev = np.zeros(self.alpha_moments_count, dtype=np.int64)
        basic = self.alpha_index_basic
        lev[: len(basic)] = 2 + 4 * basic[:, 0] + basic[:, 1:].sum(axis=1)
        for i, j, _w, k in self.alpha_index_times:
            lev[k] = lev[i] + lev[j]
        return int(lev[self.alpha_moment_mapping].max()) if self.n_basis else 0

    @property
    def global_interval(self) -> bool:
        """True when all species share one magnetic interval (MLIP-3 files)."""
        return self.mag_min is None or (np.all(self.mag_min == self.mag_min[0]) and
                                        np.all(self.mag_max == self.mag_max[0]))

    # ------------------------------------------------------------ parameters
    def get_params(self) -> np.ndarray:
        """θ in MLIP-3 order (radial, species, moment coefficients)."""
        self.require_trained()
        return np.concatenate([self.radial_coeffs.ravel(), self.species_coeffs, self.moment_coeffs])

    def set_params(self, theta: np.ndarray) -> None:
        theta = np.asarray(theta, dtype=np.float64)
        if theta.shape != (self.n_params,):
            raise ValueError(f"expected {self.n_params} parameters, got shape {theta.shape}")
        nr, C = self.n_radial_params, self.species_count
        self.radial_coeffs = theta[:nr].reshape(self.radial_shape).copy()
        self.species_coeffs = theta[nr:nr + C].copy()
        self.moment_coeffs = theta[nr + C:].copy()

    def require_trained(self) -> None:
        if not self.trained:
            raise InputError("potential has no radial_coeffs/moment_coeffs (untrained template); "
                             "call init_default_params() or train it first")

    def init_default_params(self, missing_only: bool = False) -> None:
        """MLIP-3's defaults for an untrained potential (spec §3.1).

        As MLIP-3's ``MLMTPR::Load`` (mlip-3 ``src/mtpr.cpp``) sets them when a file
        has no ``radial_coeffs`` / no ``species_coeffs``:

        * radial: ``C[zi, zj, μ, k, b, c] = 1e-6 + μ·1e-7 + k·1e-7`` for every
          magnetic channel (b, c), then on the "diagonal" k = μ
          ``C[zi, zj, μ, μ, b, c] = 1e-3·(pair + 1) + μ·1e-4`` with
          pair = zi·C + zj, again for every (b, c). (MLIP-3 writes index
          ``min(μ, R)``; for μ ≥ R that lands outside row μ and is overwritten or
          out of bounds, so no diagonal entry is set there.)
        * linear: all species coefficients and all moment coefficients 1e-3.

        With ``missing_only`` only the parts that are ``None`` are set (MLIP-3
        treats the radial and the linear coefficients independently).
        """
        C, K, R = self.species_count, self.radial_funcs_count, self.radial_basis_size
        if not missing_only or self.radial_coeffs is None:
            rc = np.empty(self.radial_shape)
            mu = np.arange(K)[:, None]
            k = np.arange(R)[None, :]
            base = 1e-6 + mu * 1e-7 + k * 1e-7
            rc[...] = base[None, None, :, :, None, None]
            for zi in range(C):
                for zj in range(C):
                    pair = zi * C + zj
                    for m in range(min(K, R)):
                        rc[zi, zj, m, m, :, :] = 1e-3 * (pair + 1) + m * 1e-4
            self.radial_coeffs = rc
        if not missing_only or self.species_coeffs is None or self.moment_coeffs is None:
            self.species_coeffs = np.full(C, 1e-3)
            self.moment_coeffs = np.full(self.n_basis, 1e-3)

    # ------------------------------------------------------------ checks
    def validate(self) -> None:
        C = self.species_count
        if C < 1:
            raise InputError(f"species_count must be >= 1, got {C}")
        if not (0 <= self.min_dist < self.max_dist):
            raise InputError(f"need 0 <= min_dist < max_dist, got {self.min_dist}, {self.max_dist}")
        if self.max_dist > MAX_CUTOFF:
            raise InputError(f"max_dist = {self.max_dist:g} Å: an interatomic cutoff is at most "
                             f"{MAX_CUTOFF:g} Å")
        # the kernels size all scratch from C, K, R, M (any size); they need each to be >= 1
        if self.radial_basis_size < 1:
            raise InputError(f"radial basis_size must be >= 1, got {self.radial_basis_size}")
        if self.radial_funcs_count < 1:
            raise InputError(f"radial_funcs_count must be >= 1, got {self.radial_funcs_count}")
        basic, times, mapping = self.alpha_index_basic, self.alpha_index_times, self.alpha_moment_mapping
        if len(basic) and (basic[:, 0].max() >= self.radial_funcs_count or basic.min() < 0):
            raise InputError("alpha_index_basic refers to a radial function >= radial_funcs_count")
        # sizes a kernel can hold (MLIP-3's largest level, 28, has tensor ranks a + b + c <= 26):
        # checked before anything is allocated from them
        if len(basic) and basic[:, 1:].sum(axis=1).max() > _MAX_TENSOR_RANK:
            raise InputError(f"alpha_index_basic asks for a tensor of rank {int(basic[:, 1:].sum(axis=1).max())} "
                             f"(at most {_MAX_TENSOR_RANK})")
        sizes = {"species_count": C, "radial_funcs_count": self.radial_funcs_count,
                 "radial_basis_size": self.radial_basis_size, "mag_basis_size": self.mag_basis_size,
                 "alpha_moments_count": self.alpha_moments_count}
        for name, value in sizes.items():
            if value > _MAX_COUNT[name]:
                raise InputError(f"{name} = {value} is beyond what a potential can have (at most "
                                 f"{_MAX_COUNT[name]})")
        if self.n_radial_params > 10 ** 8:
            raise InputError(f"{self.n_radial_params} radial coefficients: beyond what a potential can have")
        if len(times):
            if times[:, [0, 1, 3]].max() >= self.alpha_moments_count or times.min() < 0:
                raise InputError("alpha_index_times refers to a moment >= alpha_moments_count")
            if np.any(times[:, 3] < len(basic)):
                raise InputError("alpha_index_times writes into a basic moment")
        if len(mapping) and (mapping.max() >= self.alpha_moments_count or mapping.min() < 0):
            raise InputError("alpha_moment_mapping refers to a moment >= alpha_moments_count")
        if self.magnetic:
            if self.mag_basis_size < 1:
                raise InputError("magnetic basis_size must be >= 1")
            if np.any(self.mag_max <= self.mag_min):
                raise InputError("magnetic interval needs max_val > min_val")

    def copy(self) -> "MTPPotential":
        return copy.deepcopy(self)

    def summary(self) -> dict:
        out = {
            "level": self.level, "species_count": self.species_count,
            "species_names": self.species_names,
            "radial_basis_size": self.radial_basis_size, "radial_funcs_count": self.radial_funcs_count,
            "min_dist": self.min_dist, "max_dist": self.max_dist, "scaling": self.scaling,
            "magnetic": self.magnetic, "mag_basis_size": self.mag_basis_size,
            "n_basic": len(self.alpha_index_basic), "n_times": len(self.alpha_index_times),
            "n_basis": self.n_basis, "n_params": self.n_params, "trained": self.trained,
            "symmetric": self.symmetric, "active_set": self.active_set is not None,
        }
        if self.magnetic:
            out["mag_min"] = self.mag_min.tolist()
            out["mag_max"] = self.mag_max.tolist()
        return out
