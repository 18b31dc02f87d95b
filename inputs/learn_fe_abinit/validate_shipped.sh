#!/bin/sh
# The shipped inputs/potentials/fe_bcc_abinit.almtp, with its ensemble, against the 17 direct
# ABINIT calculations stored in validation/ (read back: ABINIT is not needed). Prints the table of
# the README and writes ${1:-validation_fe/fe}.{md,csv,json,png} and _moments.png.
# Exit status: 0 (the criteria pass), 1 (some fail: the table says which), other: an error.
#   sh inputs/learn_fe_abinit/validate_shipped.sh [OUTPUT_PREFIX]
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-validation_fe/fe}
case "$out" in /*) ;; *) out="$(pwd)/$out" ;; esac
mmtp=${MMTP:-$here/../../.venv/bin/mmtp}
cd "$here" || exit 2
"$mmtp" validate ../potentials/fe_bcc_abinit.almtp --oracle input.toml \
    --ensemble ../potentials/fe_bcc_abinit_ensemble/member_*.almtp \
    --lattice bcc --a 2.70 3.02 --points 9 --a-ref 2.86 --start 3.0 \
    --moments 1.0 1.5 1.75 2.25 2.75 3.0 --antiparallel 2.0 --trained-a 2.70 3.02 \
    --curve 2.55 3.17 32 --workdir validation --output "$out"
