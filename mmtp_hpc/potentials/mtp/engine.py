"""`MTPEngine`: evaluates an `MTPPotential` on configurations with the Cython kernels.

Two levels of API:

- :meth:`MTPEngine.evaluate` / :meth:`MTPEngine.param_gradients` / :meth:`MTPEngine.jacobians`
  take a :class:`~mmtp_hpc.system.configuration.Configuration` and return the same
  dictionary keys as ``reference.evaluate`` (energy, site_energies, forces, virial
  (eV, PlusStress), stress (GPa, ASE sign), magnetic_gradient (+∂E/∂m), basis, …).
- :meth:`MTPEngine.compute_local` works on a prepared local+ghost neighbour list and
  returns per-entry (local and ghost) forces and ∂E/∂m before they are folded onto
  owners: the MD driver and the MPI halo exchange use it.

Threads: the kernels use OpenMP over atoms with ``num_threads`` threads (default:
``OMP_NUM_THREADS`` if set, else 1 — one thread per MPI rank unless asked).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np

from mmtp_hpc.errors import InputError
from mmtp_hpc.potentials.mtp.kernels import kernels as _kernels
from mmtp_hpc.potentials.mtp.parameters import MTPPotential
from mmtp_hpc.system.configuration import EV_PER_A3_TO_GPA, Configuration
from mmtp_hpc.system.neighbors import NeighborList, build_neighbor_list


class MagneticRangeWarning(UserWarning):
    """A moment lies outside the potential's magnetic interval (evaluated anyway, unclamped)."""


def default_threads() -> int:
    value = os.environ.get("OMP_NUM_THREADS", "1")
    try:
        return max(1, int(value.split(",")[0]))
    except ValueError:
        return 1


@dataclass
class LocalResult:
    """Per-entry results on a local+ghost layout (ghost contributions not yet folded)."""

    site_energies: np.ndarray      # (n_local,)
    forces: np.ndarray | None      # (n_total, 3)
    magnetic_gradient: np.ndarray | None  # (n_total,)
    virial: np.ndarray | None      # (3, 3)
    basis: np.ndarray | None       # (n_local, n_basis)



def aligned_zeros(shape: tuple[int, int]) -> np.ndarray:
    """Zeros of ``shape`` (float64, C order) whose data starts on a 64-byte cache line: the
    Monte Carlo kernels load rows 32 bytes at a time, and an aligned start keeps those loads
    from splitting cache lines (a row of 2·130 doubles is a multiple of 32 bytes)."""
    n = int(np.prod(shape))
    raw = np.zeros(n + 8)
    skip = (-raw.ctypes.data % 64) // 8
    return raw[skip:skip + n].reshape(shape)

