"""``mmtp post ANALYSIS TRAJ.h5``: post-process an MD trajectory into tables (CSV) and figures (PNG).

Analyses: ``thermo`` (T, E, P, |M|, max γ vs time), ``magnetisation`` (moments per species
vs time and their averages), ``rdf`` (g(r) per species pair), ``vacf`` (velocity
autocorrelation), ``vdos`` (vibrational DOS from the VACF, total and per species), ``msd``
(mean-squared displacement, diffusion coefficient). Each prints a summary; ``--csv`` writes
the table, ``--plot`` the figure.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from mmtp_hpc.errors import InputError

ANALYSES = ("thermo", "magnetisation", "rdf", "vacf", "vdos", "msd")
_ALIASES = {"magnetization": "magnetisation", "mag": "magnetisation", "dos": "vdos",
            "phonon-dos": "vdos"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("post", help="analyse an MD trajectory (thermo, magnetisation, rdf, vacf, vdos, msd)",
                       description=__doc__.split("\n\n", 1)[1].strip(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    analyses = p.add_subparsers(dest="analysis", metavar="ANALYSIS")

    def add(name: str, help_text: str, aliases: list[str] | None = None) -> argparse.ArgumentParser:
        q = analyses.add_parser(name, help=help_text, description=help_text, aliases=aliases or [])
        q.add_argument("trajectory", help="HDF5 trajectory written by `mmtp md`")
        q.add_argument("--frames", metavar="START:STOP:STEP",
                       help="frames to analyse, Python slice syntax (e.g. 100: to skip equilibration)")
        q.add_argument("--plot", metavar="PNG", help="write a figure")
        q.add_argument("--csv", metavar="CSV", help="write the table")
        q.add_argument("--title", default=None, help="figure title (default: analysis and file name)")
        q.set_defaults(func=run, analysis=name)
        return q

    add("thermo", "temperature, energies, pressure, |M| and max extrapolation grade vs time")
    q = add("magnetisation", "mean moment and mean |moment| per species vs time, and time averages",
            aliases=["magnetization", "mag"])
    q.add_argument("--blocks", type=int, default=5, help="blocks for the error of the averages (default 5)")
    q = add("rdf", "radial distribution function g(r), total and per species pair")
    q.add_argument("--rmax", type=float, default=6.0, help="largest r (Å, default 6)")
    q.add_argument("--bins", type=int, default=200, help="histogram bins (default 200)")
    q.add_argument("--mark", type=float, nargs="+", default=None, metavar="R",
                   help="draw vertical lines at these r (Å), e.g. ideal shell radii")
    for name, text in (("vacf", "mass-weighted velocity autocorrelation, total and per species"),
                       ("vdos", "vibrational (phonon) density of states from the VACF, total and per "
                                "species, normalised to 3N")):
        q = add(name, text, aliases=["dos", "phonon-dos"] if name == "vdos" else None)
        q.add_argument("--max-lag-fs", type=float, default=None,
                       help="longest correlation time (fs; default half the run). Resolution ≈ 1/max lag")
        if name == "vdos":
            q.add_argument("--window", choices=("hann", "none"), default="hann",
                           help="window over the VACF lags (default hann)")
            q.add_argument("--method", choices=("vacf", "spectrum"), default="vacf",
                           help="vacf: Fourier transform of the windowed VACF (default); spectrum: "
                                "periodogram of the velocities")
            q.add_argument("--compare", action="store_true",
                           help="also compute the other method and draw it in the figure")
            q.add_argument("--fmax", type=float, default=None, help="upper frequency of the figure (THz)")
    q = add("msd", "mean-squared displacement per species and the diffusion coefficient")
    q.add_argument("--max-lag-fs", type=float, default=None, help="longest time (fs; default half the run)")
    q.add_argument("--fit-start", type=float, default=0.2,
                   help="fit D on t >= this fraction of the longest time (default 0.2)")
    q.add_argument("--keep-drift", action="store_true",
                   help="keep the centre-of-mass motion (removed by default)")
    p.set_defaults(func=_no_analysis)


def _no_analysis(args: argparse.Namespace) -> int:
    raise InputError(f"name an analysis: mmtp post {{{','.join(ANALYSES)}}} TRAJ.h5 (see mmtp post --help)")


def run(args: argparse.Namespace) -> int:
    from mmtp_hpc.io.trajectory_frames import parse_frames, read_frames

    analysis = _ALIASES.get(args.analysis, args.analysis)
    needs = {"thermo": None, "magnetisation": ["magmoms"], "rdf": ["positions"],
             "vacf": ["velocities"], "vdos": ["velocities"], "msd": ["positions"]}[analysis]
    if analysis == "thermo":
        from mmtp_hpc.io.schema import Trajectory as T
        needs = list(T.SCALARS) + ["nbh_grades"]
    traj = read_frames(args.trajectory, parse_frames(args.frames), needs)
    if traj.n_frames == 0:
        raise InputError("no frames selected", path=args.trajectory, field="frames")
    title = args.title or f"{analysis}: {args.trajectory}"
    out = sys.stdout
    print(f"mmtp post {analysis}: {args.trajectory}: {traj.n_frames} frames (steps {int(traj.step[0])}"
          f"–{int(traj.step[-1])}, {traj.time[0] / 1000:.4g}–{traj.time[-1] / 1000:.4g} ps), "
          f"{traj.n_atoms} atoms, species {', '.join(traj.species) or '?'}", file=out)
    table, comment = globals()[f"_{analysis}"](traj, args, title)
    if args.csv:
        from mmtp_hpc.analysis.csvtable import write_csv

        rows = write_csv(args.csv, table, comment=f"mmtp post {analysis} {args.trajectory}\n{comment}")
        print(f"  table: {args.csv} ({rows} rows; columns {', '.join(table)})", file=out)
    if args.plot:
        print(f"  figure: {args.plot}", file=out)
    return 0


def _species(traj) -> list[str]:
    return traj.species or [f"type{t}" for t in range(int(traj.types.max()) + 1)]


def _max_lag(traj, dt: float, max_lag_fs: float | None) -> int | None:
    return None if max_lag_fs is None else max(2, int(round(max_lag_fs / dt)) + 1)


# ------------------------------------------------------------------ analyses
def _thermo(traj, args, title):
    from mmtp_hpc.analysis.plots import plot_thermo
    from mmtp_hpc.analysis.thermo import averages, thermo_table

    scalars = {k: v for k, v in traj.data.items() if v.ndim == 1}
    table = thermo_table(traj.step, traj.time, scalars, traj.n_atoms, traj.data.get("nbh_grades"))
    lines = []
    for name, (mean, std) in averages(table).items():
        if name == "max_grade":
            lines.append(f"max_grade (max over frames): {mean:.4g}" if np.isfinite(mean)
                         else "max_grade: not computed in this run")
        else:
            lines.append(f"{name}: mean {mean:.6g}, std {std:.3g}")
    for line in lines:
        print("  " + line)
    if args.plot:
        plot_thermo(table, args.plot, title, targets=_targets(traj.settings))
    return table, "\n".join(lines)


def _targets(settings: dict) -> dict[str, float]:
    """Target temperature (NVT, NPT) and pressure (NPT, isotropic) of the run, from its settings."""
    md = (settings or {}).get("md", {}) if isinstance(settings, dict) else {}
    ensemble = str(md.get("ensemble", "")).lower()
    out = {}
    if ensemble in ("nvt", "npt") and md.get("temperature_K") is not None:
        out["temperature_K"] = float(md["temperature_K"])
    pressure = md.get("pressure_GPa")
    if ensemble == "npt" and isinstance(pressure, (int, float)):
        out["pressure_GPa"] = float(pressure)
    return out


def _warn(notes: list[str]) -> None:
    for note in notes:
        print(f"  warning: {note}")


def _magnetisation(traj, args, title):
    from mmtp_hpc.analysis.magnetisation import averages, magnetisation_table
    from mmtp_hpc.analysis.plots import plot_magnetisation

    magmoms = traj.require("magmoms", "the magnetisation")
    species = _species(traj)
    table = magnetisation_table(magmoms, traj.types, species, traj.step, traj.time)
    avg = averages(table, n_blocks=args.blocks)
    lines = [f"{name}: {mean:.5g} ± {err:.2g}" for name, (mean, err) in avg.items()]
    print("  time averages (± block standard error):")
    for line in lines:
        print("    " + line)
    if args.plot:
        plot_magnetisation(table, species, args.plot, title, averages=avg)
    return table, "time averages: " + "; ".join(lines)


def _rdf(traj, args, title):
    from mmtp_hpc.analysis.plots import first_shell, plot_rdf
    from mmtp_hpc.analysis.rdf import peak_positions, radial_distribution, rdf_warnings

    positions = traj.require("positions", "the RDF")
    result = radial_distribution(positions, traj.cell, traj.types, _species(traj), r_max=args.rmax,
                                 n_bins=args.bins, pbc=traj.pbc)
    peaks = peak_positions(result.r, result.total)
    line = "peaks of g(r) at r = " + ", ".join(f"{x:.3f}" for x in peaks) + " Å"
    shell = first_shell(result.r, result.total)
    if shell is not None:
        n_first = result.coordination["total"][int(np.searchsorted(result.r, shell))]
        line += f"; first shell (to the first minimum, {shell:.3f} Å): coordination {n_first:.2f}"
    print(f"  {result.n_frames} frames averaged; {line}")
    volume = float(np.mean(np.abs(np.linalg.det(traj.cell))))
    notes = rdf_warnings(result.n_frames, traj.n_atoms, volume, args.rmax, args.bins)
    _warn(notes)
    if args.plot:
        plot_rdf(result.r, result.total, result.partial, args.plot, title, markers=args.mark,
                 coordination=result.coordination, notes=notes)
    return result.table(), "\n".join([line, *(f"warning: {n}" for n in notes)])


def _vacf_of(traj, args):
    from mmtp_hpc.analysis.vacf import frame_spacing, velocity_autocorrelation

    velocities = traj.require("velocities", "the VACF")
    dt = frame_spacing(traj.time)
    return velocity_autocorrelation(velocities, dt, traj.types, _species(traj), traj.masses,
                                    max_lag=_max_lag(traj, dt, args.max_lag_fs)), velocities, dt


def _vacf(traj, args, title):
    from mmtp_hpc.analysis.plots import plot_dos
    from mmtp_hpc.analysis.vacf import vibrational_dos

    vacf, _, dt = _vacf_of(traj, args)
    line = f"frame spacing {dt:g} fs, {len(vacf.time_fs)} lags (to {vacf.time_fs[-1]:g} fs)"
    print("  " + line)
    if args.plot:
        dos = vibrational_dos(vacf)
        plot_dos(dos.freq_THz, dos.total, dos.partial, args.plot, title,
                 vacf_time_fs=vacf.time_fs, vacf=vacf.normalised())
    return vacf.table(), line


def _vdos(traj, args, title):
    from mmtp_hpc.analysis.plots import plot_dos
    from mmtp_hpc.analysis.vacf import dos_warnings, power_spectrum_dos, vibrational_dos

    vacf, velocities, dt = _vacf_of(traj, args)
    species = _species(traj)
    spectrum = None
    if args.method == "spectrum" or args.compare:
        spectrum = power_spectrum_dos(velocities, dt, traj.types, species, traj.masses)
    dos = vibrational_dos(vacf, window=args.window) if args.method == "vacf" else spectrum
    lines = [f"method {args.method}, frame spacing {dt:g} fs (Nyquist {500.0 / dt:.4g} THz), "
             f"resolution ≈ {dos.resolution_THz:.3g} THz",
             f"∫ DOS dν = {dos.integral():.4f} (3N = {3 * traj.n_atoms}); peak at {dos.peak_THz():.3f} THz"]
    for name, g in dos.partial.items():
        lines.append(f"{name}: ∫ = {dos.integral(g):.3f} (3N_{name} = {3 * dos.counts[name]}), "
                     f"peak {dos.peak_THz(g):.3f} THz")
    for line in lines:
        print("  " + line)
    notes = dos_warnings(dt, traj.n_frames, dos.resolution_THz)
    _warn(notes)
    lines += [f"warning: {n}" for n in notes]
    if args.plot:
        reference = None
        if args.compare:
            other = spectrum if args.method == "vacf" else vibrational_dos(vacf, window=args.window)
            reference = (other.freq_THz, other.total,
                         "periodogram" if args.method == "vacf" else "VACF route")
        plot_dos(dos.freq_THz, dos.total, dos.partial, args.plot, title, vacf_time_fs=vacf.time_fs,
                 vacf=vacf.normalised(), f_max=args.fmax, reference=reference, notes=notes)
    return dos.table(), "\n".join(lines)


def _msd(traj, args, title):
    from mmtp_hpc.analysis.msd import diffusion_coefficient, mean_squared_displacement, unwrap
    from mmtp_hpc.analysis.plots import plot_msd
    from mmtp_hpc.analysis.vacf import frame_spacing

    positions = unwrap(traj.require("positions", "the MSD"), traj.cell, traj.pbc)
    dt = frame_spacing(traj.time)
    result = mean_squared_displacement(positions, dt, traj.types, _species(traj),
                                       max_lag=_max_lag(traj, dt, args.max_lag_fs),
                                       masses=traj.masses, drift=args.keep_drift)
    lines = []
    for name, y in [("all atoms", result.total), *result.partial.items()]:
        d, d_cgs = diffusion_coefficient(result.time_fs, y, args.fit_start)
        lines.append(f"{name}: MSD({result.time_fs[-1] / 1000:.4g} ps) = {y[-1]:.4g} Å², "
                     f"D = {d:.4g} Å²/ps ({d_cgs:.3g} cm²/s)")
    for line in lines:
        print("  " + line)
    if args.plot:
        plot_msd(result.time_fs / 1000.0, result.total, result.partial, args.plot, title)
    return result.table(), "\n".join(lines)
