"""All of one rank's training configurations as a single local+ghost system: one kernel call.

Training data sets hold many small cells (fe_gap22: 1844 configurations, most with 1–2
atoms), where per-configuration Python calls cost as much as the evaluation itself. The
samples' neighbour lists are concatenated into one layout — every configuration's own atoms
first (in order), then all ghosts — so that one call of the site kernel and one of the
parameter kernel serve all configurations. Per-configuration results (energy, virial, loss
and gradient rows) come from grouped reductions that add a configuration's terms in the same
order whatever else is in the batch, so rank counts give identical rows (see
``parallel.comm.ordered_sum``).
"""

from __future__ import annotations

import numpy as np

from mmtp_hpc.potentials.mtp.kernels import kernels as _kernels
from mmtp_hpc.potentials.mtp.engine import MTPEngine, combine_symmetric

EV_A3_TO_GPA = 160.21766208


class Batch:
    def __init__(self, samples: list, magnetic: bool):
        self.samples = samples
        self.magnetic = magnetic
        K = len(samples)
        n_loc = np.array([s.nl.n_local for s in samples], dtype=np.int64)
        n_gh = np.array([s.nl.n_total - s.nl.n_local for s in samples], dtype=np.int64)
        a_off = np.concatenate([[0], np.cumsum(n_loc)])
        g_off = np.concatenate([[0], np.cumsum(n_gh)])
        N, NG = int(a_off[-1]), int(g_off[-1])
        self.n_local, self.n_total = N, N + NG
        pos = np.empty((N + NG, 3))
        image = np.empty(N + NG, dtype=np.int64)
        group_entry = np.empty(N + NG, dtype=np.int64)
        counts = np.empty(N, dtype=np.int64)
        nbr_blocks = []
        for k, s in enumerate(samples):
            nl = s.nl
            n, ng = nl.n_local, nl.n_total - nl.n_local
            new_index = np.empty(nl.n_total, dtype=np.int64)
            new_index[:n] = a_off[k] + np.arange(n)
            new_index[n:] = N + g_off[k] + np.arange(ng)
            pos[new_index] = nl.positions
            image[new_index] = a_off[k] + nl.image_of
            group_entry[new_index] = k
            counts[a_off[k]:a_off[k + 1]] = np.diff(nl.offsets)
            nbr_blocks.append(new_index[nl.neighbors])
        self.positions = np.ascontiguousarray(pos)
        self.image_of = image
        self.group_entry = group_entry
        self.group = np.ascontiguousarray(group_entry[:N])
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.neighbors = np.ascontiguousarray(np.concatenate(nbr_blocks) if nbr_blocks
                                              else np.zeros(0, dtype=np.int64))
        types = np.concatenate([s.cfg.types for s in samples]) if K else np.zeros(0, dtype=np.int64)
        self.types_all = np.ascontiguousarray(types[image], dtype=np.int32)
        mags = [s.cfg.magmoms if s.cfg.magmoms is not None else np.zeros(len(s.cfg)) for s in samples]
        self.magmoms = np.concatenate(mags) if K else np.zeros(0)
        self.n_atoms = n_loc.astype(float)
        self.index = np.array([s.index for s in samples], dtype=np.int64)
        # labels and weights (a missing label has weight 0 and a zero reference)
        self.w_energy = np.array([s.w_energy for s in samples])
        self.w_force = np.array([s.w_force for s in samples])
        self.w_stress = np.array([s.w_stress for s in samples])
        self.w_magnetic = np.array([s.w_magnetic for s in samples])
        self.has_energy = np.array([s.cfg.energy is not None for s in samples])
        self.has_forces = np.array([s.cfg.forces is not None for s in samples])
        self.has_stress = np.array([s.cfg.virial is not None and bool(np.all(s.cfg.pbc)) for s in samples])
        self.has_magnetic = np.array([s.cfg.magnetic_gradient is not None and magnetic for s in samples])
        self.e_ref = np.array([s.cfg.energy if s.cfg.energy is not None else 0.0 for s in samples])
        self.f_ref = np.concatenate([s.cfg.forces if s.cfg.forces is not None else np.zeros((len(s.cfg), 3))
                                     for s in samples]) if K else np.zeros((0, 3))
        self.s_ref = np.array([s.cfg.virial if s.cfg.virial is not None else np.zeros((3, 3))
                               for s in samples]).reshape(K, 3, 3)
        self.g_ref = np.concatenate([s.cfg.magnetic_gradient if s.cfg.magnetic_gradient is not None
                                     else np.zeros(len(s.cfg)) for s in samples]) if K else np.zeros(0)
        self.volumes = np.array([s.cfg.volume if np.all(s.cfg.pbc) else 1.0 for s in samples])

    # ------------------------------------------------------------------ predictions
    def predict(self, engine: MTPEngine, sign: float, symmetric: bool = False) -> dict:
        """Energies (K,), forces (N,3), virials (K,3,3), ∂E/∂m (N,) at moments sign·m;
        ``symmetric``: those of ½[E(M) + E(−M)] in one pass (needs :meth:`MTPEngine.one_pass_symmetric`)."""
        N, K = self.n_local, len(self.samples)
        mag_all = np.ascontiguousarray(sign * self.magmoms[self.image_of])
        site = np.zeros(N)
        pair_grad = np.zeros((len(self.neighbors), 3))
        pair_dmj = np.zeros(len(self.neighbors))
        dmi = np.zeros(N)
        kernel = _kernels.site_terms_symmetric if symmetric else _kernels.site_terms
        kernel(engine.tables(), self.positions, self.types_all, mag_all, self.offsets, self.neighbors, N,
               site, pair_grad, pair_dmj, dmi, np.zeros((0, 1)), True, False, engine.num_threads)
        forces_all = np.zeros((self.n_total, 3))
        dedm_all = np.zeros(self.n_total)
        virials = np.zeros((K, 3, 3))
        _kernels.scatter_pairs_grouped(self.positions, self.offsets, self.neighbors, pair_grad, pair_dmj,
                                       dmi, self.group, forces_all, dedm_all, virials)
        forces = np.empty((N, 3))
        for d in range(3):
            forces[:, d] = np.bincount(self.image_of, weights=forces_all[:, d], minlength=N)
        dedm = np.bincount(self.image_of, weights=dedm_all, minlength=N)
        energies = np.bincount(self.group, weights=site, minlength=K)
        return {"energy": energies, "forces": forces, "virial": virials, "magnetic_gradient": dedm}

    def rows(self, engine: MTPEngine, symmetric: bool, gradient: bool, sum_keys: tuple) -> np.ndarray:
        """(K, 1 + len(sum_keys) + P): loss, error sums and loss gradient per configuration."""
        K, N = len(self.samples), self.n_local
        one_pass = bool(symmetric and engine.param_one_pass())
        signs = (1.0, -1.0) if symmetric and not one_pass else (1.0,)
        if one_pass:
            pred = self.predict(engine, 1.0, symmetric=True)
        else:
            preds = [self.predict(engine, s) for s in signs]
            pred = combine_symmetric(*preds) if symmetric else preds[0]
        g = self.group
        d_e = np.where(self.has_energy, pred["energy"] - self.e_ref, 0.0)
        d_f = np.where(self.has_forces[g][:, None], pred["forces"] - self.f_ref, 0.0)
        d_s = np.where(self.has_stress[:, None, None], pred["virial"] - self.s_ref, 0.0)
        d_m = np.where(self.has_magnetic[g], pred["magnetic_gradient"] - self.g_ref, 0.0)
        f_sq = np.bincount(g, weights=np.sum(d_f ** 2, axis=1), minlength=K)
        m_sq = np.bincount(g, weights=d_m ** 2, minlength=K)
        loss = (self.w_energy * d_e ** 2 + self.w_force * f_sq + self.w_stress * np.sum(d_s ** 2, axis=(1, 2))
                + self.w_magnetic * m_sq)
        iu = np.triu_indices(3)
        d_gpa = d_s / self.volumes[:, None, None] * EV_A3_TO_GPA
        sums = {
            "energy_sq": (d_e / self.n_atoms) ** 2, "energy_abs": np.abs(d_e / self.n_atoms),
            "energy_n": self.has_energy.astype(float),
            "force_sq": f_sq, "force_abs": np.bincount(g, weights=np.sum(np.abs(d_f), axis=1), minlength=K),
            "force_n": np.where(self.has_forces, 3 * self.n_atoms, 0.0),
            "stress_sq": np.sum(d_gpa[:, iu[0], iu[1]] ** 2, axis=1),
            "stress_abs": np.sum(np.abs(d_gpa[:, iu[0], iu[1]]), axis=1),
            "stress_n": np.where(self.has_stress, 6.0, 0.0),
            "magnetic_sq": m_sq, "magnetic_abs": np.bincount(g, weights=np.abs(d_m), minlength=K),
            "magnetic_n": np.where(self.has_magnetic, self.n_atoms, 0.0),
        }
        P = engine.pot.n_params if gradient else 0
        out = np.zeros((K, 1 + len(sum_keys) + P))
        out[:, 0] = loss
        for c, key in enumerate(sum_keys):
            out[:, 1 + c] = sums[key]
        if not gradient:
            return out
        e_weight = np.ascontiguousarray(2.0 * self.w_energy[g] * d_e[g])
        t_pos_local = -2.0 * self.w_force[g][:, None] * d_f
        t_strain = -2.0 * self.w_stress[:, None, None] * d_s
        t_mag_local = 2.0 * self.w_magnetic[g] * d_m
        t_pos = np.ascontiguousarray(t_pos_local[self.image_of]
                                     + np.einsum("eab,eb->ea", t_strain[self.group_entry], self.positions))
        grads = []
        for sign in signs:
            t_grad = np.zeros((K, P))
            args = (engine.tables(), self.positions, self.types_all,
                    np.ascontiguousarray(sign * self.magmoms[self.image_of]), self.offsets,
                    self.neighbors, N, np.zeros(N), np.zeros((0, P)), False, t_pos,
                    np.ascontiguousarray(sign * t_mag_local[self.image_of]), True, np.zeros(N), t_grad, 1)
            # ½[E(M) + E(−M)] in one pass where it can (two coefficient sets), else one pass per sign
            _kernels.param_terms(*args, group=self.group, e_weight=e_weight, symmetric=one_pass)
            grads.append(t_grad)
        out[:, 1 + len(sum_keys):] = 0.5 * (grads[0] + grads[1]) if len(grads) == 2 else grads[0]
        return out
