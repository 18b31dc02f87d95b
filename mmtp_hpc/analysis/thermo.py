"""Thermodynamics over time: T, energies per atom, pressure, volume, |M| and max γ per frame.

Input is the per-frame scalars an MD trajectory stores (names of
:class:`mmtp_hpc.io.schema.Trajectory`); output is a table of columns with units in
their names, ready for a CSV file or :func:`mmtp_hpc.analysis.plots.plot_thermo`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# output column -> (trajectory dataset, divide by the number of atoms)
_COLUMNS: dict[str, tuple[str, bool]] = {
    "temperature_K": ("temperature", False),
    "potential_energy_eV_per_atom": ("potential_energy", True),
    "kinetic_energy_eV_per_atom": ("kinetic_energy", True),
    "conserved_energy_eV_per_atom": ("conserved_energy", True),
    "pressure_GPa": ("pressure", False),
    "volume_A3_per_atom": ("volume", True),
    "magnetization_uB": ("magnetization", False),
    "moment_mean_uB": ("moment_mean", False),
    "moment_abs_mean_uB": ("moment_abs_mean", False),
}


def thermo_table(step: np.ndarray, time_fs: np.ndarray, scalars: Mapping[str, np.ndarray],
                 n_atoms: int, nbh_grades: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Columns ``step``, ``time_ps`` and every quantity present (see ``_COLUMNS``), plus
    ``magnetization_per_atom_uB`` (|Σ m_i|/N), ``total_energy_eV_per_atom`` (E_pot + E_kin)
    and ``max_grade`` (the largest
    neighbourhood grade of the frame when stored, else the configuration grade; NaN
    where no grade was computed)."""
    table: dict[str, np.ndarray] = {"step": np.asarray(step, dtype=np.int64),
                                    "time_ps": np.asarray(time_fs, dtype=np.float64) / 1000.0}
    for column, (name, per_atom) in _COLUMNS.items():
        if name in scalars:
            values = np.asarray(scalars[name], dtype=np.float64)
            table[column] = values / n_atoms if per_atom else values
    if "magnetization" in scalars:
        table["magnetization_per_atom_uB"] = np.asarray(scalars["magnetization"], dtype=np.float64) / n_atoms
    if "potential_energy" in scalars and "kinetic_energy" in scalars:
        table["total_energy_eV_per_atom"] = (np.asarray(scalars["potential_energy"])
                                             + np.asarray(scalars["kinetic_energy"])) / n_atoms
    if nbh_grades is not None and len(nbh_grades):
        grades = np.asarray(nbh_grades, dtype=np.float64)
        finite = np.isfinite(grades).any(axis=1)
        table["max_grade"] = np.where(finite, np.nanmax(np.where(np.isfinite(grades), grades, -np.inf),
                                                         axis=1), np.nan)
    elif "grade" in scalars:
        table["max_grade"] = np.asarray(scalars["grade"], dtype=np.float64)
    return table


def averages(table: Mapping[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """(mean, standard deviation) over frames of every float column (NaNs ignored);
    ``max_grade`` reports (max, NaN) instead."""
    out: dict[str, tuple[float, float]] = {}
    for name, values in table.items():
        if name in ("step", "time_ps"):
            continue
        values = np.asarray(values, dtype=np.float64)
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            out[name] = (np.nan, np.nan)
        elif name == "max_grade":
            out[name] = (float(finite.max()), np.nan)
        else:
            out[name] = (float(finite.mean()), float(finite.std()))
    return out
