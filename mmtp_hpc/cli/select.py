"""``mmtp select POT TRAIN CANDIDATES... -o NEW``: new training configurations, like MLIP-3's ``select_add``.

This module's single job is the command line around
:func:`mmtp_hpc.active.selection.select_new`: read the potential, the training set (.cfg,
HDF5 training set, any readable format) and the candidates, run one MaxVol pass over
training ∪ candidates, write only the selected candidates (with MLIP-3's
``selected_eqn_inds`` feature), and optionally the potential with its active set
recomputed over training ∪ selected. Prints progress (rows/s) and a summary.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from mmtp_hpc.errors import InputError

POTENTIAL_SUFFIXES = (".almtp", ".h5", ".hdf5")
LISTED = 20   # selected configurations listed one per line in the summary


def register(sub: argparse._SubParsersAction) -> None:
    from mmtp_hpc.cli.grade import add_data_options

    p = sub.add_parser("select", aliases=["select_add"],
                       help="select new training configurations by MaxVol (MLIP-3 select_add)",
                       description="One MaxVol pass over the rows of TRAIN and all CANDIDATES together, "
                                   "starting from TRAIN's own MaxVol set: the candidates that end up in "
                                   "the active set are written to -o. Near-duplicates are not all "
                                   "selected; candidates TRAIN already represents are not selected. "
                                   "Without -o the last file named is the output: 'mmtp select_add POT "
                                   "TRAIN NEW DIFF' as in MLIP-3.")
    p.add_argument("potential", help="potential (.almtp, .mtp, .h5); its active set fixes --mode auto")
    p.add_argument("train", help="training set (.cfg, .h5 training set, .xyz/.extxyz, ...)")
    p.add_argument("candidates", nargs="+", metavar="CANDIDATES",
                   help="candidate configurations (e.g. the extrapolative ones saved by mmtp md)")
    p.add_argument("-o", "--output", dest="output",
                   help="the selected candidates only (.cfg; or .h5/.xyz); default: the last CANDIDATES")
    p.add_argument("--mode", "--al_mode", dest="mode", choices=("auto", "cfg", "nbh"), default="auto",
                   help="rows per configuration or per neighbourhood (default: the potential's active "
                        "set's, else nbh)")
    p.add_argument("--threshold", type=float, default=1.001,
                   help="MaxVol swap threshold (>= 1, default 1.001)")
    p.add_argument("--limit", "--selection_limit", dest="limit", type=int, default=None, metavar="N",
                   help="select at most N configurations (the most extrapolative ones MaxVol admits "
                        "first)")
    p.add_argument("--min-grade", type=float, default=None, metavar="G",
                   help="leave out candidates whose grade against TRAIN's active set is <= G")
    p.add_argument("--update-potential", metavar="OUT",
                   help="also write POT with its active set recomputed over TRAIN ∪ selected "
                        "(.almtp or .h5)")
    add_data_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmtp_hpc.active.selection import (
        ConfigurationError,
        select_new,
        selected_configurations,
        updated_potential,
    )
    from mmtp_hpc.cli.grade import (
        grade_summary,
        load_potential_checked,
        read_inputs,
        restore_data_types,
        split_positional_output,
    )
    from mmtp_hpc.io.formats import write_configurations
    from mmtp_hpc.potentials.mtp.engine import MTPEngine
    from mmtp_hpc.potentials.mtp.mlip_io import save_potential

    # --- options first, so that mistakes cost nothing
    split_positional_output(args, "candidates", "CANDIDATES")
    if args.threshold < 1.0:
        raise InputError(f"must be >= 1, got {args.threshold}", field="threshold")
    if args.limit is not None and args.limit < 1:
        raise InputError(f"must be >= 1, got {args.limit}", field="limit")
    if args.update_potential and Path(args.update_potential).suffix.lower() not in POTENTIAL_SUFFIXES:
        raise InputError(f"the active set is kept by {', '.join(POTENTIAL_SUFFIXES)} files only",
                         path=args.update_potential, field="update-potential")

    def progress(msg: str) -> None:
        print(f"mmtp select: {msg}", flush=True)

    t0 = time.perf_counter()
    pot = load_potential_checked(args.potential)
    (_, training), = read_inputs([args.train], args, pot)
    files = read_inputs(args.candidates, args, pot, allow_empty=True)   # an MD run may save none
    candidates = [c for _, found in files for c in found]
    origin = [(path, k) for path, found in files for k in range(len(found))]
    engine = MTPEngine(pot, num_threads=args.threads)
    try:
        result = select_new(pot, training, candidates, mode=args.mode, threshold=args.threshold,
                            limit=args.limit, min_grade=args.min_grade, engine=engine, progress=progress)
    except ConfigurationError as exc:
        path, index = (args.train, exc.index) if exc.group == "training" else origin[exc.index]
        raise InputError(f"configuration {index}: {exc.detail}", path=path, field=exc.field) from exc

    updated = None
    if args.update_potential:
        updated = updated_potential(pot, training, candidates, result, threshold=args.threshold)
    restore_data_types(args, files, pot)
    selected = selected_configurations(candidates, result)
    species = args.species or pot.species_names
    provenance = [f"select: {origin[k][0]}#{origin[k][1]}" for k in result.indices]
    write_configurations(args.output, selected, species=species, provenance=provenance)
    if updated is not None:
        save_potential(updated, args.update_potential)

    # --- summary
    g = result.candidate_grades
    print(f"mmtp select: candidates: {grade_summary(g)} (grades against {args.train}'s active set)")
    n_new = int(np.sum(result.slot_sources()[1] >= 0))
    print(f"mmtp select: selected {len(result.indices)} of {len(candidates)} candidates "
          f"({len(result.considered)} considered, {n_new} of {pot.n_params} active-set rows now from "
          f"them; {result.mode} mode, threshold {args.threshold:g}"
          + (f", limit {args.limit}" if args.limit is not None else "") + ")")
    print(f"mmtp select: active set ln|det A|: {result.initial.log_volume:.6f} (training) -> "
          f"{result.log_volume:.6f}, {result.selection.swaps} swaps, max grade after "
          f"{result.selection.max_grade:.4g}")
    for k in result.indices[:LISTED]:
        path, index = origin[k]
        print(f"    {path} #{index}: grade {g[k]:.4g}")
    if len(result.indices) > LISTED:
        print(f"    ... and {len(result.indices) - LISTED} more")
    written = f" -> {args.output}"
    if updated is not None:
        written += (f", potential with the active set over training ∪ selected (ln|det A| "
                    f"{np.linalg.slogdet(updated.active_set.matrix)[1]:.6f}) -> {args.update_potential}")
    print(f"mmtp select: {time.perf_counter() - t0:.2f} s{written}", file=sys.stdout)
    return 0

