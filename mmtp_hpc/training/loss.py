"""The training objective (spec §4) and its analytic gradient, split over configurations and ranks.

For configuration k with N_k atoms::

    L_k = w_e ΔE² / N^ws + w_f Σ_i |ΔF_i|² + w_s Σ_ab ΔS_ab² / N^ws + w_m Σ_i Δ(∂E/∂m_i)²

(ws = ``weight_scaling`` as in MLIP-3: 0 none, 1 per atom, 2 per atom squared; S is the
PlusStress virial in eV). A label missing from a configuration drops its term.

Gradient without Jacobians: the force, virial and ∂E/∂m terms of ∂L_k/∂θ equal the
θ-derivative of the model's directional derivative T along the tangent
(δr, δε, δm) = (−2 w_f ΔF, −2 w_s ΔS / N^ws, 2 w_m Δ∂E/∂m) — one forward-over-reverse
pass per configuration (``MTPEngine.param_gradients(tangent=…)``). With a symmetrised
potential every prediction is ½[X(M) + X(−M)], which is what M → −M data augmentation
fits: a flipped copy of a configuration has exactly the same residuals (energy, forces and
stress are even in M; ∂E/∂m and its label are both odd), so it is accounted for by
symmetrisation itself and not evaluated twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mmtp_hpc.errors import InputError
from mmtp_hpc.parallel.comm import get_comm, max_op, ordered_sum
from mmtp_hpc.potentials.mtp.engine import MTPEngine
from mmtp_hpc.potentials.mtp.parameters import MTPPotential
from mmtp_hpc.system.configuration import Configuration
from mmtp_hpc.system.neighbors import NeighborList, build_neighbor_list


@dataclass
class Weights:
    energy: float = 1.0
    force: float = 0.01
    stress: float = 0.001
    magnetic: float = 0.0
    scaling: int = 1

    def __post_init__(self) -> None:
        if self.scaling not in (0, 1, 2):
            raise InputError(f"weight_scaling must be 0, 1 or 2, got {self.scaling}")
        for name in ("energy", "force", "stress", "magnetic"):
            if getattr(self, name) < 0:
                raise InputError(f"{name} weight must be >= 0, got {getattr(self, name)}")


@dataclass
class Sample:
    """One training configuration with its neighbour list and per-term weights."""

    cfg: Configuration
    nl: NeighborList
    index: int                      # position in the full (all-rank) data set
    w_energy: float
    w_force: float
    w_stress: float
    w_magnetic: float


@dataclass
class Evaluation:
    loss: float
    gradient: np.ndarray | None
    sums: dict = field(default_factory=dict)   # squared errors and counts per quantity


def make_samples(pot: MTPPotential, configs: list[Configuration], weights: Weights,
                 comm=None, skin: float = 0.0) -> list[Sample]:
    """This rank's share of the configurations (round robin), with cached neighbour lists."""
    comm = get_comm(comm)
    rank, size = comm.Get_rank(), comm.Get_size()
    samples = []
    for k, cfg in enumerate(configs):
        if k % size != rank:
            continue
        if cfg.energy is None and cfg.forces is None:
            raise InputError(f"training configuration {k} has neither energy nor forces")
        if pot.magnetic and cfg.magmoms is None:
            raise InputError(f"training configuration {k} has no magnetic moments but the potential "
                             "is magnetic")
        n = len(cfg)
        scale = float(n) ** weights.scaling
        periodic = bool(np.all(cfg.pbc))
        samples.append(Sample(
            cfg=cfg,
            nl=build_neighbor_list(cfg.cell, cfg.pbc, cfg.positions, pot.cutoff, skin),
            index=k,
            w_energy=weights.energy / scale if cfg.energy is not None else 0.0,
            w_force=weights.force if cfg.forces is not None else 0.0,
            w_stress=weights.stress / scale if (cfg.virial is not None and periodic) else 0.0,
            w_magnetic=weights.magnetic if (cfg.magnetic_gradient is not None and pot.magnetic) else 0.0,
        ))
    return samples


