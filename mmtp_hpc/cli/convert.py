"""``mmtp convert IN OUT``: convert configurations between .cfg, extended XYZ, HDF5 and ASE formats.

An MD trajectory (``.h5`` of kind ``trajectory``) as input is exported frame by frame
(:func:`mmtp_hpc.io.formats.export_trajectory`): to extended XYZ or an ASE ``.traj`` with
velocities and moments (for OVITO, ASE), or to ``.cfg`` / a training set. A trajectory of
the first layout (``/frames``) written to ``.h5`` is rewritten in the H5MD layout
(:func:`mmtp_hpc.io.trajectory.convert_legacy`).
"""

from __future__ import annotations

import argparse

from mmtp_hpc.errors import InputError
from mmtp_hpc.io.formats import (
    detect_format,
    export_trajectory,
    read_configurations_and_species,
    write_configurations,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert", help="convert configurations between .cfg, .xyz/.extxyz, .h5 and ASE formats",
        description="Convert configurations between MLIP-3 .cfg, extended XYZ, the HDF5 "
                    "training-set format and anything ASE reads. The format is taken from the "
                    "file name unless --in-format/--out-format is given. An MD trajectory "
                    "(HDF5 from `mmtp md`) is exported frame by frame, with velocities and "
                    "moments in extended XYZ / ASE .traj output (OVITO reads the .xyz). A "
                    "trajectory of the first HDF5 layout (/frames) converted to .h5 is "
                    "rewritten in the H5MD 1.1 layout.")
    p.add_argument("input", help="input file")
    p.add_argument("output", help="output file (written atomically)")
    p.add_argument("--en-der-sign", type=int, choices=[1, -1], default=1, metavar="{+1,-1}",
                   help="sign of en_der_* in an input .cfg: +1 = +dE/dm (MLIP-3), "
                        "-1 = magnetic force -dE/dm (default +1)")
    p.add_argument("--virial-sign", type=int, choices=[1, -1], default=1, metavar="{+1,-1}",
                   help="sign of an explicit 'virial' in input extended XYZ: +1 = positive under "
                        "compression (-stress*V, the usual convention), -1 = the opposite "
                        "(default +1)")
    p.add_argument("--species", nargs="+", metavar="SYMBOL",
                   help="chemical symbols of types 0, 1, ... (needed to write symbols from .cfg; "
                        "on reading symbols, fixes the type order)")
    p.add_argument("--provenance", help="provenance text stored per configuration in .h5 output "
                                        "(default: the input file name)")
    p.add_argument("--append", action="store_true", help="append to OUT instead of replacing it")
    p.add_argument("--in-format", help="input format (cfg, extxyz, h5 or an ASE format name)")
    p.add_argument("--out-format", help="output format (cfg, extxyz, h5 or an ASE format name)")
    p.add_argument("--frames", metavar="START:STOP:STEP",
                   help="frames to convert, Python slice syntax (e.g. ::10, 100:, -1); default all")
    p.add_argument("--wrap", action="store_true",
                   help="fold MD trajectory positions into the cell (they are stored unwrapped)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmtp_hpc.io.trajectory import convert_legacy
    from mmtp_hpc.io.trajectory_frames import is_trajectory, parse_frames, trajectory_layout

    frames = parse_frames(args.frames)
    if detect_format(args.input, args.in_format) == "h5" and is_trajectory(args.input):
        if args.append:
            raise InputError("--append is not supported when exporting a trajectory",
                             field="append")
        if (trajectory_layout(args.input) == "legacy"
                and detect_format(args.output, args.out_format, reading=False) == "h5"):
            if args.frames or args.wrap:
                raise InputError("--frames and --wrap do not apply to converting a trajectory to "
                                 "the H5MD layout (every frame is copied exactly)", field="frames")
            count = convert_legacy(args.input, args.output)
            print(f"converted the MD trajectory {args.input} ({count} frames, first layout) to "
                  f"{args.output} (H5MD 1.1)")
            return 0
        count = export_trajectory(args.input, args.output, fmt=args.out_format, frames=frames,
                                  wrap=args.wrap)
        print(f"exported {count} frames of the MD trajectory {args.input} to {args.output}")
        return 0
    if args.wrap:
        raise InputError("--wrap applies to MD trajectory input only", field="wrap")
    configs, species = read_configurations_and_species(
        args.input, fmt=args.in_format, en_der_sign=args.en_der_sign, species=args.species,
        virial_sign=args.virial_sign)
    configs = configs[frames]
    if args.species is not None and species is not None and list(args.species) != species:
        raise InputError(f"--species {' '.join(args.species)} differs from the species stored "
                         f"in the input ({' '.join(species)})", path=args.input, field="species")
    out_kind = detect_format(args.output, args.out_format, reading=False)
    if species is None and out_kind not in ("cfg", "h5"):
        raise InputError("the output holds chemical symbols but the input has only types; pass "
                         "--species SYMBOL ... (symbol of type 0 first)", path=args.output,
                         field="species")
    count = write_configurations(args.output, configs, fmt=args.out_format, species=species,
                                 provenance=args.provenance or str(args.input), append=args.append)
    n_atoms = sum(len(c) for c in configs)
    print(f"converted {count} configurations ({n_atoms} atoms) from {args.input} to {args.output}")
    if species:
        print("types: " + ", ".join(f"{t} = {s}" for t, s in enumerate(species)))
    return 0
