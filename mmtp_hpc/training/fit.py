"""Fitting an MTP (spec §4): L-BFGS over all parameters, linear coefficients re-solved exactly.

The energy is linear in the species coefficients s and the moment coefficients ξ once the
radial coefficients are fixed, and so are forces, virial and ∂E/∂m (in ξ). Every
``linear_every`` iterations (and at the start) these are set to the exact minimiser of the
same weighted loss by ridge-regularised normal equations built from the basis Jacobian
(``MTPEngine.basis_jacobian``); in between, SciPy's L-BFGS-B moves all parameters with the
analytic gradient. Every rank runs the same optimiser on the same all-reduced numbers, so the
result is independent of the number of ranks up to the round-off of the reductions.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import scipy.linalg
import scipy.optimize

from mmtp_hpc.errors import InputError
from mmtp_hpc.parallel.comm import get_comm, ordered_sum
from mmtp_hpc.potentials.mtp.parameters import MTPPotential
from mmtp_hpc.system.configuration import Configuration
from mmtp_hpc.system.neighbors import build_neighbor_list, min_distance
from mmtp_hpc.training.bfgs import BFGS
from mmtp_hpc.training.loss import Objective, Weights, make_samples, rmse_from_sums


@dataclass
class TrainSettings:
    energy_weight: float = 1.0
    force_weight: float = 0.01
    stress_weight: float = 0.001
    magnetic_weight: float = 0.0
    weight_scaling: int = 1
    max_iter: int = 1000
    tolerance: float = 1e-8          # stop when a chunk lowers the loss by less than this (relative)
    linear_every: int = 50           # L-BFGS iterations between exact linear re-solves
    ridge: float = 1e-10             # relative ridge of the linear solve (on the scaled normal matrix)
    symmetrize: bool = False
    seed: int = 0
    init: str = "random"             # random | default | keep
    min_dist: str = "keep"           # keep | auto (0.99 × shortest distance in the data)
    magnetic_interval: str = "keep"  # keep | auto (per-species ±max|m| of the data)
    log_every: int = 10
    num_threads: int | None = None
    optimizer: str = "bfgs"          # bfgs (dense, memory kept across linear re-solves) | lbfgs

    def __post_init__(self) -> None:
        if self.optimizer not in ("bfgs", "lbfgs"):
            raise InputError(f"optimizer must be bfgs or lbfgs, got {self.optimizer!r}")
        if self.init not in ("random", "default", "keep"):
            raise InputError(f"init must be random, default or keep, got {self.init!r}")
        if self.min_dist not in ("keep", "auto"):
            raise InputError(f"min_dist must be keep or auto, got {self.min_dist!r}")
        if self.magnetic_interval not in ("keep", "auto"):
            raise InputError(f"magnetic_interval must be keep or auto, got {self.magnetic_interval!r}")
        if self.max_iter < 0 or self.linear_every < 1:
            raise InputError("max_iter must be >= 0 and linear_every >= 1")

    @property
    def weights(self) -> Weights:
        return Weights(self.energy_weight, self.force_weight, self.stress_weight,
                       self.magnetic_weight, self.weight_scaling)


@dataclass
class TrainResult:
    potential: MTPPotential
    history: list[dict] = field(default_factory=list)
    train_errors: dict = field(default_factory=dict)
    wall_time: float = 0.0
    settings: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- preparation
def shortest_distance(configs: list[Configuration], cutoff: float) -> float:
    best = np.inf
    for cfg in configs:
        nl = build_neighbor_list(cfg.cell, cfg.pbc, cfg.positions, cutoff)
        best = min(best, min_distance(nl)[0])
    return float(best)


def prepare_potential(pot: MTPPotential, configs: list[Configuration], settings: TrainSettings,
                      comm=None, log: Callable[[str], None] = print) -> tuple[MTPPotential, list[str]]:
    """A copy of ``pot`` with R_min, magnetic interval, symmetry flag and initial parameters set."""
    comm = get_comm(comm)
    pot = pot.copy()
    notes = []
    if settings.min_dist == "auto":
        dmin = shortest_distance(configs, pot.cutoff)
        if not np.isfinite(dmin):
            raise InputError("--min-dist auto: no pair of atoms within the cutoff in the data")
        new = 0.99 * dmin
        notes.append(f"min_dist: {pot.min_dist:.6g} -> {new:.6g} Å (0.99 × shortest distance "
                     f"{dmin:.6g} Å in the training data)")
        pot.min_dist = new
    if settings.magnetic_interval == "auto":
        if not pot.magnetic:
            raise InputError("--magnetic-interval auto needs a magnetic potential")
        mmax = np.zeros(pot.species_count)
        for cfg in configs:
            if cfg.magmoms is not None:
                np.maximum.at(mmax, cfg.types, np.abs(cfg.magmoms))
        mmax = np.maximum(mmax, 0.1)  # a (nearly) non-magnetic species keeps a usable interval (Al: 0.1 μB)
        notes.append("magnetic interval per species (−M_max^z, M_max^z): " +
                     ", ".join(f"type {z}: ±{m:.4g} μB" for z, m in enumerate(mmax)))
        pot.mag_min, pot.mag_max = -mmax, mmax.copy()
    pot.symmetric = bool(settings.symmetrize and pot.magnetic)
    if settings.symmetrize and not pot.magnetic:
        notes.append("--symmetrize ignored: the potential is not magnetic")
    if settings.init == "default" or (settings.init == "keep" and not pot.trained):
        pot.init_default_params()
    elif settings.init == "random":
        rng = np.random.default_rng(settings.seed)
        pot.init_default_params()
        # MLIP-3-like start: small radial coefficients, randomised so that different seeds
        # give different members of an ensemble; identical on every rank (same seed)
        pot.radial_coeffs = pot.radial_coeffs + rng.uniform(-1.0, 1.0, size=pot.radial_shape) * 1e-2
        pot.moment_coeffs = np.zeros(pot.n_basis)
    if settings.init != "keep":
        pot.scaling = radial_scaling(pot, configs, comm)
        notes.append(f"scaling = {pot.scaling:.6g} (radial basis normalised on the data)")
    for note in notes:
        log(note)
    return pot, notes


def radial_scaling(pot: MTPPotential, configs: list[Configuration], comm) -> float:
    """1 / mean_i Σ_j (R_cut − r_ij)², so that the basic moments start at order one."""
    rows = {}
    for k, cfg in enumerate(configs):
        if k % comm.Get_size() != comm.Get_rank():
            continue
        nl = build_neighbor_list(cfg.cell, cfg.pbc, cfg.positions, pot.cutoff)
        r = nl.pair_distances()
        rows[k] = np.array([np.sum((pot.cutoff - r[r < pot.cutoff]) ** 2), len(cfg)])
    # summed in configuration order: the scaling (and so the whole fit) is then bit-identical
    # for any number of ranks, which a plain Allreduce of per-rank partial sums is not
    acc = ordered_sum(comm, rows, len(configs), 2)
    return float(acc[1] / acc[0]) if acc[0] > 0 else 1.0


# --------------------------------------------------------------------------- linear solve
def solve_linear(objective: Objective, ridge: float = 1e-10) -> None:
    """Set species and moment coefficients to the exact minimiser of the weighted loss."""
    pot, engine = objective.pot, objective.engine
    C, nb = pot.species_count, pot.n_basis
    nlin = C + nb
    rows = {}
    for s in objective.samples:
        cfg = s.cfg
        jac = engine.basis_jacobian(cfg, nl=s.nl)
        blocks = []
        if s.w_energy > 0:
            row = np.concatenate([np.bincount(cfg.types, minlength=C).astype(float), jac["basis_sum"]])
            blocks.append((row[None, :], np.array([cfg.energy]), s.w_energy))
        if s.w_force > 0:
            a = np.concatenate([np.zeros((3 * len(cfg), C)), jac["forces"].reshape(-1, nb)], axis=1)
            blocks.append((a, cfg.forces.ravel(), s.w_force))
        if s.w_stress > 0:
            a = np.concatenate([np.zeros((9, C)), jac["virial"].reshape(-1, nb)], axis=1)
            blocks.append((a, cfg.virial.ravel(), s.w_stress))
        if s.w_magnetic > 0:
            a = np.concatenate([np.zeros((len(cfg), C)), jac["magnetic_gradient"]], axis=1)
            blocks.append((a, cfg.magnetic_gradient, s.w_magnetic))
        normal = np.zeros((nlin, nlin))
        rhs = np.zeros(nlin)
        for a, y, w in blocks:
            normal += w * a.T @ a
            rhs += w * a.T @ y
        rows[s.index] = np.concatenate([normal.ravel(), rhs])
    packed = ordered_sum(objective.comm, rows, objective.n_total, nlin * nlin + nlin)
    normal, rhs = packed[:nlin * nlin].reshape(nlin, nlin), packed[nlin * nlin:]
    d = np.sqrt(np.diag(normal))
    d[d == 0] = 1.0
    scaled = normal / d[:, None] / d[None, :]
    scaled[np.diag_indices(nlin)] += ridge
    try:
        z = scipy.linalg.solve(scaled, rhs / d, assume_a="pos")
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
        z = scipy.linalg.lstsq(scaled, rhs / d)[0]
    x = z / d
    pot.species_coeffs = x[:C].copy()
    pot.moment_coeffs = x[C:].copy()


# --------------------------------------------------------------------------- training
def fitted_numbers(configs: list[Configuration], weights: Weights, magnetic: bool) -> int:
    """How many labelled numbers the loss compares (energies, force components, 6 stress
    components, ∂E/∂m per atom), counting only the terms with a non-zero weight."""
    n = 0
    for cfg in configs:
        if weights.energy > 0 and cfg.energy is not None:
            n += 1
        if weights.force > 0 and cfg.forces is not None:
            n += 3 * len(cfg)
        if weights.stress > 0 and cfg.virial is not None and bool(np.all(cfg.pbc)):
            n += 6
        if magnetic and weights.magnetic > 0 and cfg.magnetic_gradient is not None:
            n += len(cfg)
    return n


def data_size_warnings(n_params: int, n_numbers: int, n_configs: int) -> list[str]:
    """Warnings when the data are too few for the parameters (a fit that interpolates noise)."""
    out = []
    if n_numbers < 2 * n_params:
        out.append(f"warning: {n_params} parameters are fitted to {n_numbers} numbers; the fit is "
                   "under-determined or close to it (it will reproduce the training data and little "
                   "else): add configurations, or use a lower level or fewer radial functions")
    elif n_configs < 10:
        out.append(f"warning: only {n_configs} training configuration(s): energies and stresses enter "
                   f"{n_configs} times each; the potential will not be transferable")
    return out


def train(pot: MTPPotential, configs: list[Configuration], settings: TrainSettings | None = None,
          comm=None, log: Callable[[str], None] | None = None,
          validation: list[Configuration] | None = None) -> TrainResult:
    """Fit ``pot`` to ``configs``; returns a new, trained potential and the history.

    With ``validation`` configurations their errors are logged beside the training errors
    (``val E``, ``val F``, ...) at every log line; the log also shows an estimate of the time
    left for ``max_iter`` iterations.
    """
    settings = settings or TrainSettings()
    comm = get_comm(comm)
    root = comm.Get_rank() == 0
    if log is None:
        def log(msg: str) -> None:
            if root:
                print(msg, file=sys.stdout, flush=True)
    if not configs:
        raise InputError("no training configurations")
    t0 = time.perf_counter()
    pot, notes = prepare_potential(pot, configs, settings, comm, log)
    samples = make_samples(pot, configs, settings.weights, comm)
    objective = Objective(pot, samples, comm, settings.num_threads)
    result = TrainResult(pot, settings=asdict(settings), notes=notes)
    n_numbers = int(comm.allreduce(fitted_numbers([s.cfg for s in samples], settings.weights, pot.magnetic)))
    log(f"fitting {pot.n_params} parameters to {n_numbers} numbers from {len(configs)} configurations")
    for warning in data_size_warnings(pot.n_params, n_numbers, len(configs)):
        log(warning)
    val_objective = None
    if validation:
        val_objective = Objective(pot, make_samples(pot, validation, settings.weights, comm), comm,
                                  settings.num_threads)
    t_start = time.perf_counter()

    def report(it: int, ev, tag: str = "") -> None:
        errs = rmse_from_sums(ev.sums)
        entry = {"iteration": it, "loss": ev.loss, "time_s": time.perf_counter() - t0, **errs}
        if val_objective is not None:
            theta_now = pot.get_params()
            val = rmse_from_sums(val_objective(theta_now, gradient=False).sums)
            pot.set_params(theta_now)
            entry.update({f"validation_{k}": v for k, v in val.items()})
        result.history.append(entry)
        parts = [f"iter {it:5d}", f"loss {ev.loss:.6e}"]
        if "energy_rmse" in errs:
            parts.append(f"E {errs['energy_rmse']:.3f} meV/atom")
        if "force_rmse" in errs:
            parts.append(f"F {errs['force_rmse']:.4f} eV/Å")
        if "stress_rmse" in errs:
            parts.append(f"S {errs['stress_rmse']:.3f} GPa")
        if "magnetic_rmse" in errs:
            parts.append(f"dE/dm {errs['magnetic_rmse']:.4f} eV/μB")
        if "validation_energy_rmse" in entry:
            parts.append(f"| val E {entry['validation_energy_rmse']:.3f}")
        if "validation_force_rmse" in entry:
            parts.append(f"val F {entry['validation_force_rmse']:.4f}")
        if "validation_magnetic_rmse" in entry:
            parts.append(f"val dE/dm {entry['validation_magnetic_rmse']:.4f}")
        parts.append(f"{entry['time_s']:.1f} s{tag}")
        if 0 < it < settings.max_iter:
            # the time per iteration so far, times the iterations left (an upper bound: the
            # tolerance may stop the run earlier)
            left = (time.perf_counter() - t_start) / it * (settings.max_iter - it)
            parts.append(f"ETA ≤ {_duration(left)}")
        log("  ".join(parts))

    theta = pot.get_params()
    if settings.init != "keep" or settings.max_iter > 0:
        solve_linear(objective, settings.ridge)
        theta = pot.get_params()
    ev = objective(theta)
    report(0, ev, "  (after linear solve)")
    if settings.optimizer == "bfgs":
        theta, iterations = _run_bfgs(objective, settings, theta, ev, report)
    else:
        theta, iterations = _run_lbfgs(objective, settings, theta, ev, report)
    pot.set_params(theta)
    result.potential = pot
    result.train_errors = rmse_from_sums(objective(theta, gradient=False).sums)
    result.wall_time = time.perf_counter() - t0
    log(f"training finished: {iterations} iterations, {objective.n_evaluations} loss evaluations, "
        f"{result.wall_time:.1f} s")
    return result


def _duration(seconds: float) -> str:
    """12 s, 3 min 05 s, 2 h 10 min."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def _run_bfgs(objective: Objective, settings: TrainSettings, theta: np.ndarray, ev, report
              ) -> tuple[np.ndarray, int]:
    """Dense BFGS; every ``linear_every`` iterations the linear coefficients are re-solved and
    the jump is fed to BFGS as a step, so the curvature estimate is kept."""
    pot = objective.pot

    def fun(x):
        e = objective(x)
        return e.loss, e.gradient

    opt = BFGS(fun, theta, ev.loss, ev.gradient)
    previous = ev.loss
    it = 0
    while it < settings.max_iter:
        moved = opt.step()
        it += 1
        if it % settings.log_every == 0 and it % settings.linear_every != 0:
            report(it, objective(opt.x, gradient=False))
        if it % settings.linear_every == 0 or not moved or it == settings.max_iter:
            pot.set_params(opt.x)
            solve_linear(objective, settings.ridge)
            x = pot.get_params()
            e = objective(x)
            if e.loss <= opt.f:
                opt.external_step(x, e.loss, e.gradient)
            else:  # the quadratic re-solve can lose against the joint optimum near convergence
                pot.set_params(opt.x)
                e = objective(opt.x)
            report(it, e, "  (linear re-solve)")
            if not moved or previous - e.loss <= settings.tolerance * max(abs(previous), 1e-300):
                break
            previous = e.loss
    return opt.x, it


