"""``mmtp md INPUT.toml``: molecular dynamics with moment dynamics, grades, trajectory, checkpoints."""

from __future__ import annotations

import argparse
import sys

EXIT_STOPPED_BY_EXTRAPOLATION = 3


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("md", help="run molecular dynamics (with magnetic moment dynamics) from a TOML input",
                       description="Runs the MD described by INPUT (TOML; `mmtp md --help-input` lists every "
                                   "key). Exit status 0 when the run finished, 3 when it stopped because an "
                                   "extrapolation grade exceeded [extrapolation] break (a checkpoint is "
                                   "written in both cases), 1 on bad input.")
    p.add_argument("input", nargs="?", help="input file (.toml)")
    p.add_argument("--restart", nargs="?", const="", default=None, metavar="CHECKPOINT",
                   help="continue from a checkpoint (default: the input's [output] checkpoint)")
    p.add_argument("--steps", type=int, default=None, help="override [md] steps (total step count)")
    p.add_argument("--overwrite", action="store_true",
                   help="start from step 0 even though a checkpoint or trajectory of an earlier run exists "
                        "(they are replaced); without it such a run is refused")
    p.add_argument("--allow-changes", action="store_true",
                   help="with --restart: continue although the potential file or settings that change "
                        "the physics differ from the checkpoint's (they are listed)")
    p.add_argument("--quiet", action="store_true", help="no log on standard output")
    p.add_argument("--help-input", action="store_true", help="print all input sections and keys, then exit")
    p.add_argument("--summary-json", default=None, metavar="PATH",
                   help="also write the end-of-run summary (speed, atom-steps/s, time split) as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmtp_hpc.dynamics.driver import Simulation
    from mmtp_hpc.dynamics.settings import describe, load_settings
    from mmtp_hpc.errors import InputError

    if args.help_input:
        print(describe())
        return 0
    if args.input is None:
        raise InputError("an input file is required: mmtp md INPUT.toml (see mmtp md --help-input)")
    settings = load_settings(args.input)
    if args.steps is not None:
        if args.steps < 0:
            raise InputError(f"--steps must be >= 0, got {args.steps}")
        settings.md.steps = args.steps
    restart = None
    if args.restart is not None:
        restart = args.restart or settings.output.checkpoint
        if not restart:
            raise InputError("--restart needs a checkpoint: give one, or set [output] checkpoint")
        restart = settings.path(restart) if args.restart == "" else restart
    from pathlib import Path

    from mmtp_hpc.dynamics import runfiles
    from mmtp_hpc.parallel.comm import get_comm

    out = settings.output
    outputs = [settings.path(x) for x in (out.trajectory, out.checkpoint, out.log) if x]
    root = get_comm().Get_rank() == 0
    lock = runfiles.RunLock(outputs if root else [])
    with lock:                      # a second run on these files is refused
        if root:
            runfiles.remove_stale_temporaries(outputs)
        if restart is None:
            if not args.overwrite:
                runfiles.check_fresh_start(settings.path(out.checkpoint) if out.checkpoint else None,
                                           settings.path(out.trajectory) if out.trajectory else None,
                                           args.input)
        else:
            restart = Path(restart)
            if not restart.is_file():
                raise InputError("checkpoint not found (nothing to restart from; run without --restart to "
                                 "start at step 0)", path=str(restart))
            notes = runfiles.check_restart(restart, settings.path(settings.potential.file),
                                           settings.to_dict(), args.allow_changes)
            if root:
                for note in notes:
                    print(f"mmtp md: restart: {note}", file=sys.stderr)
                if out.log:
                    runfiles.truncate_log(settings.path(out.log),
                                          runfiles.read_checkpoint_header(restart)["step"])
        sim = Simulation.from_settings(settings, restart=restart, stream=None if args.quiet else sys.stdout)
        reason = sim.run()
    if args.summary_json:
        import json

        summary = sim.summary_dict()
        if sim.is_root:
            with open(args.summary_json, "w", encoding="utf-8") as f:
                json.dump(summary, f, indent=1)
    if reason:
        print(f"mmtp md: stopped at step {sim.state.step}: {reason}", file=sys.stderr)
        return EXIT_STOPPED_BY_EXTRAPOLATION
    return 0
