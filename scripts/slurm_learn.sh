#!/bin/bash
# Slurm job template: active learning with mmtp_hpc (`mmtp learn`: MD with extrapolation
# grades → MaxVol selection → labelling by the oracle → retraining, repeated until the MD
# runs without extrapolation; spec §1 and §5).
#
#   sbatch --export=ALL,INPUT=learn.toml scripts/slurm_learn.sh
#
# Training uses all MPI ranks (configurations distributed); the MD explorations (small
# cells) run on rank 0; the oracle (DFT) runs as the external command named in the [oracle]
# table, typically one `srun` per configuration inside this allocation. Everything the loop
# needs to continue (state.json, potential, training set, labels) is on disk, so
# resubmitting this script continues the loop.
#
#SBATCH --job-name=mmtp-learn
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=32
#SBATCH --cpus-per-task=1
#SBATCH --time=48:00:00
#SBATCH --output=%x-%j.out
##SBATCH --partition=compute
##SBATCH --account=myproject

set -euo pipefail

INPUT=${INPUT:-learn.toml}
VENV=${VENV:-$HOME/mmtp_hpc/.venv}

source "$VENV/bin/activate"
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
export OPENBLAS_NUM_THREADS=1

cd "${SLURM_SUBMIT_DIR:-.}"
mpiexec -n "${SLURM_NTASKS:-1}" python -m mpi4py -m mmtp_hpc learn "$INPUT"