def _run_lbfgs(objective: Objective, settings: TrainSettings, theta: np.ndarray, ev, report
               ) -> tuple[np.ndarray, int]:
    """SciPy's L-BFGS-B in chunks of ``linear_every`` iterations, linear re-solve between chunks."""
    pot = objective.pot
    state = {"it": 0, "last": None}

    def fun(x):
        e = objective(x)
        state["last"] = e
        return e.loss, e.gradient

    def callback(xk):
        state["it"] += 1
        if state["it"] % settings.log_every == 0 and state["last"] is not None:
            report(state["it"], state["last"])

    previous = ev.loss
    while state["it"] < settings.max_iter:
        chunk = min(settings.linear_every, settings.max_iter - state["it"])
        start_it = state["it"]
        res = scipy.optimize.minimize(fun, theta, jac=True, method="L-BFGS-B", callback=callback,
                                      options={"maxiter": chunk, "maxcor": 20, "ftol": 1e-15,
                                               "gtol": 1e-12})
        theta = res.x
        pot.set_params(theta)
        solve_linear(objective, settings.ridge)
        theta = pot.get_params()
        ev = objective(theta)
        report(state["it"], ev, "  (linear re-solve)")
        if state["it"] == start_it:
            break
        if previous - ev.loss <= settings.tolerance * max(abs(previous), 1e-300):
            break
        previous = ev.loss
    return theta, state["it"]