class MTPEngine:
    """Fast evaluation of one potential (tables are prepared once, coefficients read per call)."""

    def __init__(self, pot: MTPPotential, num_threads: int | None = None, skin: float = 0.0):
        pot.require_trained()
        self.pot = pot
        self.num_threads = default_threads() if num_threads is None else int(num_threads)
        self.skin = float(skin)
        basic = pot.alpha_index_basic
        times = pot.alpha_index_times
        times = times[product_order(times[:, [0, 1, 3]], int(pot.alpha_moments_count))]
        self._structure = {
            "basic": np.ascontiguousarray(basic, dtype=np.int32),
            "times": np.ascontiguousarray(times[:, [0, 1, 3]], dtype=np.int32).reshape(-1, 3),
            "weights": np.ascontiguousarray(times[:, 2], dtype=np.float64),
            "mapping": np.ascontiguousarray(pot.alpha_moment_mapping, dtype=np.int32),
            "n_moments": int(pot.alpha_moments_count),
        }
        self._structure.update(monomial_tables(basic, pot.radial_funcs_count))
        # spin-symmetrised evaluation in one neighbour pass where the magnetic intervals allow it
        # (see one_pass_symmetric); False forces the two-pass path (tests, benchmarks)
        self.symmetric_one_pass = True

    # ------------------------------------------------------------------ tables
    def tables(self) -> dict:
        """Kernel tables; coefficients are read from the potential on every call (training
        changes them in place)."""
        pot = self.pot
        C = pot.species_count
        tab = dict(self._structure)
        tab.update(
            C=C, K=pot.radial_funcs_count, R=pot.radial_basis_size, M=pot.mag_basis_size,
            rmin=float(pot.min_dist), rcut=float(pot.max_dist), scaling=float(pot.scaling),
            coeffs=np.ascontiguousarray(pot.radial_coeffs, dtype=np.float64).ravel(),
            species=np.ascontiguousarray(pot.species_coeffs, dtype=np.float64),
            moment=np.ascontiguousarray(pot.moment_coeffs, dtype=np.float64),
            mag_min=np.ascontiguousarray(pot.mag_min if pot.magnetic else np.zeros(C), dtype=np.float64),
            mag_max=np.ascontiguousarray(pot.mag_max if pot.magnetic else np.ones(C), dtype=np.float64),
        )
        return tab

    # ------------------------------------------------------------------ checks
    def check_configuration(self, cfg: Configuration, magmoms: np.ndarray | None) -> np.ndarray:
        """Validate types, finiteness and moments; return the moments to use (N,)."""
        pot = self.pot
        n = len(cfg)
        if not np.all(np.isfinite(cfg.positions)):
            bad = int(np.argwhere(~np.isfinite(cfg.positions))[0, 0])
            raise InputError(f"position of atom {bad} is not finite")
        if not np.all(np.isfinite(cfg.cell)):
            raise InputError("cell is not finite")
        if n and (cfg.types.min() < 0 or cfg.types.max() >= pot.species_count):
            raise InputError(f"configuration has atom types {sorted(set(cfg.types.tolist()))} but the "
                             f"potential has {pot.species_count} species (types 0..{pot.species_count - 1})")
        if magmoms is None:
            magmoms = cfg.magmoms
        if magmoms is None:
            if pot.magnetic:
                raise InputError("magnetic potential applied to a configuration without magnetic "
                                 "moments; give moments (a value, or relax them)")
            return np.zeros(n)
        magmoms = np.ascontiguousarray(magmoms, dtype=np.float64).reshape(n)
        if not np.all(np.isfinite(magmoms)):
            raise InputError(f"magnetic moment of atom {int(np.argwhere(~np.isfinite(magmoms))[0, 0])} "
                             "is not finite")
        if pot.magnetic and n:
            lo, hi = pot.mag_min[cfg.types], pot.mag_max[cfg.types]
            outside = (magmoms < lo) | (magmoms > hi)
            if np.any(outside):
                k = int(np.argmax(outside))
                warnings.warn(f"{int(outside.sum())} moment(s) outside the potential's magnetic interval, "
                              f"e.g. atom {k}: m = {magmoms[k]:.4g} not in [{lo[k]:.4g}, {hi[k]:.4g}] "
                              "(evaluated without clamping, as MLIP-3 does)",
                              MagneticRangeWarning, stacklevel=3)
        return magmoms

    def neighbor_list(self, cfg: Configuration) -> NeighborList:
        return build_neighbor_list(cfg.cell, cfg.pbc, cfg.positions, self.pot.cutoff, self.skin)

    # ------------------------------------------------------------------ symmetrisation
    def one_pass_symmetric(self) -> bool:
        """Whether ½[E(M) + E(−M)] can be evaluated in one neighbour pass.

        Needs a magnetic potential whose magnetic interval is symmetric for every species
        (m_min = −m_max exactly): then ψ_b(−m) = (−1)^b ψ_b(m), and E(−M) is the same model with
        coefficients (−1)^(b+c) C[…, b, c] (``_kernels.site_terms_symmetric``). Otherwise the
        symmetrised quantities take two passes (M and −M).
        """
        pot = self.pot
        if not (self.symmetric_one_pass and pot.magnetic and pot.mag_basis_size > 1):
            return False
        lo = np.asarray(pot.mag_min, dtype=np.float64)
        hi = np.asarray(pot.mag_max, dtype=np.float64)
        return bool(np.all(lo == -hi))

    # ------------------------------------------------------------------ local layout
    def compute_local(self, nl: NeighborList, types_all: np.ndarray, magmoms_all: np.ndarray,
                      derivatives: bool | str = True, basis: bool = False,
                      symmetric: bool = False, basic_out: np.ndarray | None = None) -> LocalResult:
        """Site energies of the n_local centres, and per-entry forces/∂E/∂m and the virial.

        ``derivatives="magnetic"``: per-entry ∂E/∂m alone (forces and virial None), for
        evaluations that need no forces (the moment relaxation's trial points).

        ``symmetric`` (magnetic potentials): the same quantities of ½[E(M) + E(−M)]
        (∂E/∂m = ½[g(M) − g(−M)]), in one neighbour pass when :meth:`one_pass_symmetric`,
        else by two passes. ``basic_out`` (:meth:`metropolis_cache` of the same ``symmetric``;
        None where that is None) receives every centre's basic moments.
        """
        magnetic_only = derivatives == "magnetic"
        if magnetic_only and not self.pot.magnetic:
            return LocalResult(self.compute_local(nl, types_all, magmoms_all, False, basis, symmetric,
                                                  basic_out).site_energies, None, np.zeros(nl.n_total), None,
                               None)
        if symmetric and self.pot.magnetic:
            if not self.one_pass_symmetric():
                if basic_out is not None:
                    raise ValueError("basic_out: no Monte Carlo cache for two-pass symmetrisation")
                plus = self.compute_local(nl, types_all, magmoms_all, derivatives, basis)
                minus = self.compute_local(nl, types_all, -np.asarray(magmoms_all, dtype=np.float64),
                                           derivatives, basis)
                return combine_symmetric_local(plus, minus)
        else:
            symmetric = False
        n_local, n_total, n_pairs = nl.n_local, nl.n_total, nl.n_pairs
        pos = np.ascontiguousarray(nl.positions, dtype=np.float64)
        types_all = np.ascontiguousarray(types_all, dtype=np.int32)
        mag = np.ascontiguousarray(magmoms_all, dtype=np.float64)
        offsets = np.ascontiguousarray(nl.offsets, dtype=np.int64)
        nbrs = np.ascontiguousarray(nl.neighbors, dtype=np.int64)
        site = np.zeros(n_local)
        pair_grad = np.zeros((n_pairs if derivatives and not magnetic_only else 0, 3))
        pair_dmj = np.zeros(n_pairs if derivatives else 0)
        dmi = np.zeros(n_local if derivatives else 0)
        basis_out = np.zeros((n_local if basis else 0, self.pot.n_basis))
        kernel = _kernels.site_terms_symmetric if symmetric else _kernels.site_terms
        kernel(self.tables(), pos, types_all, mag, offsets, nbrs, n_local, site,
               pair_grad, pair_dmj, dmi, basis_out, bool(derivatives), basis, self.num_threads, basic_out,
               magnetic_only)
        if not derivatives:
            return LocalResult(site, None, None, None, basis_out if basis else None)
        if magnetic_only:
            dedm = np.bincount(nbrs[:n_pairs], weights=pair_dmj, minlength=n_total)
            dedm[:n_local] += dmi
            return LocalResult(site, None, dedm, None, basis_out if basis else None)
        forces = np.zeros((n_total, 3))
        dedm = np.zeros(n_total)
        virials = np.zeros((1, 3, 3))
        _kernels.scatter_pairs_grouped(pos, offsets, nbrs, pair_grad, pair_dmj, dmi,
                                       np.zeros(n_local, dtype=np.int64), forces, dedm, virials)
        virial = virials[0]
        return LocalResult(site, forces, dedm if self.pot.magnetic else np.zeros(n_total), virial,
                           basis_out if basis else None)

    def site_energies_of(self, nl: NeighborList, types_all: np.ndarray, magmoms_all: np.ndarray,
                         centers: np.ndarray, symmetric: bool = False) -> np.ndarray:
        """E_i of the listed local centres only (no derivatives), e.g. for Monte Carlo ΔE.

        A change of moment of atom i changes E_i and E_k of every centre k that has i (or
        one of its images) as a neighbour; only those need re-evaluation. ``symmetric``
        (magnetic potentials): ½[E_i(M) + E_i(−M)] (one pass when :meth:`one_pass_symmetric`).
        """
        centers = np.ascontiguousarray(centers, dtype=np.int64)
        mag = np.ascontiguousarray(magmoms_all, dtype=np.float64)
        symmetric = bool(symmetric and self.pot.magnetic)
        one_pass = symmetric and self.one_pass_symmetric()
        out = np.zeros(len(centers))
        args = (self.tables(), np.ascontiguousarray(nl.positions, dtype=np.float64),
                np.ascontiguousarray(types_all, dtype=np.int32))
        rest = (np.ascontiguousarray(nl.offsets, dtype=np.int64),
                np.ascontiguousarray(nl.neighbors, dtype=np.int64), centers)
        _kernels.site_energies_of(*args, mag, *rest, out, one_pass)
        if symmetric and not one_pass:
            neg = np.zeros(len(centers))
            _kernels.site_energies_of(*args, -mag, *rest, neg)
            out = 0.5 * (out + neg)
        return out

    def metropolis_cache(self, n_centres: int, symmetric: bool = False) -> np.ndarray | None:
        """The per-centre cache of :meth:`metropolis` (the basic moments of every coefficient set),
        or None where the kernels cannot sweep (symmetrised with asymmetric intervals: two passes)."""
        symmetric = bool(symmetric and self.pot.magnetic)
        if symmetric and not self.one_pass_symmetric():
            return None
        tab = self._structure
        width = (2 if symmetric else 1) * len(tab["basic"])
        return aligned_zeros((n_centres, width))

    @staticmethod
    def metropolis_maps(nl: NeighborList, entry_owner: np.ndarray, n_atoms: int) -> tuple:
        """(centres, offsets, pairs), in one pass over ``nl``'s pairs at its current positions: the
        centres of ``nl`` whose energy depends on the moment of each atom a < ``n_atoms`` (a itself,
        and every centre with an entry ``j`` inside the cutoff where ``entry_owner[j] == a``),
        ascending, atom a's being centres[offsets[a]:offsets[a + 1]] (the ``affected_centres``/
        ``affected_offsets`` maps of :meth:`metropolis`); and the pair terms each move changes
        (its ``pairs``), which the calls of one step (one per sector in a parallel sweep) share.
        O(pairs)."""
        return _kernels.metropolis_maps(
            np.ascontiguousarray(nl.positions, dtype=np.float64), np.ascontiguousarray(nl.offsets, dtype=np.int64),
            np.ascontiguousarray(nl.neighbors, dtype=np.int64), nl.n_local,
            np.ascontiguousarray(entry_owner, dtype=np.int64), int(n_atoms), float(nl.cutoff))

    def metropolis(self, nl: NeighborList, types_all: np.ndarray, magmoms_all: np.ndarray, maps: dict,
                   moves: np.ndarray, draws: np.ndarray, col: int, lo: np.ndarray, hi: np.ndarray,
                   flip_fraction: float, max_change: float, beta: float, magmoms: np.ndarray,
                   site_energies: np.ndarray, cache: np.ndarray, init: int, symmetric: bool = False,
                   incremental: bool = True, trial_delta: np.ndarray | None = None,
                   pairs: tuple | None = None, touched: np.ndarray | None = None) -> int:
        """Metropolis moment moves of the atoms ``moves`` in the kernels (``_kernels.metropolis_moves``:
        no Python per trial; a trial updates only the pair terms and site energies it changes).

        ``nl``'s centres are the sites whose energies ``site_energies`` (n_local,) and ``cache``
        (:meth:`metropolis_cache`) hold; ``magmoms_all`` (n_total,) are the per-entry moments,
        changed in place with ``magmoms`` (per atom). ``maps``: ``entry_owner`` (n_total,),
        ``image_entries``/``image_offsets`` (entries of each atom) and ``affected_centres``/
        ``affected_offsets`` (centres whose energy depends on each atom, the atom included).
        ``init``: 1 fills ``cache`` and ``site_energies`` first; 0: they are current (e.g.
        :meth:`compute_local`'s ``basic_out`` and site energies on ``nl``). ``pairs``: those of :meth:`metropolis_maps`
        on the same list and maps (the calls of one step share them; found per call when None).
        ``touched`` (n_local,) uint8: set to 1 for the centres whose cache row and energy an
        accepted move changed. Returns the number of accepted moves."""
        symmetric = bool(symmetric and self.pot.magnetic)
        i64 = lambda a: np.ascontiguousarray(a, dtype=np.int64)  # noqa: E731
        f64 = lambda a: np.ascontiguousarray(a, dtype=np.float64)  # noqa: E731
        delta = np.zeros(0) if trial_delta is None else trial_delta
        return int(_kernels.metropolis_moves(
            self.tables(), f64(nl.positions), np.ascontiguousarray(types_all, dtype=np.int32), magmoms_all,
            i64(nl.offsets), i64(nl.neighbors), nl.n_local, i64(maps["entry_owner"]),
            i64(maps["image_entries"]), i64(maps["image_offsets"]), i64(maps["affected_centres"]),
            i64(maps["affected_offsets"]), i64(moves), f64(draws), int(col), f64(lo), f64(hi),
            float(flip_fraction), float(max_change), float(beta), magmoms, site_energies, cache,
            int(init), symmetric, bool(incremental), delta, pairs, touched))

    # ------------------------------------------------------------------ configurations
    def evaluate(self, cfg: Configuration, magmoms: np.ndarray | None = None, *,
                 derivatives: bool = True, basis: bool = False, symmetric: bool | None = None,
                 nl: NeighborList | None = None) -> dict:
        """Energy, site energies, and (with ``derivatives``) forces, virial, stress, ∂E/∂m.

        ``symmetric`` (default: the potential's flag) gives ½[E(M) + E(−M)] and its derivatives.
        """
        mag = self.check_configuration(cfg, magmoms)
        symmetric = self.pot.symmetric if symmetric is None else symmetric
        nl = self.neighbor_list(cfg) if nl is None else nl
        types_all = cfg.types[nl.image_of]
        if symmetric and self.pot.magnetic and self.one_pass_symmetric():
            return self._fold(nl, self.compute_local(nl, types_all, mag[nl.image_of], derivatives, basis,
                                                     symmetric=True), cfg)
        out = self._fold(nl, self.compute_local(nl, types_all, mag[nl.image_of], derivatives, basis), cfg)
        if symmetric and self.pot.magnetic:
            neg = self._fold(nl, self.compute_local(nl, types_all, -mag[nl.image_of], derivatives, basis),
                             cfg)
            out = combine_symmetric(out, neg)
        return out

    def _fold(self, nl: NeighborList, res: LocalResult, cfg: Configuration) -> dict:
        n = nl.n_local
        out = {"site_energies": res.site_energies, "energy": float(res.site_energies.sum())}
        if res.basis is not None:
            out["basis"] = res.basis
        if res.forces is not None:
            forces = np.empty((n, 3))
            for d in range(3):
                forces[:, d] = np.bincount(nl.image_of, weights=res.forces[:, d], minlength=n)
            out["forces"] = forces
            out["magnetic_gradient"] = np.bincount(nl.image_of, weights=res.magnetic_gradient, minlength=n)
            out["virial"] = res.virial
            volume = cfg.volume
            out["stress"] = (-res.virial / volume * EV_PER_A3_TO_GPA) if volume > 0 else np.full((3, 3), np.nan)
        return out

    # ------------------------------------------------------------------ parameter gradients
    def param_one_pass(self) -> bool:
        """Whether symmetrised parameter gradients take one neighbour pass
        (:meth:`one_pass_symmetric`)."""
        return self.one_pass_symmetric()

    def param_gradients(self, cfg: Configuration, magmoms: np.ndarray | None = None, *,
                        site: bool = True, tangent: tuple | None = None,
                        symmetric: bool | None = None, nl: NeighborList | None = None) -> dict:
        """∂E_i/∂θ (``site_param_grad`` (N, P)) and ∂E/∂θ (``energy_param_grad``); with
        ``tangent=(δpositions (N,3), δstrain (3,3), δmagmoms (N,))`` also the directional
        derivative T (``tangent``) and ∂T/∂θ (``tangent_param_grad``), as in ``reference.evaluate``.
        Symmetrised: one neighbour pass when :meth:`param_one_pass`, else two (M and −M).
        """
        mag = self.check_configuration(cfg, magmoms)
        symmetric = self.pot.symmetric if symmetric is None else symmetric
        nl = self.neighbor_list(cfg) if nl is None else nl
        if symmetric and self.pot.magnetic and self.param_one_pass():
            return self._param_raw(nl, cfg, mag, site, tangent, symmetric=True)
        out = self._param_raw(nl, cfg, mag, site, tangent)
        if symmetric and self.pot.magnetic:
            flipped = None if tangent is None else (tangent[0], tangent[1], -np.asarray(tangent[2]))
            out = combine_symmetric(out, self._param_raw(nl, cfg, -mag, site, flipped))
        return out

    def param_gradients_on_list(self, nl: NeighborList, types_all: np.ndarray, magmoms_all: np.ndarray,
                                symmetric: bool | None = None) -> dict:
        """∂E_i/∂θ of the list's centres from per-entry types and moments (n_total,) — for lists
        whose entries are not images of the centres (MPI halos), where ``image_of`` is the identity."""
        from types import SimpleNamespace

        symmetric = self.pot.symmetric if symmetric is None else symmetric
        entries = SimpleNamespace(types=np.asarray(types_all))
        mag_all = np.asarray(magmoms_all, dtype=np.float64)
        if not np.array_equal(nl.image_of, np.arange(nl.n_total)):
            raise ValueError("param_gradients_on_list needs a list whose image_of is the identity")
        if symmetric and self.pot.magnetic and self.param_one_pass():
            return self._param_raw(nl, entries, mag_all, True, None, symmetric=True)
        out = self._param_raw(nl, entries, mag_all, True, None)
        if symmetric and self.pot.magnetic:
            out = combine_symmetric(out, self._param_raw(nl, entries, -mag_all, True, None))
        return out

    def _param_raw(self, nl: NeighborList, cfg: Configuration, mag: np.ndarray, site: bool,
                   tangent: tuple | None, symmetric: bool = False) -> dict:
        pot = self.pot
        n_local, P = nl.n_local, pot.n_params
        pos = np.ascontiguousarray(nl.positions, dtype=np.float64)
        types_all = np.ascontiguousarray(cfg.types[nl.image_of], dtype=np.int32)
        mag_all = np.ascontiguousarray(mag[nl.image_of], dtype=np.float64)
        offsets = np.ascontiguousarray(nl.offsets, dtype=np.int64)
        nbrs = np.ascontiguousarray(nl.neighbors, dtype=np.int64)
        site_en = np.zeros(n_local)
        site_grad = np.zeros((n_local if site else 0, P))
        threads = max(1, self.num_threads)
        if tangent is not None:
            t_pos_local, t_strain, t_mag = tangent
            t_pos_local = np.asarray(t_pos_local, dtype=np.float64).reshape(n_local, 3)
            t_pos = np.ascontiguousarray(t_pos_local[nl.image_of] + pos @ np.asarray(t_strain).T)
            t_mag_all = np.ascontiguousarray(np.asarray(t_mag, dtype=np.float64).reshape(n_local)[nl.image_of])
            t_site = np.zeros(n_local)
            t_grad = np.zeros((threads, P))
        else:
            t_pos = np.zeros((0, 3))
            t_mag_all = np.zeros(0)
            t_site = np.zeros(0)
            t_grad = np.zeros((0, P))
        args = (self.tables(), pos, types_all, mag_all, offsets, nbrs, n_local, site_en, site_grad, site,
                t_pos, t_mag_all, tangent is not None, t_site, t_grad, threads)
        if symmetric:
            _kernels.param_terms(*args, symmetric=True)
        else:
            _kernels.param_terms(*args)
        out = {"site_energies": site_en, "energy": float(site_en.sum())}
        if site:
            out["site_param_grad"] = site_grad
            out["energy_param_grad"] = site_grad.sum(axis=0)
        if tangent is not None:
            out["tangent"] = float(t_site.sum())
            out["tangent_param_grad"] = t_grad.sum(axis=0)
        return out

    def basis_jacobian(self, cfg: Configuration, magmoms: np.ndarray | None = None, *,
                       symmetric: bool | None = None, nl: NeighborList | None = None) -> dict:
        """The design matrix of the linear coefficients for one configuration.

        ``basis_sum`` (n_basis,) = Σ_i B_α(i) (= ∂E/∂ξ); ``forces`` (N, 3, n_basis) = ∂F/∂ξ;
        ``virial`` (3, 3, n_basis) = ∂S/∂ξ; ``magnetic_gradient`` (N, n_basis) = ∂(∂E/∂m)/∂ξ.
        Species coefficients enter the energy only (∂E/∂s_z = number of atoms of type z).
        """
        mag = self.check_configuration(cfg, magmoms)
        symmetric = self.pot.symmetric if symmetric is None else symmetric
        nl = self.neighbor_list(cfg) if nl is None else nl
        if symmetric and self.pot.magnetic and self.param_one_pass():
            return self._basis_jacobian_raw(nl, cfg, mag, symmetric=True)
        out = self._basis_jacobian_raw(nl, cfg, mag)
        if symmetric and self.pot.magnetic:
            out = combine_symmetric(out, self._basis_jacobian_raw(nl, cfg, -mag))
        return out

    def _basis_jacobian_raw(self, nl: NeighborList, cfg: Configuration, mag: np.ndarray,
                            symmetric: bool = False) -> dict:
        nb, n_total, n = self.pot.n_basis, nl.n_total, nl.n_local
        basis_sum = np.zeros(nb)
        d_forces = np.zeros((n_total, 3, nb))
        d_virial = np.zeros((3, 3, nb))
        d_mag = np.zeros((n_total, nb))
        args = (self.tables(), np.ascontiguousarray(nl.positions, dtype=np.float64),
                np.ascontiguousarray(cfg.types[nl.image_of], dtype=np.int32),
                np.ascontiguousarray(mag[nl.image_of], dtype=np.float64),
                np.ascontiguousarray(nl.offsets, dtype=np.int64),
                np.ascontiguousarray(nl.neighbors, dtype=np.int64), n, basis_sum, d_forces, d_virial, d_mag)
        _kernels.basis_jacobian(*args, symmetric=symmetric)
        forces = np.zeros((n, 3, nb))
        np.add.at(forces, nl.image_of, d_forces)
        magnetic = np.zeros((n, nb))
        np.add.at(magnetic, nl.image_of, d_mag)
        return {"basis_sum": basis_sum, "forces": forces, "virial": d_virial, "magnetic_gradient": magnetic}

    def jacobians(self, cfg: Configuration, magmoms: np.ndarray | None = None,
                  symmetric: bool | None = None) -> dict:
        """∂F/∂θ (N,3,P), ∂S/∂θ (3,3,P) (virial), ∂(∂E/∂m)/∂θ (N,P) by unit tangents."""
        n, P = len(cfg), self.pot.n_params
        nl = self.neighbor_list(cfg)
        zp, zs, zm = np.zeros((n, 3)), np.zeros((3, 3)), np.zeros(n)

        def dT(tp, ts, tm):
            return self.param_gradients(cfg, magmoms, site=False, tangent=(tp, ts, tm),
                                        symmetric=symmetric, nl=nl)["tangent_param_grad"]

        d_forces = np.zeros((n, 3, P))
        for i in range(n):
            for d in range(3):
                tp = zp.copy()
                tp[i, d] = 1.0
                d_forces[i, d] = -dT(tp, zs, zm)
        d_virial = np.zeros((3, 3, P))
        for a in range(3):
            for b in range(3):
                ts = zs.copy()
                ts[a, b] = 1.0
                d_virial[a, b] = -dT(zp, ts, zm)
        d_mag = np.zeros((n, P))
        if self.pot.magnetic:
            for i in range(n):
                tm = zm.copy()
                tm[i] = 1.0
                d_mag[i] = dT(zp, zs, tm)
        return {"forces": d_forces, "virial": d_virial, "magnetic_gradient": d_mag}


