#!/bin/bash
# Submit a chain of Slurm jobs that together run one long MD: job k continues from the
# checkpoint of job k−1 up to step k × STEPS_PER_JOB (a multi-node example; the restart
# is bit-identical to an uninterrupted run, the trajectory is truncated to the checkpoint
# and continued).
#
#   scripts/chain_restart.sh input.toml 10 200000      # 10 jobs of 200 000 steps each
#   NODES=4 TASKS_PER_NODE=64 TIME=12:00:00 scripts/chain_restart.sh input.toml 5 1000000
#
# Jobs depend on their predecessor with afterok: if one fails, or stops because an
# extrapolation grade exceeded [extrapolation] break (exit status 3), the rest of the chain
# is cancelled by Slurm (DependencyNeverSatisfied) — retrain, then start a new chain; it
# continues from the last checkpoint.
#
# `mmtp md` is serial today (MPI domain decomposition is planned): until it lands use
# NODES=1 TASKS_PER_NODE=1 (threads via OMP_NUM_THREADS / --cpus-per-task).
set -euo pipefail

if [[ $# -lt 3 ]]; then
    echo "usage: $0 INPUT.toml N_JOBS STEPS_PER_JOB" >&2
    exit 2
fi
INPUT=$1
N_JOBS=$2
STEPS_PER_JOB=$3
NODES=${NODES:-2}
TASKS_PER_NODE=${TASKS_PER_NODE:-32}
TIME=${TIME:-24:00:00}
VENV=${VENV:-$HOME/mmtp_hpc/.venv}
CHECKPOINT=${CHECKPOINT:-checkpoint.h5}   # must match [output] checkpoint in INPUT
START_STEP=${START_STEP:-0}               # step the first job starts from (0, or the checkpoint's)

previous=""
for ((k = 1; k <= N_JOBS; k++)); do
    target=$((START_STEP + k * STEPS_PER_JOB))
    dependency=()
    [[ -n "$previous" ]] && dependency=(--dependency="afterok:$previous")
    job=$(sbatch --parsable "${dependency[@]}" \
        --job-name="mmtp-md-$k" --nodes="$NODES" --ntasks-per-node="$TASKS_PER_NODE" \
        --time="$TIME" --output="mmtp-md-$k-%j.out" \
        --export="ALL,INPUT=$INPUT,TARGET=$target,VENV=$VENV,CHECKPOINT=$CHECKPOINT" \
        --wrap='source "$VENV/bin/activate"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
restart=()
[[ -f "$CHECKPOINT" ]] && restart=(--restart "$CHECKPOINT")
mpiexec -n "$SLURM_NTASKS" python -m mpi4py -m mmtp_hpc md "$INPUT" --steps "$TARGET" "${restart[@]}"')
    job=${job%%;*}                     # --parsable prints "jobid[;cluster]"
    echo "job $k: $job, runs to step $target${previous:+ after $previous}"
    previous=$job
done
