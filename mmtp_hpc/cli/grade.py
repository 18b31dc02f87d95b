"""``mmtp grade POT IN [IN...] -o OUT.cfg``: extrapolation grades, like MLIP-3's ``calculate_grade``.

This module's single job is the command line around
:func:`mmtp_hpc.active.selection.grade_configurations`: read the configurations, grade
them against the active set stored with the potential, write them with ``Feature
MV_grade`` (and, in ``nbh`` mode, the per-atom ``nbh_grades`` column), and print a summary
(count, largest and median grade, how many above γ_select = 2 and γ_break = 10).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from mmtp_hpc.errors import InputError

SELECT_LEVEL = 2.0    # the usual γ_select (spec §5)
BREAK_LEVEL = 10.0    # the usual γ_break


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("grade", aliases=["calculate_grade"],
                       help="extrapolation grades (MaxVol) of configurations",
                       description="Grade configurations against the active set stored with POT "
                                   "(an .almtp or .h5 potential with a MaxVol block): writes OUT with "
                                   "'Feature MV_grade' and, per neighbourhood, an nbh_grades column, "
                                   "as MLIP-3's calculate_grade does. Without -o the last file named "
                                   "is the output: 'mmtp calculate_grade POT IN OUT' as in MLIP-3.")
    p.add_argument("potential", help="potential with an active set (.almtp, .h5)")
    p.add_argument("inputs", nargs="+", metavar="IN",
                   help="configurations (.cfg, .xyz/.extxyz, .h5, or any ASE-readable file)")
    p.add_argument("-o", "--output", "--output_filename", dest="output",
                   help="graded configurations (.cfg; or .h5/.xyz); default: the last IN")
    p.add_argument("--mode", "--al_mode", dest="mode", choices=("auto", "cfg", "nbh"), default="auto",
                   help="grade per configuration or per neighbourhood (default: the active set's)")
    add_data_options(p)
    p.set_defaults(func=run)


def add_data_options(p: argparse.ArgumentParser) -> None:
    """Options for reading configurations, shared with ``mmtp select``."""
    p.add_argument("--species", nargs="+", default=None, metavar="SYMBOL",
                   help="symbols of the data's types 0, 1, ... (.cfg, extended XYZ, .h5): the data are renumbered to "
                        "POT's species order, and .cfg output keeps the data's numbering (default: POT's order)")
    p.add_argument("--en-der-sign", type=int, choices=(1, -1), default=1,
                   help="sign of en_der_* columns in .cfg input (+1: +dE/dm as MLIP-3; -1: magnetic force)")
    p.add_argument("--virial-sign", type=int, choices=(1, -1), default=1,
                   help="sign of an explicit 'virial' in extended XYZ input (+1: PlusStress)")
    p.add_argument("--threads", type=int, default=None, help="OpenMP threads (default OMP_NUM_THREADS or 1)")


def split_positional_output(args: argparse.Namespace, attr: str, name: str) -> None:
    """Without -o the last of the files in ``args.<attr>`` is the output (MLIP-3's positional form)."""
    files = getattr(args, attr)
    if args.output:
        return
    if len(files) < 2:
        raise InputError(f"no output file: pass -o OUT, or OUT after the {name} file(s)", field="output")
    args.output = files[-1]
    setattr(args, attr, files[:-1])


def load_potential_checked(path: str):
    """The potential of ``path``, trained (clear error otherwise)."""
    from mmtp_hpc.potentials.mtp.mlip_io import load_potential

    pot = load_potential(path)
    try:
        pot.require_trained()
    except InputError as exc:
        raise InputError(exc.reason, path=path, field=exc.field) from exc
    return pot


def read_inputs(paths: list[str], args: argparse.Namespace, pot,
                allow_empty: bool = False) -> list[tuple[str, list]]:
    """(file, its configurations) for each of ``paths``, types checked against the potential."""
    from mmtp_hpc.cli.train import check_species, to_potential_types
    from mmtp_hpc.io.formats import read_configurations_and_species

    species = args.species or pot.species_names
    out = []
    for path in paths:
        found, names = read_configurations_and_species(path, en_der_sign=args.en_der_sign,
                                                       species=species, virial_sign=args.virial_sign)
        if not found and not allow_empty:
            raise InputError("no configurations in the file", path=path)
        mapping = to_potential_types(pot, found, names, path)
        check_species(pot, found, path)
        args._type_maps = {**getattr(args, "_type_maps", {}), path: mapping}
        out.append((path, found))
    return out


def restore_data_types(args: argparse.Namespace, files: list[tuple[str, list]], pot) -> None:
    """Give configurations read with ``--species`` their own type numbers back before writing."""
    from mmtp_hpc.cli.train import from_potential_types

    if not args.species:
        return
    for path, found in files:
        from_potential_types(found, getattr(args, "_type_maps", {}).get(path), pot.species_count)


def grade_summary(grades: np.ndarray) -> str:
    """One line: count, largest and median grade, how many above γ_select and γ_break."""
    if len(grades) == 0:
        return "0 configurations"
    return (f"{len(grades)} configurations: max grade {grades.max():.4g}, median {np.median(grades):.4g}; "
            f"{int(np.sum(grades > SELECT_LEVEL))} above {SELECT_LEVEL:g}, "
            f"{int(np.sum(grades > BREAK_LEVEL))} above {BREAK_LEVEL:g}")


def run(args: argparse.Namespace) -> int:
    from mmtp_hpc.potentials.mtp.grades import ActiveSet
    from mmtp_hpc.active.maxvol import real_atoms
    from mmtp_hpc.active.selection import ConfigurationError, grade_configurations
    from mmtp_hpc.io.formats import write_configurations
    from mmtp_hpc.potentials.mtp.engine import MTPEngine

    split_positional_output(args, "inputs", "IN")
    pot = load_potential_checked(args.potential)
    try:
        mode = ActiveSet.from_potential(pot).resolve_mode(args.mode)
    except InputError as exc:
        raise InputError(exc.reason, path=args.potential, field=exc.field) from exc
    files = read_inputs(args.inputs, args, pot)

    def progress(msg: str) -> None:
        print(f"mmtp grade: {msg}", flush=True)

    t0 = time.perf_counter()
    engine = MTPEngine(pot, num_threads=args.threads)
    configs, results = [], []
    for path, found in files:
        try:
            results += grade_configurations(pot, found, mode, engine=engine, progress=progress)
        except ConfigurationError as exc:
            raise InputError(f"configuration {exc.index}: {exc.detail}", path=path,
                             field=exc.field) from exc
        configs += found
    elapsed = time.perf_counter() - t0
    restore_data_types(args, files, pot)
    write_configurations(args.output, configs, species=args.species or pot.species_names)
    grades = np.array([r.grade for r in results])
    n_rows = sum(len(real_atoms(c)) for c in configs) if mode == "nbh" else len(configs)
    print(f"mmtp grade: {grade_summary(grades)} ({mode} mode, {elapsed:.2f} s, "
          f"{n_rows / max(elapsed, 1e-9):.0f} rows/s) -> {args.output}", file=sys.stdout)
    return 0
