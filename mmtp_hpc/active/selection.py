"""Grades of configurations and the choice of new training configurations (spec §5).

This module's single job is the two active-learning decisions made from a potential's
parameter rows (MLIP-3's ``calculate_grade`` and ``select_add``):

- :func:`grade_configurations`: γ of each configuration (and of each neighbourhood in
  ``nbh`` mode) against the potential's stored active set, written into the
  configuration as MLIP-3 writes it (``Feature MV_grade``, ``nbh_grades`` column).
- :func:`select_new`: which candidates to label. One MaxVol pass (:func:`maxvol.maxvol`)
  over the rows of the training set, the initial rows 1e-6·e_j and all candidates
  together, started from the training set's own MaxVol set; the candidates that hold a
  slot at the end are selected. Because every row is in one pass, a candidate whose rows
  are already represented — by the training set or by another candidate selected in the
  same pass — is not taken: of exact duplicates at most one is selected (ties go to the
  row listed first: training before candidates, earlier candidates first).

The starting set is recomputed from the training set (not read from the potential), so
that the training rows are in the pool and can win ties; for a potential whose stored set
was built from the same training set the two are identical (checked against MLIP-3's
worked example). Rows: ``mode="nbh"`` one row ``∂E_i/∂θ`` per non-ghost atom,
``mode="cfg"`` one row ``∂E/∂θ / N`` per configuration (MLIP-3's ``energy_weight 1``,
``weight_scaling 2``); ``"auto"`` is the mode of the potential's active set, or ``nbh``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mmtp_hpc.active import maxvol
from mmtp_hpc.potentials.mtp.grades import ActiveSet, GradeResult
from mmtp_hpc.errors import InputError
from mmtp_hpc.potentials.mtp.engine import MTPEngine
from mmtp_hpc.potentials.mtp.parameters import MTPPotential
from mmtp_hpc.system.configuration import Configuration

Progress = Callable[[str], None]
PROGRESS_EVERY_S = 2.0   # seconds between progress messages


@dataclass
class SelectResult:
    """Outcome of :func:`select_new`.

    ``selection`` is the MaxVol result over the pool ``training rows ∪ initial rows
    1e-6·e_j ∪ rows of the candidates considered``, in that order; ``pool_candidate``,
    ``pool_training`` and ``pool_eqn`` say, for each pool row, the candidate index (or -1),
    the training-configuration index (or -1) and the MLIP-3 equation index (-1 for the
    initial rows). ``initial`` is the training set's own MaxVol set the pass started from.
    """

    indices: list[int]             # selected candidates (indices into `candidates`, ascending)
    candidate_grades: np.ndarray   # grade of each candidate against the active set before selection
    selection: maxvol.Selection    # the MaxVol result over training ∪ candidates rows
    mode: str                      # "cfg" or "nbh"
    initial: maxvol.Selection | None = None
    pool_candidate: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    pool_training: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    pool_eqn: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    considered: list[int] = field(default_factory=list)   # candidates whose rows were in the pool

    @property
    def log_volume(self) -> float:
        """ln |det A| of the active set after selection."""
        return self.selection.log_volume

    def slot_sources(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per slot of the final set: (training index or -1, candidate index or -1, equation)."""
        rows = self.selection.rows
        ok = rows >= 0
        r = np.maximum(rows, 0)
        return (np.where(ok, self.pool_training[r], -1), np.where(ok, self.pool_candidate[r], -1),
                np.where(ok, self.pool_eqn[r], -1))


# --------------------------------------------------------------------------- modes
def resolve_mode(pot: MTPPotential, mode: str | None = "auto") -> str:
    """"cfg" or "nbh": ``auto`` is the mode of the potential's active set if it has one."""
    if mode in (None, "auto"):
        block = getattr(pot, "active_set", None)
        if block is not None and getattr(block, "inverse", None) is not None:
            return ActiveSet.from_potential(pot).default_mode
        return "nbh"
    if mode not in ("cfg", "nbh"):
        raise InputError(f"mode must be 'auto', 'cfg' or 'nbh', got {mode!r}", field="mode")
    return mode


class ConfigurationError(InputError):
    """An :class:`InputError` about one configuration: ``group`` ("training", "candidates"
    or "") and ``index`` in that list, so that a caller can name the file it came from."""

    def __init__(self, exc: InputError, group: str, index: int):
        self.group, self.index, self.detail = group, index, exc.reason
        what = f"{group} configuration" if group else "configuration"
        super().__init__(f"{what} {index}: {exc.reason}", path=exc.path, line=exc.line, field=exc.field)


