#!/bin/bash
#SBATCH --nodes=1
#SBATCH --ntasks=8
#SBATCH --time=02:00:00
# One constrained-moment ABINIT run in the directory mmtp prepared (run.abi).
set -euo pipefail
module load abinit
srun abinit run.abi > abinit.log 2>&1