def monomial_tables(basic: np.ndarray, n_radial_funcs: int) -> dict:
    """All monomials u_x^a u_y^b u_z^c of degree ≤ the basis' largest a+b+c, ordered by degree.

    Each is its parent times one component (``mono_parent``, ``mono_dir``), its exponents
    (``mono_exp``) and, per component, the monomial with that exponent lowered by one
    (``mono_low``; 0 where the exponent is 0 — multiplied by the zero exponent), and the
    monomial of each basic row (``basic_q``).
    """
    degree = int(basic[:, 1:].sum(axis=1).max()) if len(basic) else 0
    exps = [(a, b, n - a - b) for n in range(degree + 1) for a in range(n, -1, -1) for b in range(n - a, -1, -1)]
    index = {e: q for q, e in enumerate(exps)}
    parent = np.zeros(len(exps), dtype=np.int32)
    direction = np.zeros(len(exps), dtype=np.int32)
    low = np.zeros((len(exps), 3), dtype=np.int32)
    for q, e in enumerate(exps):
        for d in range(3):
            if e[d] > 0:
                lowered = list(e)
                lowered[d] -= 1
                low[q, d] = index[tuple(lowered)]
        if q:
            d = next(d for d in range(3) if e[d] > 0)
            parent[q], direction[q] = low[q, d], d
    basic_q = np.array([index[tuple(int(x) for x in row[1:])] for row in basic], dtype=np.int32)
    # radial function μ needs the monomial prefix 0..mu_len[μ]-1 (monomials are ordered by degree)
    mu_len = np.zeros(max(n_radial_funcs, 1), dtype=np.int32)
    for mu, q in zip(basic[:, 0], basic_q, strict=True):
        mu_len[mu] = max(mu_len[mu], q + 1)
    return {"mu_len": mu_len, "mono_parent": parent, "mono_dir": direction,
            "mono_exp": np.array(exps, dtype=np.int32).reshape(-1, 3), "mono_low": low, "basic_q": basic_q}


