"""Dense BFGS with a Wolfe line search whose inverse-Hessian estimate survives outside steps.

The training loop interleaves quasi-Newton steps with exact re-solves of the linear
coefficients. A re-solve is just another step (s, y) for the curvature estimate, so it is
fed into the same BFGS update instead of restarting the optimiser (which is what calling a
library minimiser repeatedly would do). The inverse Hessian H is dense (n × n): MTPs have
10²–10³ parameters. Update (Nocedal & Wright, eq. 6.17)::

    H ← (I − ρ s yᵀ) H (I − ρ y sᵀ) + ρ s sᵀ,   ρ = 1 / (yᵀ s),   skipped unless yᵀs > ε |s||y|

The first H is scaled by yᵀs / yᵀy (eq. 6.20).
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import scipy.optimize
from scipy.optimize._linesearch import LineSearchWarning


class BFGS:
    """Minimiser state; call :meth:`step` repeatedly, :meth:`external_step` after moving x yourself."""

    def __init__(self, fun: Callable[[np.ndarray], tuple[float, np.ndarray]], x0: np.ndarray,
                 f0: float | None = None, g0: np.ndarray | None = None):
        self.fun = fun
        self.x = np.array(x0, dtype=np.float64)
        if f0 is None or g0 is None:
            f0, g0 = fun(self.x)
        self.f, self.g = float(f0), np.array(g0, dtype=np.float64)
        self.H: np.ndarray | None = None
        self.n_evaluations = 0
        self._cache: dict[bytes, tuple[float, np.ndarray]] = {}

    def _eval(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        key = x.tobytes()
        if key not in self._cache:
            self._cache = {key: self.fun(x)} if len(self._cache) > 8 else {**self._cache, key: self.fun(x)}
            self.n_evaluations += 1
        return self._cache[key]

    def _update(self, s: np.ndarray, y: np.ndarray) -> None:
        sy = float(s @ y)
        if sy <= 1e-12 * np.linalg.norm(s) * np.linalg.norm(y):
            return  # no positive curvature along s: keep H (stays positive definite)
        if self.H is None:
            self.H = np.eye(len(s)) * (sy / float(y @ y))
        rho = 1.0 / sy
        Hy = self.H @ y
        # (I − ρ s yᵀ) H (I − ρ y sᵀ) + ρ s sᵀ, expanded to avoid n×n temporaries
        self.H += (rho * rho * float(y @ Hy) + rho) * np.outer(s, s) - rho * (np.outer(Hy, s) + np.outer(s, Hy))

    def step(self) -> bool:
        """One quasi-Newton iteration; False if no decrease could be found."""
        g = self.g
        if self.H is None:
            direction = -g * (1e-3 * max(1.0, np.linalg.norm(self.x)) / max(np.linalg.norm(g), 1e-300))
        else:
            direction = -(self.H @ g)
            if direction @ g >= 0:       # lost positive definiteness: restart the estimate
                self.H = None
                return self.step()
        f_of = lambda x: self._eval(x)[0]  # noqa: E731
        g_of = lambda x: self._eval(x)[1]  # noqa: E731
        with warnings.catch_warnings():  # a failed Wolfe search is handled below
            warnings.simplefilter("ignore", LineSearchWarning)
            alpha, *_ = scipy.optimize.line_search(f_of, g_of, self.x, direction, g, self.f,
                                                   c1=1e-4, c2=0.9, maxiter=20)
        if alpha is None:  # Wolfe search failed: backtrack on sufficient decrease
            alpha = 1.0
            for _ in range(30):
                if f_of(self.x + alpha * direction) <= self.f + 1e-4 * alpha * (g @ direction):
                    break
                alpha *= 0.3
            else:
                if self.H is not None:
                    self.H = None
                    return self.step()
                return False
        x_new = self.x + alpha * direction
        f_new, g_new = self._eval(x_new)
        self._update(x_new - self.x, g_new - g)
        self.x, self.f, self.g = x_new, float(f_new), np.array(g_new)
        return True

    def external_step(self, x_new: np.ndarray, f_new: float, g_new: np.ndarray) -> None:
        """Accept a point reached by other means (an exact linear re-solve) as a BFGS step."""
        x_new = np.array(x_new, dtype=np.float64)
        self._update(x_new - self.x, np.asarray(g_new) - self.g)
        self.x, self.f, self.g = x_new, float(f_new), np.array(g_new, dtype=np.float64)
