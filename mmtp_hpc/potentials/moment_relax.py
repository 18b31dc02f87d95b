"""Relax collinear moments at fixed positions: bounded L-BFGS-B on ∂E/∂m of any model.

The model is anything with ``evaluate(cfg, magmoms) -> dict`` returning ``energy`` (eV)
and ``magnetic_gradient`` (+∂E/∂m, eV/μB) — :class:`~mmtp_hpc.potentials.mtp.engine.MTPEngine`
or :class:`~mmtp_hpc.potentials.analytic.AnalyticMagneticModel`. The minimum is the local
one reached from the start ``m0`` (a symmetric potential has ∂E/∂m = 0 at m = 0, so a
start at zero stays there). Convergence is on the largest *projected* gradient: an atom
held at a bound by a gradient pointing out of the interval counts as converged.

By the envelope theorem the forces and virial returned with the relaxed moments are the
derivatives of the relaxed energy E(x, m*(x)) (up to the tolerance), which is what an ASE
optimiser, ASE MD or a phonon code needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mmtp_hpc.system.configuration import Configuration


@dataclass
class MomentRelaxation:
    """Result of :func:`relax_moments`.

    ``magmoms`` (N,) μB the relaxed moments; ``evaluation`` the model's full result dict at
    them; ``max_gradient`` the largest projected |∂E/∂m| (eV/μB); ``converged`` whether it
    is ≤ the tolerance; ``n_evaluations`` model evaluations used.
    """

    magmoms: np.ndarray
    evaluation: dict
    max_gradient: float
    converged: bool
    n_evaluations: int


def projected_gradient(m: np.ndarray, grad: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """∂E/∂m with the components that push an atom out through its bound set to zero."""
    g = np.array(grad, dtype=np.float64)
    g[(m <= lo) & (g > 0.0)] = 0.0
    g[(m >= hi) & (g < 0.0)] = 0.0
    return g


def relax_moments(evaluate: Callable[[np.ndarray], dict], m0: np.ndarray,
                  bounds: tuple[np.ndarray, np.ndarray] | None = None, tol: float = 1e-4,
                  max_iter: int = 500) -> MomentRelaxation:
    """Minimise E(m) from ``m0`` with L-BFGS-B until max|projected ∂E/∂m| ≤ ``tol`` eV/μB.

    ``evaluate(m)`` returns the model's result dict at moments ``m`` (N,);
    ``bounds`` = (lo (N,), hi (N,)) μB or None (unbounded). L-BFGS-B's own stopping rules
    are set so that only the gradient criterion (or ``max_iter``) ends the search.
    """
    from scipy.optimize import minimize

    m0 = np.asarray(m0, dtype=np.float64).copy()
    n = m0.size
    if bounds is None:
        lo, hi = np.full(n, -np.inf), np.full(n, np.inf)
    else:
        lo = np.broadcast_to(np.asarray(bounds[0], dtype=np.float64), (n,)).copy()
        hi = np.broadcast_to(np.asarray(bounds[1], dtype=np.float64), (n,)).copy()
    m0 = np.clip(m0, lo, hi)
    cache: dict[bytes, dict] = {}
    count = 0

    def result_at(x: np.ndarray) -> dict:
        nonlocal count
        key = np.ascontiguousarray(x, dtype=np.float64).tobytes()
        if key not in cache:
            cache.clear()          # only the latest point is ever asked for again
            cache[key] = evaluate(np.array(x, dtype=np.float64))
            count += 1
        return cache[key]

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        res = result_at(x)
        return float(res["energy"]), np.asarray(res["magnetic_gradient"], dtype=np.float64)

    def gmax_at(x: np.ndarray) -> float:
        if n == 0:
            return 0.0
        return float(np.max(np.abs(projected_gradient(x, result_at(x)["magnetic_gradient"], lo, hi))))

    best = m0
    # L-BFGS-B can stop early when its line search meets round-off near the minimum; a
    # restart with a fresh curvature memory usually finishes the job.
    for _attempt in range(3):
        if gmax_at(best) <= tol or count >= max_iter:
            break
        opt = minimize(fun, best, jac=True, method="L-BFGS-B",
                       bounds=None if bounds is None else list(zip(lo, hi, strict=True)),
                       options={"maxiter": int(max_iter), "maxfun": int(max_iter),
                                "ftol": 0.0, "gtol": float(tol), "maxcor": 20})
        trial = np.clip(opt.x, lo, hi)
        if result_at(trial)["energy"] > result_at(best)["energy"]:
            break
        best = trial
    final = result_at(best)
    gmax = gmax_at(best)
    return MomentRelaxation(magmoms=best, evaluation=final, max_gradient=gmax,
                            converged=gmax <= tol, n_evaluations=count)


def model_bounds(model: object, cfg: Configuration) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-atom bounds from a magnetic MTP's (per-species) interval; None for other models."""
    pot = getattr(model, "pot", model)
    if getattr(pot, "magnetic", False) and getattr(pot, "mag_min", None) is not None:
        return np.asarray(pot.mag_min)[cfg.types], np.asarray(pot.mag_max)[cfg.types]
    return None


def default_start(model: object, cfg: Configuration) -> np.ndarray:
    """A ferromagnetic start when no moments are given: 0.6 × the upper end of a magnetic
    MTP's interval per species, or an analytic model's single-site Landau minimum."""
    pot = getattr(model, "pot", model)
    if getattr(pot, "magnetic", False) and getattr(pot, "mag_max", None) is not None:
        return 0.6 * np.asarray(pot.mag_max, dtype=np.float64)[cfg.types]
    landau = getattr(model, "landau_minimum", None)
    if landau is not None:
        return np.asarray(landau(cfg), dtype=np.float64)
    return np.full(len(cfg), 1.0)