class Objective:
    """L(θ) and ∂L/∂θ summed over all ranks' samples."""

    def __init__(self, pot: MTPPotential, samples: list[Sample], comm=None, num_threads: int | None = None,
                 batched: bool = True):
        self.pot = pot
        self.batched = batched
        self._batch = None
        self.samples = samples
        self.comm = get_comm(comm)
        self.engine = MTPEngine(pot, num_threads=num_threads)
        self.n_evaluations = 0
        # number of configurations over all ranks (samples know their global index)
        last = max((s.index for s in samples), default=-1)
        self.n_total = int(self.comm.allreduce(last + 1, op=max_op()))

    def __call__(self, theta: np.ndarray, gradient: bool = True) -> Evaluation:
        self.pot.set_params(theta)
        self.n_evaluations += 1
        P = self.pot.n_params
        width = 1 + len(SUM_KEYS) + (P if gradient else 0)
        rows = {}
        if self.batched and self.samples:
            if self._batch is None:
                from mmtp_hpc.training.batch import Batch
                self._batch = Batch(self.samples, self.pot.magnetic)
            block = self._batch.rows(self.engine, bool(self.pot.symmetric and self.pot.magnetic), gradient,
                                     SUM_KEYS)
            for k, index in enumerate(self._batch.index):
                rows[int(index)] = block[k]
        for s in (self.samples if not self.batched else ()):
            loss, grad, sums = self.sample_terms(s, gradient)
            row = np.empty(width)
            row[0] = loss
            row[1:1 + len(SUM_KEYS)] = [sums[k] for k in SUM_KEYS]
            if gradient:
                row[1 + len(SUM_KEYS):] = grad
            rows[s.index] = row
        total = ordered_sum(self.comm, rows, self.n_total, width)
        sums = dict(zip(SUM_KEYS, total[1:1 + len(SUM_KEYS)], strict=True))
        return Evaluation(float(total[0]), total[1 + len(SUM_KEYS):] if gradient else None, sums)

    def sample_terms(self, s: Sample, gradient: bool = True) -> tuple[float, np.ndarray | None, dict]:
        cfg, n = s.cfg, len(s.cfg)
        out = self.engine.evaluate(cfg, nl=s.nl)
        sums = dict.fromkeys(SUM_KEYS, 0.0)
        loss = 0.0
        d_e = 0.0
        zeros_f, zeros_s, zeros_m = np.zeros((n, 3)), np.zeros((3, 3)), np.zeros(n)
        t_f, t_s, t_m = zeros_f, zeros_s, zeros_m
        if cfg.energy is not None:
            d_e = out["energy"] - cfg.energy
            loss += s.w_energy * d_e ** 2
            sums["energy_sq"] += (d_e / n) ** 2
            sums["energy_abs"] += abs(d_e / n)
            sums["energy_n"] += 1
        if cfg.forces is not None:
            d_f = out["forces"] - cfg.forces
            loss += s.w_force * float(np.sum(d_f ** 2))
            t_f = -2.0 * s.w_force * d_f
            sums["force_sq"] += float(np.sum(d_f ** 2))
            sums["force_abs"] += float(np.sum(np.abs(d_f)))
            sums["force_n"] += d_f.size
        if cfg.virial is not None and np.all(cfg.pbc):
            d_s = out["virial"] - cfg.virial
            loss += s.w_stress * float(np.sum(d_s ** 2))
            t_s = -2.0 * s.w_stress * d_s
            d_gpa = d_s / cfg.volume * 160.21766208
            iu = np.triu_indices(3)
            sums["stress_sq"] += float(np.sum(d_gpa[iu] ** 2))
            sums["stress_abs"] += float(np.sum(np.abs(d_gpa[iu])))
            sums["stress_n"] += 6
        if cfg.magnetic_gradient is not None and self.pot.magnetic:
            d_m = out["magnetic_gradient"] - cfg.magnetic_gradient
            loss += s.w_magnetic * float(np.sum(d_m ** 2))
            t_m = 2.0 * s.w_magnetic * d_m
            sums["magnetic_sq"] += float(np.sum(d_m ** 2))
            sums["magnetic_abs"] += float(np.sum(np.abs(d_m)))
            sums["magnetic_n"] += n
        if not gradient:
            return loss, None, sums
        need_tangent = (t_f is not zeros_f) or (t_s is not zeros_s) or (t_m is not zeros_m)
        pg = self.engine.param_gradients(cfg, site=True, nl=s.nl,
                                         tangent=(t_f, t_s, t_m) if need_tangent else None)
        grad = 2.0 * s.w_energy * d_e * pg["energy_param_grad"]
        if need_tangent:
            grad = grad + pg["tangent_param_grad"]
        return loss, grad, sums


SUM_KEYS = ("energy_sq", "energy_abs", "energy_n", "force_sq", "force_abs", "force_n",
            "stress_sq", "stress_abs", "stress_n", "magnetic_sq", "magnetic_abs", "magnetic_n")


def rmse_from_sums(sums: dict) -> dict:
    """RMSE/MAE per quantity: energy meV/atom, forces eV/Å (per component), stress GPa, ∂E/∂m eV/μB."""
    out = {}
    for key, factor in (("energy", 1000.0), ("force", 1.0), ("stress", 1.0), ("magnetic", 1.0)):
        n = sums[f"{key}_n"]
        if n > 0:
            out[f"{key}_rmse"] = factor * float(np.sqrt(sums[f"{key}_sq"] / n))
            out[f"{key}_mae"] = factor * float(sums[f"{key}_abs"] / n)
    return out