# --------------------------------------------------------------------------- grades
def grade_configurations(pot: MTPPotential, configs: list[Configuration], mode: str = "auto", *,
                         engine: MTPEngine | None = None,
                         progress: Progress | None = None) -> list[GradeResult]:
    """γ of each configuration against the potential's active set (MLIP-3's ``calculate_grade``).

    Sets ``cfg.features["MV_grade"]`` (printed ``%.6f`` as MLIP-3 does) and, in ``nbh``
    mode, ``cfg.nbh_grades`` (0 for ghost atoms); in ``cfg`` mode ``nbh_grades`` is
    cleared, since grades of another active set would be stale. The configurations are
    changed in place. Raises :class:`InputError` if the potential has no active set.
    """
    active = ActiveSet.from_potential(pot)
    mode = active.resolve_mode(mode)
    engine = MTPEngine(pot) if engine is None else engine
    results = []
    t0 = last = time.perf_counter()
    n_rows = 0
    for k, cfg in enumerate(configs):
        try:
            res = _grade_one(active, engine, cfg, mode)
        except InputError as exc:
            raise ConfigurationError(exc, "", k) from exc
        cfg.features = dict(cfg.features)
        cfg.features["MV_grade"] = f"{res.grade:.6f}"
        cfg.nbh_grades = res.nbh_grades if mode == "nbh" else None
        results.append(res)
        n_rows += len(maxvol.real_atoms(cfg)) if mode == "nbh" else 1
        now = time.perf_counter()
        if progress is not None and now - last > PROGRESS_EVERY_S:
            progress(f"graded {k + 1}/{len(configs)} configurations "
                     f"({n_rows / (now - t0):.0f} rows/s)")
            last = now
    return results


def _grade_one(active: ActiveSet, engine: MTPEngine, cfg: Configuration, mode: str) -> GradeResult:
    ghosts = cfg.ghost is not None and bool(np.any(cfg.ghost))
    if not ghosts:
        return active.grade(engine, cfg, mode)
    # clusters with ghost atoms: rows of the real atoms only, as MLIP-3 does
    real = maxvol.real_atoms(cfg)
    if mode == "nbh":
        rows, _ = maxvol.configuration_rows(engine, cfg, "nbh")
        nbh = np.zeros(len(cfg))
        nbh[real] = active.row_grades(rows) if len(rows) else 0.0
        worst = int(real[np.argmax(nbh[real])]) if len(real) else -1
        return GradeResult(float(nbh.max(initial=0.0)), nbh, worst)
    if active.force_weight != 0.0 or active.stress_weight != 0.0:
        raise InputError("configuration grades with force or stress rows are not defined for "
                         "clusters with ghost atoms; use mode \"nbh\"", field="mode")
    if len(real) == 0:
        return GradeResult(0.0)
    site = engine.param_gradients(cfg, site=True)["site_param_grad"][real]
    scale = float(len(real)) ** (active.weight_scaling / 2.0)
    row = active.energy_weight * site.sum(axis=0) / scale
    return GradeResult(float(active.row_grades(row)[0]))


