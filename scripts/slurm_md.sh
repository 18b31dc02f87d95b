#!/bin/bash
# Slurm job template: molecular dynamics with mmtp_hpc on MPI ranks (`mpirun mmtp md`).
#
#   sbatch scripts/slurm_md.sh                 # runs input.toml in the submission directory
#   sbatch --export=ALL,INPUT=run1.toml scripts/slurm_md.sh
#
# Continues from the checkpoint named in [output] checkpoint when it exists, so resubmitting
# the same script after a time-out continues the run (see chain_restart.sh for a chain).
# Exit status of `mmtp md`: 0 finished, 3 stopped because an extrapolation grade exceeded
# [extrapolation] break (configurations saved, checkpoint written: retrain, then continue),
# 1 bad input.
#
# Note: `mmtp md` itself is serial today (MPI domain decomposition is planned, spec §6). Until
# it lands, run ONE task (--ntasks-per-node=1) and give it threads with --cpus-per-task: N
# ranks of a serial run would be N independent copies writing the same files.
#SBATCH --job-name=mmtp-md
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=32          # MPI ranks per node (one per core)
#SBATCH --cpus-per-task=1             # >1 to give each rank OpenMP threads (then set OMP_NUM_THREADS)
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
##SBATCH --partition=compute          # site-specific: partition, account, QOS
##SBATCH --account=myproject

set -euo pipefail

INPUT=${INPUT:-input.toml}
VENV=${VENV:-$HOME/mmtp_hpc/.venv}    # the virtual environment mmtp_hpc is installed in
CHECKPOINT=${CHECKPOINT:-checkpoint.h5}   # must match [output] checkpoint in $INPUT

# module load ...                     # site-specific; the mpich wheel needs no MPI module
source "$VENV/bin/activate"

# One thread per rank unless asked (also keeps OpenBLAS from oversubscribing cores).
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
export OPENBLAS_NUM_THREADS=1

cd "${SLURM_SUBMIT_DIR:-.}"
RESTART=()
if [[ -f "$CHECKPOINT" ]]; then
    RESTART=(--restart "$CHECKPOINT")
    echo "continuing from $CHECKPOINT"
fi

# `python -m mpi4py` aborts every rank when one raises, instead of hanging the job.
# (With the mpich wheel use the venv's mpiexec; with a site MPI, `srun` works too.)
set +e
mpiexec -n "${SLURM_NTASKS:-1}" python -m mpi4py -m mmtp_hpc md "$INPUT" "${RESTART[@]}"
status=$?
set -e
if [[ $status -eq 3 ]]; then
    echo "stopped by extrapolation: see the saved configurations ([extrapolation] save_to); retrain, then resubmit"
fi
exit $status
