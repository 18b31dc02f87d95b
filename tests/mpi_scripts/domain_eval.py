"""Domain-decomposed evaluation vs the serial engine on several cells: ``python -m mpi4py domain_eval.py OUT.json``.

Cells: a triclinic two-species magnetic cell with a random (unsymmetrised) potential, the
same with a user grid, and a cell thinner than the cutoff along one axis (several periodic
layers of self-images). Rank 0 writes the largest relative differences as JSON.
"""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from util import random_configuration, random_potential  # noqa: E402

from mmtp_hpc.dynamics.domain import evaluate_distributed  # noqa: E402
from mmtp_hpc.parallel.comm import get_comm  # noqa: E402
from mmtp_hpc.potentials.mtp.engine import MTPEngine  # noqa: E402

comm = get_comm()
size = comm.Get_size()
pot = random_potential(level=10, species=2, mag_size=2, seed=3)
engine = MTPEngine(pot)
cases = {}
big = random_configuration(n=90, species=2, seed=5, cell_size=11.0, triclinic=0.15, min_dist=1.9)
cases["triclinic"] = (big, None)
if size in (2, 4):
    grids = {2: [1, 2, 1], 4: [1, 2, 2]}
    cases["triclinic_user_grid"] = (big, grids[size])
thin = random_configuration(n=24, species=2, seed=7, cell_size=6.0, triclinic=0.1, min_dist=1.9)
thin.cell[0] *= 2.0      # 12 Å along x (split over ranks), 6 Å along y, z: self-images there
thin.positions[:, 0] *= 1.0
thin.positions = thin.positions @ np.linalg.inv(thin.cell / np.array([[2.0], [1.0], [1.0]])) @ thin.cell
cases["thin_z"] = (thin, [size, 1, 1] if size <= 2 else None)

result = {}
for name, (cfg, grid) in cases.items():
    if grid is None and name == "thin_z":
        continue
    ref = engine.evaluate(cfg)
    out = evaluate_distributed(engine, cfg, comm, grid=grid)
    if comm.Get_rank() == 0:
        def rel(a, b):
            a, b = np.asarray(a), np.asarray(b)
            return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-300))
        result[name] = {"energy": rel(ref["energy"], out["energy"]),
                        "site_energies": rel(ref["site_energies"], out["site_energies"]),
                        "forces": rel(ref["forces"], out["forces"]),
                        "virial": rel(ref["virial"], out["virial"]),
                        "magnetic_gradient": rel(ref["magnetic_gradient"], out["magnetic_gradient"]),
                        "layout": out["decomposition"]}
if comm.Get_rank() == 0:
    Path(sys.argv[1]).write_text(json.dumps(result, indent=1))