# --------------------------------------------------------------------------- selection
def _rows_of(engine: MTPEngine, configs: list[Configuration], mode: str, what: str,
             progress: Progress | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, configuration of each row, equation of each row), with progress messages."""
    blocks, owner, eqns = [np.zeros((0, engine.pot.n_params))], [np.zeros(0, dtype=np.int64)], \
        [np.zeros(0, dtype=np.int64)]
    t0 = last = time.perf_counter()
    count = 0
    for k, cfg in enumerate(configs):
        try:
            rows, eq = maxvol.configuration_rows(engine, cfg, mode)
        except InputError as exc:
            raise ConfigurationError(exc, what, k) from exc
        blocks.append(rows)
        owner.append(np.full(len(rows), k, dtype=np.int64))
        eqns.append(eq)
        count += len(rows)
        now = time.perf_counter()
        if progress is not None and now - last > PROGRESS_EVERY_S:
            progress(f"{what}: rows of {k + 1}/{len(configs)} configurations "
                     f"({count / (now - t0):.0f} rows/s)")
            last = now
    if progress is not None:
        dt = max(time.perf_counter() - t0, 1e-9)
        progress(f"{what}: {count} rows from {len(configs)} configurations in {dt:.2f} s "
                 f"({count / dt:.0f} rows/s)")
    return np.concatenate(blocks), np.concatenate(owner), np.concatenate(eqns)


def select_new(pot: MTPPotential, training: list[Configuration], candidates: list[Configuration],
               mode: str = "auto", threshold: float = 1.001, limit: int | None = None,
               min_grade: float | None = None, *, engine: MTPEngine | None = None,
               progress: Progress | None = None) -> SelectResult:
    """Candidates to add to ``training`` (MLIP-3's ``select_add``).

    One MaxVol pass over the rows of training ∪ candidates (and the initial rows
    1e-6·e_j), starting from the training set's own MaxVol set, so training rows win ties;
    the candidates that hold a slot of the final set are returned.

    ``limit``: at most that many candidates. MaxVol takes the largest pivot first; once
    rows of ``limit`` candidates are in the set, rows of the other candidates are no
    longer swapped in, and the pass converges over the training rows and the admitted
    candidates. The admitted candidates are thus the most extrapolative ones, and the set
    stays a MaxVol set (|B A⁻¹| ≤ threshold) over training ∪ selected.
    ``min_grade``: candidates whose grade before selection is ≤ it are left out of the
    pass. ``candidate_grades`` are against the training set's MaxVol set.
    """
    mode = resolve_mode(pot, mode)
    if threshold < 1.0:
        raise InputError(f"must be >= 1, got {threshold}", field="threshold")
    if limit is not None and limit < 0:
        raise InputError(f"must be >= 0, got {limit}", field="limit")
    engine = MTPEngine(pot) if engine is None else engine
    n = pot.n_params
    Bt, t_cfg, t_eqn = _rows_of(engine, training, mode, "training", progress)
    Bc, c_cfg, c_eqn = _rows_of(engine, candidates, mode, "candidates", progress)

    # the training set's own MaxVol set, from 1e-6·I, with the initial rows in the pool
    base = np.vstack([Bt, maxvol.INITIAL_DIAGONAL * np.eye(n)])
    first_initial = len(Bt)
    initial = maxvol.maxvol(base, matrix=base[first_initial:], rows=first_initial + np.arange(n),
                            threshold=threshold)

    candidate_grades = np.zeros(len(candidates))
    if len(Bc):
        g = maxvol.grades(Bc, initial.inverse)
        np.maximum.at(candidate_grades, c_cfg, g)
    has_rows = np.bincount(c_cfg, minlength=len(candidates)) > 0
    if min_grade is not None:
        has_rows &= candidate_grades > min_grade
    considered = np.flatnonzero(has_rows).tolist()
    keep = has_rows[c_cfg]
    pool = np.vstack([base, Bc[keep]])
    n_base = len(base)
    groups = np.concatenate([np.full(n_base, -1, dtype=np.int64), c_cfg[keep]])
    if progress is not None:
        progress(f"MaxVol over {len(pool)} rows ({len(Bt)} training, {n} initial, "
                 f"{int(keep.sum())} from {len(considered)} candidates), n = {n}")
    t0 = time.perf_counter()
    sel = maxvol.maxvol(pool, matrix=initial.matrix, rows=initial.rows, threshold=threshold,
                        groups=groups, max_groups=limit,
                        progress=None if progress is None else
                        (lambda s, p: progress(f"MaxVol: {s} swaps, pivot {p:.4g}")))
    if progress is not None:
        dt = time.perf_counter() - t0
        progress(f"MaxVol: {sel.swaps} swaps in {dt:.2f} s ({sel.swaps / max(dt, 1e-9):.1f} swaps/s over "
                 f"{len(pool)} rows)")
    indices = sorted({int(groups[r]) for r in sel.rows if r >= 0 and groups[r] >= 0})
    pool_candidate = groups.copy()
    pool_training = np.concatenate([t_cfg, np.full(n, -1, dtype=np.int64),
                                    np.full(int(keep.sum()), -1, dtype=np.int64)])
    pool_eqn = np.concatenate([t_eqn, np.full(n, -1, dtype=np.int64), c_eqn[keep]])
    return SelectResult(indices, candidate_grades, sel, mode, initial, pool_candidate, pool_training,
                        pool_eqn, considered)


def selected_configurations(candidates: list[Configuration], result: SelectResult
                            ) -> list[Configuration]:
    """Copies of the selected candidates with MLIP-3's ``selected_eqn_inds`` feature (the
    equations of each that hold a slot of the final active set)."""
    _, cand, eqn = result.slot_sources()
    out = []
    for k in result.indices:
        cfg = candidates[k].copy()
        cfg.features = dict(cfg.features)
        cfg.features["selected_eqn_inds"] = ",".join(str(int(e)) for e in sorted(eqn[cand == k]))
        out.append(cfg)
    return out


def updated_potential(pot: MTPPotential, training: list[Configuration],
                      candidates: list[Configuration], result: SelectResult,
                      threshold: float = 1.001) -> MTPPotential:
    """A copy of ``pot`` whose active set is recomputed over training ∪ selected.

    The set is the one :func:`maxvol.attach_active_set` (and ``mmtp train``) builds from
    scratch over the training set extended by the selected candidates, so it is also the
    set the next :func:`select_new` with that training set starts from. It grades every
    row of training ∪ selected ≤ ``threshold``; a candidate left out may grade a little
    above it (MaxVol finds a local optimum, and this one is not the selection pass's).
    """
    new = pot.copy()
    maxvol.attach_active_set(new, list(training) + [candidates[k] for k in result.indices],
                             mode=result.mode, threshold=threshold)
    return new
