"""Post-processing of MD trajectories and lattice scans: the analyses behind ``mmtp post`` and
``mmtp scan``.

Each module computes one thing from NumPy arrays (never from files), so it can be used on
any trajectory, ours or not:

- :mod:`.thermo` — temperature, energies, pressure, |M| and the extrapolation grade vs time;
- :mod:`.magnetisation` — moments per species vs time and their averages;
- :mod:`.rdf` — radial distribution functions per species pair;
- :mod:`.vacf` — velocity autocorrelation and the vibrational (phonon) density of states;
- :mod:`.msd` — mean-squared displacement and the diffusion coefficient;
- :mod:`.scan` — energy, pressure and relaxed moments vs lattice parameter;
- :mod:`.plots` — the PNG figures of all of the above (matplotlib, Agg, no display);
- :mod:`.csvtable` — tables (dict of columns, units in the names) as CSV.

Reading frames from our HDF5 trajectories: :func:`mmtp_hpc.io.trajectory_frames.read_frames`.
"""

from __future__ import annotations

__all__ = ["csvtable", "magnetisation", "msd", "plots", "rdf", "scan", "thermo", "vacf"]