def product_order(times: np.ndarray, n_moments: int) -> np.ndarray:
    """Order of the product rows {a, b, k} (M_k += w·M_a·M_b) for the kernels' sweeps.

    In file order most consecutive rows add into the same M_k, so each waits for the previous
    one's store. Here rows are grouped by level (a product of level ℓ has factors of levels
    < ℓ; basic moments are level 0) and, within a level, interleaved round-robin across their
    targets, so consecutive rows are independent. Each M_k still receives its rows in file
    order (the forward sweep gives bit-identical moments), and the reverse of this order is a
    valid reverse sweep (every ∂E/∂M_k is complete before it is used).
    """
    times = np.asarray(times, dtype=np.int64).reshape(-1, 3)
    if len(times) == 0:
        return np.zeros(0, dtype=np.int64)
    level = np.zeros(n_moments, dtype=np.int64)
    for a, b, k in times.tolist():            # file order is a valid order: factors come first
        level[k] = max(level[k], 1 + max(level[a], level[b]))
    k = times[:, 2]
    _, first = np.unique(k, return_index=True)
    first_of = np.zeros(n_moments, dtype=np.int64)
    first_of[k[np.sort(first)]] = np.arange(len(first))
    by_target = np.argsort(k, kind="stable")     # position of each row among its target's rows
    starts = np.searchsorted(k[by_target], k[by_target], side="left")
    rank = np.empty(len(times), dtype=np.int64)
    rank[by_target] = np.arange(len(times)) - starts
    return np.lexsort((first_of[k], rank, level[k]))


def combine_symmetric_local(plus: LocalResult, minus: LocalResult) -> LocalResult:
    """:func:`combine_symmetric` for two :class:`LocalResult` (per-entry, before folding)."""
    def avg(a, b):
        return None if a is None else 0.5 * (a + b)
    grad = None if plus.magnetic_gradient is None else 0.5 * (plus.magnetic_gradient - minus.magnetic_gradient)
    return LocalResult(avg(plus.site_energies, minus.site_energies), avg(plus.forces, minus.forces), grad,
                       avg(plus.virial, minus.virial), avg(plus.basis, minus.basis))


def combine_symmetric(plus: dict, minus: dict) -> dict:
    """½[X(M) + X(−M)] for every quantity; ∂E/∂m picks up the sign of the chain rule."""
    out = {}
    for key, value in plus.items():
        if key == "magnetic_gradient":
            out[key] = 0.5 * (value - minus[key])
        elif isinstance(value, float):
            out[key] = 0.5 * (value + minus[key])
        else:
            out[key] = 0.5 * (np.asarray(value) + np.asarray(minus[key]))
    return out
