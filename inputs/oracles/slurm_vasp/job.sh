#!/bin/bash
#SBATCH --nodes=1
#SBATCH --ntasks=64
#SBATCH --time=04:00:00
# One constrained-moment VASP run in the directory mmtp prepared (INCAR, POSCAR, KPOINTS, POTCAR).
set -euo pipefail
module load vasp
srun vasp_std > vasp.out
