"""Write initial.cfg: the pre-training set of the ABINIT bcc Fe example (unlabelled, target moments).

Deterministic: 2-atom cubic bcc cells (atoms at 0 and ½½½) over the lattice-parameter range
2.70–3.02 Å with constrained moments that sample 0.5–3 μB, plus antiparallel pairs, unequal
pairs, tetragonal/orthorhombic strains and displacements along symmetry axes (which keep part
of the cubic symmetry and so cost less DFT than random ones). Run: python make_initial.py
"""

from pathlib import Path

import numpy as np

from mmtp_hpc.io.cfg import write_cfg
from mmtp_hpc.system.configuration import Configuration


def cell(a, m1, m2, strain=(0.0, 0.0, 0.0), shift=(0.0, 0.0, 0.0), note=""):
    lengths = a * (1.0 + np.asarray(strain))
    pos = np.array([[0.0, 0.0, 0.0], 0.5 * lengths + np.asarray(shift)])
    cfg = Configuration(cell=np.diag(lengths), positions=pos, types=np.array([0, 0]),
                        magmoms=np.array([m1, m2], dtype=float))
    cfg.features = {"learn_source": f"bcc a={a:g} m=({m1:g},{m2:g}) {note}".strip()}
    return cfg


configs = []
# uniform moments on the (a, m) grid: E(a, m), P(a, m) and dE/dm over the whole range
for a in (2.70, 2.78, 2.86, 2.94, 3.02):
    for m in (0.5, 1.25, 2.0, 2.5, 3.0):
        configs.append(cell(a, m, m))
# between the grid's lattice parameters, near the relaxed moments
for a in (2.74, 2.82, 2.90, 2.98):
    configs.append(cell(a, 2.25, 2.25))
# antiparallel pairs (B2-type antiferromagnetic order) and unequal parallel pairs
for a in (2.74, 2.86, 2.98):
    configs.append(cell(a, 2.0, -2.0, note="antiparallel"))
    configs.append(cell(a, 1.5, 2.5, note="unequal"))
configs.append(cell(2.86, 1.0, -1.0, note="antiparallel"))
# tetragonal strains (shear-free, forces zero by symmetry, anisotropic stress)
configs.append(cell(2.86, 2.2, 2.2, strain=(0.0, 0.0, 0.03), note="tetragonal +3%"))
configs.append(cell(2.86, 2.2, 2.2, strain=(0.0, 0.0, -0.03), note="tetragonal -3%"))
# displacements of atom 2 along [001] (tetragonal symmetry left): forces
for d in (0.06, 0.12):
    configs.append(cell(2.86, 2.2, 2.2, shift=(0.0, 0.0, d), note=f"dz={d:g}"))

write_cfg(Path(__file__).with_name("initial.cfg"), configs)
print(f"{len(configs)} configurations written to initial.cfg")
