#!/bin/bash
# PBS/Torque (and PBS Pro) job template: molecular dynamics with mmtp_hpc on MPI ranks.
#
#   qsub scripts/pbs_md.sh                     # runs input.toml in the submission directory
#   qsub -v INPUT=run1.toml scripts/pbs_md.sh
#
# Continues from the checkpoint when it exists (resubmit after a time-out). Exit status:
# 0 finished, 3 stopped by an extrapolation grade above [extrapolation] break, 1 bad input.
#
# Note: `mmtp md` itself is serial today (MPI domain decomposition is planned, spec §6). Until
# it lands, run ONE task (--ntasks-per-node=1) and give it threads with --cpus-per-task: N
# ranks of a serial run would be N independent copies writing the same files.
#PBS -N mmtp-md
#PBS -l select=1:ncpus=32:mpiprocs=32      # PBS Pro; Torque: -l nodes=1:ppn=32
#PBS -l walltime=24:00:00
#PBS -j oe
##PBS -q workq
##PBS -A myproject

set -euo pipefail

INPUT=${INPUT:-input.toml}
VENV=${VENV:-$HOME/mmtp_hpc/.venv}
CHECKPOINT=${CHECKPOINT:-checkpoint.h5}   # must match [output] checkpoint in $INPUT

source "$VENV/bin/activate"
export OMP_NUM_THREADS=1
export OPENBLAS_NUM_THREADS=1

cd "${PBS_O_WORKDIR:-.}"
NPROCS=$( (wc -l < "${PBS_NODEFILE:-/dev/null}") 2>/dev/null || echo 1)
[[ "$NPROCS" -ge 1 ]] || NPROCS=1

RESTART=()
if [[ -f "$CHECKPOINT" ]]; then
    RESTART=(--restart "$CHECKPOINT")
    echo "continuing from $CHECKPOINT"
fi

set +e
mpiexec -n "$NPROCS" python -m mpi4py -m mmtp_hpc md "$INPUT" "${RESTART[@]}"
status=$?
set -e
[[ $status -eq 3 ]] && echo "stopped by extrapolation: retrain on the saved configurations, then resubmit"
exit $status
