"""``mmtp learn INPUT.toml``: active learning on the fly (pre-train → MD → select → label → retrain).

This module's single job is the command line of the loop in :mod:`mmtp_hpc.active.learn`:
read and validate the input, run or resume the loop, print the summary. Re-running the
same command after a crash (or after raising ``max_iterations``) continues from the state
in the work directory. Under ``mpirun -n P python -m mpi4py -m mmtp_hpc learn …`` the
training is shared between the ranks; MD, selection and labelling run on rank 0.
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "learn", help="active learning: MD with grades, MaxVol selection, oracle labels, retraining",
        description="Run the learn-on-the-fly loop of INPUT (TOML): optional pre-training on an initial "
                    "set labelled by the oracle, then per iteration MD runs with extrapolation grades, "
                    "MaxVol selection of the saved configurations, labelling by the oracle, adding them "
                    "to the HDF5 training set and refitting, until an iteration selects nothing or "
                    "max_iterations is reached. The state is kept in the work directory; running the "
                    "same command again resumes. All input keys: mmtp learn --help-input.")
    p.add_argument("input", nargs="?", help="learning input file (TOML)")
    p.add_argument("--help-input", action="store_true", help="print all input sections and keys, and exit")
    p.add_argument("--summary", action="store_true",
                   help="print the summary table of the work directory's state and exit")
    p.add_argument("--quiet-md", action="store_true",
                   help="do not echo the MD logs (they still go to md.log in each run directory)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmtp_hpc.active.learn_settings import describe, load_learn_settings
    from mmtp_hpc.errors import InputError

    if args.help_input:
        print(describe())
        return 0
    if not args.input:
        raise InputError("give the learning input file: mmtp learn INPUT.toml", field="input")
    settings = load_learn_settings(args.input)
    from mmtp_hpc.active.learn import STATE_FILE, read_state, run_learning, summary_table

    if args.summary:
        path = settings.workdir / STATE_FILE
        if not path.exists():
            raise InputError("no loop state yet (run mmtp learn first)", path=str(path))
        state = read_state(settings.workdir)
        where = state.stop_reason if state.finished else f"iteration {state.iteration}, phase {state.phase}"
        print(f"mmtp learn {args.input}: {where}")
        print(summary_table(state.history))
        return 0
    state = run_learning(settings, stream=sys.stdout, md_stream=None if args.quiet_md else sys.stdout)
    return 0 if state.finished else 1
