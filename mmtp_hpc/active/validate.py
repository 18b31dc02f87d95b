"""Validation of a magnetic potential against direct DFT: E(a), P(a), relaxed moments, E(m), ∂E/∂m.

This module's single job is the side-by-side comparison of the Fe–Al paper's Fig. 3 with a
real oracle, run by ``mmtp validate``:

1. **Ground state vs lattice parameter.** At each a the oracle computes the *unconstrained*
   magnetic ground state (moments free, started from ``start``), and the potential relaxes its
   moments from the same start (:func:`mmtp_hpc.analysis.scan.scan_structures`). Compared:
   E(a) − E(a_ref) (meV/atom), the pressure (GPa) and the relaxed moment per species (μB).
2. **E(m) and ∂E/∂m at fixed a** for uniform constrained moments on the first species (the
   magnetic one); the other species keep the oracle's treatment (e.g. free Al). The potential
   is evaluated at the moments the oracle actually reached.
3. **Antiparallel pairs**: E(m, −m) − E(m, m) per atom at a_ref on the first species'
   atoms (the cell is doubled along x when it holds only one such atom).

DFT results live in ``workdir`` (one :func:`~mmtp_hpc.active.oracles.label_batch` folder per
part), so a rerun reuses them and only evaluates the potential again. An ensemble (other
members trained on the same data) adds its spread: a band in the figures and the mean
standard deviation of E/N inside and outside the lattice-parameter range of the training data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmtp_hpc.active.oracles import OracleError
from mmtp_hpc.errors import InputError
from mmtp_hpc.system.configuration import EV_PER_A3_TO_GPA, Configuration
from mmtp_hpc.system.lattice import bulk

# criterion name -> (default tolerance, unit, description)
CRITERIA = {
    "moment": (0.05, "μB", "relaxed moment of the first species, max |Δ| over a"),
    "energy": (5.0, "meV/atom", "E(a) − E(a_ref), max |Δ| over a"),
    "pressure": (1.5, "GPa", "pressure of the relaxed state, max |Δ| over a"),
    "energy_m": (10.0, "meV/atom", "E(m) at fixed a, max |Δ| over m"),
    "gradient_m": (0.05, "eV/μB", "∂E/∂m at fixed a, max |Δ| over m"),
    "antiparallel": (20.0, "meV/atom", "E(antiparallel) − E(parallel), |Δ|"),
}


@dataclass
class Validation:
    """Numbers of one validation (DFT ``dft_*``, potential ``pot_*``; per-atom energies in eV)."""

    species: list[str]
    a: np.ndarray
    a_ref: float
    dft_energy: np.ndarray
    pot_energy: np.ndarray
    dft_pressure: np.ndarray
    pot_pressure: np.ndarray
    dft_moments: dict[str, np.ndarray]
    pot_moments: dict[str, np.ndarray]
    a_moment: float | None = None
    m_values: np.ndarray | None = None
    dft_energy_m: np.ndarray | None = None
    pot_energy_m: np.ndarray | None = None
    dft_gradient_m: np.ndarray | None = None
    pot_gradient_m: np.ndarray | None = None
    antiparallel_m: float | None = None
    dft_antiparallel: float | None = None      # eV/atom
    pot_antiparallel: float | None = None
    curve_a: np.ndarray | None = None          # dense potential curves (and the ensemble's)
    curve_energy: np.ndarray | None = None
    curve_pressure: np.ndarray | None = None
    curve_moment: np.ndarray | None = None
    band_energy: np.ndarray | None = None      # ensemble std of E/N (eV/atom) on curve_a
    band_pressure: np.ndarray | None = None
    band_moment: np.ndarray | None = None
    members_energy_m: np.ndarray | None = None   # (members, m) E(m) on curve_m
    curve_m: np.ndarray | None = None            # dense E(m), dE/dm of the potential
    curve_energy_m: np.ndarray | None = None
    curve_gradient_m: np.ndarray | None = None
    trained_a: tuple[float, float] | None = None
    failures: list[str] = field(default_factory=list)
    tolerances: dict[str, float] = field(default_factory=dict)
    reference: str = "DFT"                     # what the oracle is, for legends
    constrained_points: list[float] = field(default_factory=list)   # a where dE/dm = 0 was searched
    moved_points: list[float] = field(default_factory=list)   # a where the free SCF stopped off the root

    def errors(self) -> dict[str, float]:
        """Max |potential − DFT| of every criterion that was computed (units of CRITERIA)."""
        first = self.species[0]
        k_ref = int(np.argmin(np.abs(self.a - self.a_ref)))
        out = {"moment": float(np.nanmax(np.abs(self.pot_moments[first] - self.dft_moments[first]))),
               "energy": 1e3 * float(np.nanmax(np.abs((self.pot_energy - self.pot_energy[k_ref])
                                                      - (self.dft_energy - self.dft_energy[k_ref])))),
               "pressure": float(np.nanmax(np.abs(self.pot_pressure - self.dft_pressure)))}
        if self.m_values is not None and len(self.m_values):
            out["energy_m"] = 1e3 * float(np.nanmax(np.abs(self.pot_energy_m - self.dft_energy_m)))
            out["gradient_m"] = float(np.nanmax(np.abs(self.pot_gradient_m - self.dft_gradient_m)))
        if self.dft_antiparallel is not None:
            out["antiparallel"] = 1e3 * abs(self.pot_antiparallel - self.dft_antiparallel)
        return out

    def passed(self) -> dict[str, bool]:
        return {k: bool(v <= self.tolerances.get(k, CRITERIA[k][0])) for k, v in self.errors().items()}

    def spread_inside_outside(self) -> tuple[float, float] | None:
        """Mean ensemble std of E/N (meV/atom) on the curve inside and outside the trained range."""
        if self.band_energy is None or self.trained_a is None or self.curve_a is None:
            return None
        lo, hi = self.trained_a
        inside = (self.curve_a >= lo - 1e-9) & (self.curve_a <= hi + 1e-9)
        if inside.all() or not inside.any():
            return None
        return 1e3 * float(self.band_energy[inside].mean()), 1e3 * float(self.band_energy[~inside].mean())

    def table_rows(self) -> list[list[str]]:
        """Markdown rows: quantity, max |Δ|, tolerance, pass."""
        rows = []
        errors, ok = self.errors(), self.passed()
        for k, v in errors.items():
            tol = self.tolerances.get(k, CRITERIA[k][0])
            unit, what = CRITERIA[k][1], CRITERIA[k][2]
            rows.append([what, f"{v:.3g} {unit}", f"{tol:g} {unit}", "pass" if ok[k] else "FAIL"])
        return rows

    def markdown(self) -> str:
        first = self.species[0]
        lines = ["| a (Å) | E−E_ref DFT | E−E_ref pot | P DFT (GPa) | P pot | "
                 + " | ".join(f"m_{s} DFT | m_{s} pot" for s in self.species) + " |",
                 "|" + "---|" * (5 + 2 * len(self.species))]
        k_ref = int(np.argmin(np.abs(self.a - self.a_ref)))
        for k, a in enumerate(self.a):
            de_d = 1e3 * (self.dft_energy[k] - self.dft_energy[k_ref])
            de_p = 1e3 * (self.pot_energy[k] - self.pot_energy[k_ref])
            cells = [f"{a:.3f}", f"{de_d:.1f}", f"{de_p:.1f}", f"{self.dft_pressure[k]:.2f}",
                     f"{self.pot_pressure[k]:.2f}"]
            for s in self.species:
                cells += [f"{self.dft_moments[s][k]:.3f}", f"{self.pot_moments[s][k]:.3f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines.append(f"Energies in meV/atom relative to a_ref = {self.a_ref:g} Å; moments in μB "
                     f"(the first species, {first}, is the one the criteria use).")
        if self.constrained_points:
            lines.append("At a = " + ", ".join(f"{a:g}" for a in self.constrained_points) + " Å the free "
                         "SCF did not converge; the ground state there is the constrained one with "
                         f"dE/dm = 0 on {first} (secant search).")
        if self.moved_points:
            lines.append("At a = " + ", ".join(f"{a:g}" for a in self.moved_points) + " Å the free SCF "
                         f"stopped at a moment where dE/dm on {first} was not 0 (a flat landscape near "
                         "the transition); the ground state there is the constrained root.")
        lines.append("Every DFT ground state is a root of dE/dm from constrained runs: |dE/dm| ≤ 5e-4 "
                     "eV/μB, or bracketed within 0.02 μB, or dE/dm > 0 down to 0.05 μB (m = 0).")
        if self.m_values is not None and len(self.m_values):
            lines += ["", f"| m (μB), a = {self.a_moment:g} Å | E DFT (eV/atom) | E pot − E DFT (meV/atom) "
                      "| ∂E/∂m DFT (eV/μB) | ∂E/∂m pot |", "|---|---|---|---|---|"]
            for j, m in enumerate(self.m_values):
                lines.append(f"| {m:.2f} | {self.dft_energy_m[j]:.4f} | "
                             f"{1e3 * (self.pot_energy_m[j] - self.dft_energy_m[j]):+.1f} | "
                             f"{self.dft_gradient_m[j]:+.4f} | {self.pot_gradient_m[j]:+.4f} |")
        if self.dft_antiparallel is not None:
            lines += ["", f"Antiparallel pair at a = {self.a_ref:g} Å, |m| = {self.antiparallel_m:g} μB: "
                      f"E(↑↓) − E(↑↑) = {1e3 * self.dft_antiparallel:.1f} meV/atom (DFT), "
                      f"{1e3 * self.pot_antiparallel:.1f} meV/atom (potential)."]
        lines += ["", "| criterion | max \\|Δ\\| | tolerance | |", "|---|---|---|---|"]
        lines += ["| " + " | ".join(r) + " |" for r in self.table_rows()]
        spread = self.spread_inside_outside()
        if spread is not None:
            lines += ["", f"Ensemble spread of E/N: {spread[0]:.2f} meV/atom inside the trained range "
                      f"{self.trained_a[0]:g}–{self.trained_a[1]:g} Å, {spread[1]:.2f} meV/atom outside."]
        if self.failures:
            lines += ["", "DFT points that failed (left out): " + "; ".join(self.failures)]
        return "\n".join(lines)


def _type0_alternating(cfg: Configuration, m: float) -> np.ndarray:
    """Moments +m, −m, +m, … on the type-0 atoms in order of their x, y, z (others keep theirs)."""
    out = np.array(cfg.magmoms, dtype=float)
    idx = np.flatnonzero(cfg.types == 0)
    order = idx[np.lexsort(cfg.positions[idx].T[::-1])]
    for j, i in enumerate(order):
        out[i] = m if j % 2 == 0 else -m
    return out


def constrained_ground_state(oracle, cfg: Configuration, workdir: Path, tol: float = 5e-4,
                             m_tol: float = 0.02, max_runs: int = 14, m_start: float | None = None,
                             log: Callable[[str], None] | None = None) -> Configuration:
    """The magnetic ground state of ``cfg`` from constrained runs: the uniform moment m of the
    type-0 atoms where their mean dE/dm vanishes. Found to |dE/dm| / m ≤ ``tol`` eV/μB² (dE/dm
    is odd in m, so it is small at every small m: that alone says nothing), or to a bracket
    (dE/dm < 0 below, > 0 above) no wider than ``m_tol`` μB: secant steps inside the bracket,
    kept a quarter of its width from its ends so that it shrinks; below every point tried,
    secant steps or halving down to 0.05 μB, and where dE/dm > 0 there too the state is
    non-magnetic (m = 0). Near a magnetic transition the curve is flat: 0.002 eV/μB can lie
    0.2 μB from the root. The other atoms keep the
    oracle's treatment (free, or held at their moments). ``m_start`` (default: the mean |m| of
    the type-0 atoms of ``cfg``) is the first point. Every run is kept in ``workdir/m_<moment>``
    and read back by a rerun; the runs already there (an earlier search) count as points from the
    start. Returns the label at the root (of the bracket's two ends, the one
    with the smaller |dE/dm|)."""
    from mmtp_hpc.active.oracles import label_batch

    say = log or (lambda _m: None)
    sel = cfg.types == 0
    if m_start is None:
        m_start = float(np.mean(np.abs(np.asarray(cfg.magmoms)[sel])))
    history: list[tuple[float, float, Configuration]] = []
    floor = 0.05

    def run(m: float) -> tuple[float, Configuration]:
        for m0, g0, lab0 in history:
            if abs(m0 - m) < 1e-9:
                return g0, lab0
        c = cfg.copy()
        mm = np.array(c.magmoms, dtype=float)
        mm[sel] = m
        c.magmoms = mm
        res = label_batch(oracle, [c], Path(workdir) / f"m_{m:.5f}", log=None)
        lab = res.labelled[0]
        if lab.magnetic_gradient is None:
            raise InputError("the oracle gives no dE/dm: the constrained search needs it", field="oracle")
        g = float(np.mean(lab.magnetic_gradient[sel]))
        history.append((m, g, lab))
        say(f"  constrained m = {m:.4f} μB: dE/dm = {g:+.5f} eV/μB")
        return g, lab

    # the runs of an earlier search in this directory (another start, other steps) are points too
    for path in sorted(Path(workdir).glob("m_*/cfg_00000/labelled.cfg")):
        try:
            m_old = float(path.parent.parent.name[2:])
        except ValueError:
            continue
        run(m_old)
    run(max(float(m_start), floor))
    for _ in range(max_runs):
        # done when the points so far (this search's and any found in ``workdir``) settle it, so
        # that a rerun reads the same answer back
        # dE/dm is odd in m (E(m) = E(−m)), so it is small at every small m: what must vanish is
        # dE/dm / m (eV/μB²), not dE/dm
        close = [h for h in history if h[0] > 0 and abs(h[1]) <= tol * h[0]]
        if close:
            return min(close, key=lambda h: abs(h[1]) / h[0])[2]
        pts = sorted((h for h in history if h[0] > 0), key=lambda p: p[0])
        # minima: dE/dm from − to + between neighbouring points; m = 0 is one where dE/dm > 0 at
        # the smallest moment. Of several (a first-order transition), the lowest in energy
        brackets = [(p, q) for p, q in zip(pts, pts[1:], strict=False) if p[1] < 0 < q[1]]
        best = min(brackets, key=lambda b: min(b[0][2].energy, b[1][2].energy)) if brackets else None
        lowest = min(best[0][2].energy, best[1][2].energy) if best is not None else None
        if best is not None and pts[0][1] > 0 and pts[0][2].energy < lowest:
            best = None                      # the non-magnetic side is lower: follow it to m = 0
        pos = [p for p in pts if p[1] > 0] if best is None and pts[0][1] > 0 else []
        neg = [p for p in pts if p[1] < 0] if best is None and not pos else []
        if best is not None:                 # bracketed
            (m_lo, g_lo, lab_lo), (m_hi, g_hi, lab_hi) = best
            if m_hi - m_lo <= m_tol:
                return lab_lo if abs(g_lo) < abs(g_hi) else lab_hi
            w = m_hi - m_lo
            m_new = m_lo - g_lo * w / (g_hi - g_lo)
            m_new = min(max(m_new, m_lo + 0.25 * w), m_hi - 0.25 * w)
        elif pos:                            # the root is below every point tried
            m_min, g_min = pos[0][0], pos[0][1]
            if m_min <= floor + 1e-9:
                return run(0.0)[1]           # dE/dm > 0 down to 0.05 μB: non-magnetic
            # a secant step from the two lowest points where it stays above half the moment, else
            # a small probe below (dE/dm small) or half the moment (towards m = 0, through a flat
            # landscape in a few runs)
            secant = None
            if len(pos) > 1 and pos[1][1] != g_min:
                secant = m_min - g_min * (pos[1][0] - m_min) / (pos[1][1] - g_min)
            if secant is not None and 0.5 * m_min <= secant < m_min:
                m_new = secant
            else:
                m_new = m_min - 0.1 if g_min < 0.01 and m_min > 0.3 else 0.5 * m_min
            m_new = max(m_new, floor)
        else:                                # the root is above every point tried
            (m_a, g_a, _), (m_b, g_b, _) = (pts[-2], pts[-1]) if len(pts) > 1 else (pts[-1], pts[-1])
            secant = m_b - g_b * (m_b - m_a) / (g_b - g_a) if g_b != g_a and m_b != m_a else None
            m_max = neg[-1][0]
            m_new = secant if secant is not None and 0 < secant - m_max <= 0.5 else m_max + 0.3
        run(float(m_new))
    raise InputError(f"no ground state within {max_runs} constrained runs (|dE/dm| ≤ {tol:g} eV/μB² · m "
                     f"or a bracket of {m_tol:g} μB): " + ", ".join(f"{m:.3f}: {gg:+.2g}" for m, gg, _ in
                                                               sorted(history, key=lambda h: h[0])))


def _reference_name(oracle) -> str:
    writer = getattr(getattr(oracle, "writer", None), "name", "")
    return {"abinit": "DFT (ABINIT)", "vasp": "DFT (VASP)"}.get(writer, getattr(oracle, "name", "reference"))


def _oriented(scan, first: str):
    """``scan`` with every point's moments flipped (M -> -M) where the first species' mean is < 0."""
    flip = np.where(scan.moment_mean[first] < 0, -1.0, 1.0)
    for key in scan.moment_mean:
        scan.moment_mean[key] = scan.moment_mean[key] * flip
    return scan


def _inside_interval(pot, values: Sequence[float], species: int | None = None) -> list[float]:
    """``values`` (one per species, or several of ``species``) clipped into the potential's
    magnetic interval(s)."""
    if not pot.magnetic:
        return [float(v) for v in values]
    lo, hi = np.asarray(pot.mag_min, dtype=float), np.asarray(pot.mag_max, dtype=float)
    if species is not None:
        return [float(np.clip(v, lo[species], hi[species])) for v in values]
    return [float(np.clip(v, lo[min(k, len(lo) - 1)], hi[min(k, len(hi) - 1)])) for k, v in enumerate(values)]


def _with_moments(cfg: Configuration, start: Sequence[float]) -> Configuration:
    c = cfg.copy()
    c.magmoms = np.asarray(start, dtype=float)[c.types]
    return c


def validate(potential, oracle, species: Sequence[str], lattice: str, a_values: Sequence[float],
             a_ref: float, start: Sequence[float] | None = None, workdir: str | Path = "validation",
             moment_values: Sequence[float] = (), a_moment: float | None = None,
             antiparallel_m: float | None = None, members: Sequence = (),
             curve: Sequence[float] | None = None, trained_a: tuple[float, float] | None = None,
             symmetric: bool | None = None, tolerances: dict[str, float] | None = None,
             check_free: bool = True, log: Callable[[str], None] | None = None) -> Validation:
    """Run the DFT parts (cached in ``workdir``) and the potential's, and compare them.

    ``potential``: an :class:`~mmtp_hpc.potentials.mtp.engine.MTPEngine`; ``members``: more
    engines (an ensemble) for the spread; ``oracle``: a constrained-moment oracle with
    :meth:`unconstrained` (the command oracle); ``start``: start moments per species (default:
    the upper end of the potential's magnetic interval per species: independent of the
    potential's answer). ``curve``: lattice parameters of the dense potential curves (default
    ``a_values`` widened by 0.1 Å each side). ``check_free``: check every converged free SCF
    with constrained runs at its moments (the other species held at the free SCF's moments where
    the oracle constrains them) and take the root of dE/dm where it is off (default); False trusts
    the free SCF where it converged.
    """
    from mmtp_hpc.active.oracles import label_batch
    from mmtp_hpc.analysis.scan import scan_structures

    say = log or (lambda _m: None)
    workdir = Path(workdir)
    species = list(species)
    a_values = np.asarray(sorted(a_values), dtype=float)
    if not np.any(np.isclose(a_values, a_ref)):
        raise InputError(f"a_ref = {a_ref:g} Å must be one of the lattice parameters {a_values.tolist()}",
                         field="a_ref")
    pot = potential.pot
    if start is None:
        start = [float(x) for x in np.asarray(pot.mag_max, dtype=float)[:len(species)]]
    start = [float(x) for x in np.atleast_1d(start)]
    if len(start) == 1 and len(species) > 1:
        raise InputError(f"give one start moment per species {species}", field="start")
    sub = (0, 1) if len(species) > 1 else (0, 0)
    structures = [_with_moments(bulk(lattice, a, 1, sublattice_types=sub), start) for a in a_values]
    free = getattr(oracle, "unconstrained", None)
    if free is None:
        raise InputError("the oracle has no unconstrained (ground-state) mode; use a command oracle "
                         "with writer = \"abinit\"", field="oracle")
    say(f"validate: DFT ground states at {len(a_values)} lattice parameters ({workdir / 'ground_state'})")
    free_oracle = free()
    if getattr(free_oracle, "retry", None):
        # a free SCF that wanders (near a magnetic transition) does not settle with more steps;
        # the constrained search below converges there, so the free run is not retried
        free_oracle.retry = []
    batch = label_batch(free_oracle, structures, workdir / "ground_state", log=say, skip_failures=True)
    failures = []
    root_points = []
    moved_points = []
    for k, f in enumerate(batch.failures):
        if f is None and not check_free:
            continue
        if f is None:
            # the free SCF can stop where dE/dm ≠ 0 when the landscape is flat (near a magnetic
            # transition: critical slowing down): check it with a constrained run at its moment,
            # and search the root from there where dE/dm is not ≈ 0
            free_lab = batch.labelled[k]
            m_free = float(np.mean(np.abs(free_lab.magmoms[free_lab.types == 0])))
            # the other species where the free SCF left them (an oracle that constrains them holds
            # them there: a moment forced to 0 instead would move the first species' root)
            probe = structures[k].copy()
            probe.magmoms = np.array(free_lab.magmoms, dtype=float)
            try:
                checked = constrained_ground_state(
                    oracle, probe, workdir / "ground_state_checked" / f"cfg_{k:05d}",
                    m_start=m_free, log=say)
            except (InputError, OracleError) as exc:
                failures.append(f"ground state a = {a_values[k]:g}: the free SCF's moment {m_free:.3f} μB "
                                f"could not be checked: {exc}")
                batch.labelled[k] = None
                continue
            m_checked = float(np.mean(np.abs(checked.magmoms[checked.types == 0])))
            if abs(m_checked - m_free) > 0.02:
                say(f"validate: a = {a_values[k]:g}: the free SCF stopped at {m_free:.3f} μB, the root of "
                    f"dE/dm is at {m_checked:.3f} μB")
                batch.labelled[k] = checked
                moved_points.append(float(a_values[k]))
            continue
        # near a magnetic transition the free SCF wanders; constrained runs converge: find the
        # moment where dE/dm = 0 with them instead (and say so)
        say(f"validate: the free ground state at a = {a_values[k]:g} failed ({f.kind}); searching "
            "dE/dm = 0 with constrained runs")
        try:
            batch.labelled[k] = constrained_ground_state(
                oracle, structures[k], workdir / "ground_state_constrained" / f"cfg_{k:05d}", log=say)
            root_points.append(float(a_values[k]))
        except (InputError, OracleError) as exc:
            failures.append(f"ground state a = {a_values[k]:g}: {f.kind}: {f.reason}; constrained "
                            f"search: {exc}")
    keep = [k for k, c in enumerate(batch.labelled) if c is not None]
    if len(keep) < 2 or not any(np.isclose(a_values[k], a_ref) for k in keep):
        raise InputError("too few DFT ground states (or none at a_ref) finished: " + "; ".join(failures))
    a_ok = a_values[keep]
    dft = [batch.labelled[k] for k in keep]
    dft_e = np.array([c.energy / len(c) for c in dft])
    dft_p = np.array([np.trace(c.virial) / (3 * c.volume) * EV_PER_A3_TO_GPA for c in dft])
    types = sorted({int(t) for t in structures[0].types})
    names = {t: species[t] for t in types}
    # M -> -M: a ground state and its flipped twin are the same state; report the one whose
    # first species has a non-negative mean moment (for DFT and potential alike)
    sign = [1.0 if c.magmoms[c.types == types[0]].mean() >= 0 else -1.0 for c in dft]
    dft_m = {names[t]: np.array([s * c.magmoms[c.types == t].mean() for s, c in zip(sign, dft, strict=True)])
             for t in types}
    say("validate: relaxing the potential's moments (same start)")
    # the same start, inside the potential's magnetic interval (DFT may be started at its edge,
    # e.g. 3.0 μB when the data reached 2.99996 μB)
    pstart = _inside_interval(pot, start)
    scan = _oriented(scan_structures(potential, [structures[k] for k in keep], a_ok, species,
                                     magmoms=pstart, relax=True, tol=1e-6, symmetric=symmetric,
                                     warm_start=False), names[types[0]])
    out = Validation(species=[names[t] for t in types], a=a_ok, a_ref=float(a_ref), dft_energy=dft_e,
                     pot_energy=scan.energy_per_atom, dft_pressure=dft_p, pot_pressure=scan.pressure,
                     dft_moments=dft_m, pot_moments=scan.moment_mean, failures=failures,
                     tolerances=dict(tolerances or {}), trained_a=trained_a,
                     reference=_reference_name(oracle), constrained_points=root_points,
                     moved_points=moved_points)

    # dense curves and the ensemble band
    if curve is None:
        curve = np.linspace(a_values[0] - 0.1, a_values[-1] + 0.1, 41)
    curve = np.asarray(curve, dtype=float)
    dense = [_with_moments(bulk(lattice, a, 1, sublattice_types=sub), pstart) for a in curve]
    k_ref = int(np.argmin(np.abs(curve - a_ref)))
    main = _oriented(scan_structures(potential, dense, curve, species, magmoms=pstart, relax=True,
                                     tol=1e-6, symmetric=symmetric), names[types[0]])
    out.curve_a, out.curve_energy, out.curve_pressure = curve, main.energy_per_atom, main.pressure
    out.curve_moment = main.moment_mean[names[types[0]]]
    if members:
        es, ps, ms = [], [], []
        for j, member in enumerate(members):
            s = _oriented(scan_structures(member, dense, curve, species, magmoms=pstart, relax=True,
                                          tol=1e-6, symmetric=symmetric), names[types[0]])
            es.append(s.energy_per_atom - s.energy_per_atom[k_ref])
            ps.append(s.pressure)
            ms.append(s.moment_mean[names[types[0]]])
            say(f"validate: ensemble member {j + 1}/{len(members)} scanned")
        out.band_energy, out.band_pressure, out.band_moment = (np.std(x, axis=0) for x in (es, ps, ms))

    # E(m) and dE/dm at fixed a
    if len(moment_values):
        a_m = float(a_ref if a_moment is None else a_moment)
        base = _with_moments(bulk(lattice, a_m, 1, sublattice_types=sub), start)
        cfgs = []
        for m in moment_values:
            c = base.copy()
            mm = np.array(c.magmoms)
            mm[c.types == 0] = m
            c.magmoms = mm
            cfgs.append(c)
        say(f"validate: constrained DFT at a = {a_m:g} Å for m = {list(moment_values)}")
        mb = label_batch(oracle, cfgs, workdir / "moments", log=say, skip_failures=True)
        out.failures += [f"E(m) m = {moment_values[k]:g}: {f.kind}: {f.reason}"
                         for k, f in enumerate(mb.failures) if f is not None]
        done = [k for k, c in enumerate(mb.labelled) if c is not None]
        out.a_moment = a_m
        out.m_values = np.array([moment_values[k] for k in done])
        out.dft_energy_m, out.pot_energy_m = np.zeros(len(done)), np.zeros(len(done))
        out.dft_gradient_m, out.pot_gradient_m = np.zeros(len(done)), np.zeros(len(done))
        for j, k in enumerate(done):
            lab = mb.labelled[k]
            sel = lab.types == 0
            ev = potential.evaluate(lab, lab.magmoms, symmetric=symmetric)
            out.dft_energy_m[j] = lab.energy / len(lab)
            out.pot_energy_m[j] = ev["energy"] / len(lab)
            out.dft_gradient_m[j] = float(np.mean(lab.magnetic_gradient[sel]))
            out.pot_gradient_m[j] = float(np.mean(ev["magnetic_gradient"][sel]))
        if done:                 # dense curves through the same cell (other species as in DFT)
            base_lab = mb.labelled[done[0]]
            sel0 = base_lab.types == 0
            lo0, hi0 = _inside_interval(pot, [min(moment_values), max(moment_values)], species=0)
            out.curve_m = np.linspace(lo0, hi0, 41)     # the potential's curve inside its interval
            es, gs, mem = [], [], []
            for m in out.curve_m:
                mm = np.array(base_lab.magmoms, dtype=float)
                mm[sel0] = m
                ev = potential.evaluate(base_lab, mm, symmetric=symmetric)
                es.append(ev["energy"] / len(base_lab))
                gs.append(float(np.mean(ev["magnetic_gradient"][sel0])))
                mem.append([mbr.evaluate(base_lab, mm, symmetric=symmetric)["energy"] / len(base_lab)
                            for mbr in members])
            out.curve_energy_m, out.curve_gradient_m = np.array(es), np.array(gs)
            if members:
                out.members_energy_m = np.array(mem).T

    # antiparallel pair
    if antiparallel_m is not None:
        cell = bulk(lattice, a_ref, 1, sublattice_types=sub)
        if int(np.sum(cell.types == 0)) < 2:
            cell = bulk(lattice, a_ref, (2, 1, 1), sublattice_types=sub)
        cell = _with_moments(cell, start)
        par = cell.copy()
        mm = np.array(par.magmoms)
        mm[par.types == 0] = antiparallel_m
        par.magmoms = mm
        anti = cell.copy()
        anti.magmoms = _type0_alternating(par, antiparallel_m)
        say(f"validate: antiparallel vs parallel pair, |m| = {antiparallel_m:g} μB at a = {a_ref:g} Å")
        ab = label_batch(oracle, [par, anti], workdir / "antiparallel", log=say, skip_failures=True)
        if all(c is not None for c in ab.labelled):
            p_lab, a_lab = ab.labelled
            n = len(p_lab)
            out.antiparallel_m = float(antiparallel_m)
            out.dft_antiparallel = (a_lab.energy - p_lab.energy) / n
            e_p = potential.evaluate(p_lab, p_lab.magmoms, symmetric=symmetric)["energy"]
            e_a = potential.evaluate(a_lab, a_lab.magmoms, symmetric=symmetric)["energy"]
            out.pot_antiparallel = (e_a - e_p) / n
        else:
            out.failures += [f"antiparallel: {f.kind}: {f.reason}" for f in ab.failures if f is not None]
    return out


def plot_validation(v: Validation, path: str | Path, title: str = "") -> list[Path]:
    """Two PNGs: ``path`` (E − E_ref, P and the relaxed moment vs a: DFT points, the potential's
    curve, the ensemble's ±1σ band, the trained range shaded) and ``path`` with ``_moments``
    (E(m) and ∂E/∂m at fixed a)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    first = v.species[0]
    k_ref = int(np.argmin(np.abs(v.a - v.a_ref)))
    fig, axes = plt.subplots(3, 1, figsize=(6.4, 8.6), sharex=True)
    ce = 1e3 * (v.curve_energy - np.interp(v.a_ref, v.curve_a, v.curve_energy))
    panels = [(1e3 * (v.dft_energy - v.dft_energy[k_ref]), ce, v.band_energy, 1e3,
               f"E − E(a = {v.a_ref:g} Å) (meV/atom)"),
              (v.dft_pressure, v.curve_pressure, v.band_pressure, 1.0, "pressure (GPa)"),
              (v.dft_moments[first], v.curve_moment, v.band_moment, 1.0, f"relaxed moment {first} (μB)")]
    for ax, (dft, curve, band, scale, label) in zip(axes, panels, strict=True):
        if v.trained_a is not None:
            ax.axvspan(*v.trained_a, color="0.92", zorder=0, label="training range")
        ax.plot(v.curve_a, curve, "-", color="C0", label="mMTP")
        if band is not None:
            ax.fill_between(v.curve_a, curve - scale * band, curve + scale * band, color="C0", alpha=0.25,
                            label="ensemble ±1σ")
        ax.plot(v.a, dft, "o", color="C3", ms=5, label=v.reference)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    for s in v.species[1:]:
        axes[2].plot(v.a, v.dft_moments[s], "s", color="C2", ms=4, label=f"{v.reference} {s}")
        axes[2].plot(v.a, v.pot_moments[s], "x", color="C1", ms=5, label=f"mMTP {s}")
    axes[1].axhline(0.0, color="gray", lw=0.6)
    axes[0].legend(fontsize="small", loc="best")
    axes[2].legend(fontsize="small", loc="best")
    axes[2].set_xlabel("lattice parameter a (Å)")
    fig.suptitle(title or "mMTP vs DFT: relaxed magnetic ground state")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    paths = [path]
    if v.m_values is not None and len(v.m_values):
        fig, axes = plt.subplots(2, 1, figsize=(6.4, 6.2), sharex=True)
        e0 = v.dft_energy_m.min()
        axes[0].plot(v.curve_m, 1e3 * (v.curve_energy_m - e0), "-", color="C0", label="mMTP")
        if v.members_energy_m is not None:
            mem = 1e3 * (v.members_energy_m - e0)
            sd = mem.std(0)
            axes[0].fill_between(v.curve_m, 1e3 * (v.curve_energy_m - e0) - sd,
                                 1e3 * (v.curve_energy_m - e0) + sd, color="C0", alpha=0.25,
                                 label="ensemble ±1σ")
        axes[0].plot(v.m_values, 1e3 * (v.dft_energy_m - v.dft_energy_m.min()), "o", color="C3",
                     label=f"{v.reference}, constrained")
        axes[0].set_ylabel("E − min E_DFT (meV/atom)")
        axes[1].plot(v.curve_m, v.curve_gradient_m, "-", color="C0", label="mMTP")
        axes[1].plot(v.m_values, v.dft_gradient_m, "o", color="C3", label=f"{v.reference}, constrained")
        axes[1].axhline(0.0, color="gray", lw=0.6)
        axes[1].set_ylabel(f"∂E/∂m of {first} (eV/μB)")
        axes[1].set_xlabel(f"uniform constrained moment of {first} (μB), a = {v.a_moment:g} Å")
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
        fig.suptitle(title or "mMTP vs constrained DFT at fixed a")
        fig.tight_layout()
        mpath = path.with_name(path.stem + "_moments" + path.suffix)
        fig.savefig(mpath, dpi=120)
        plt.close(fig)
        paths.append(mpath)
    return paths


