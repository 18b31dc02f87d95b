"""Write initial.cfg: the pre-training set of the ABINIT B2 FeAl example (unlabelled, target moments).

Deterministic: 2-atom B2 cells (Fe at 0, Al at ½½½) over 2.80–3.00 Å with the Fe moment
constrained to 0–1.6 μB (the range in which it switches on as the lattice expands); the Al
moment is left free (constraint_kind 0 for Al: it takes its own small induced value, and its
dE/dm is zero). Plus 4-atom cells (B2 doubled along x) with antiparallel and unequal Fe moments,
tetragonal strains and a displacement along [001]. Run: python make_initial.py
"""

from pathlib import Path

import numpy as np

from mmtp_hpc.io.cfg import write_cfg
from mmtp_hpc.system.configuration import Configuration


def b2(a, m_fe, strain=(0.0, 0.0, 0.0), shift=(0.0, 0.0, 0.0), note=""):
    lengths = a * (1.0 + np.asarray(strain))
    pos = np.array([[0.0, 0.0, 0.0], 0.5 * lengths + np.asarray(shift)])
    cfg = Configuration(cell=np.diag(lengths), positions=pos, types=np.array([0, 1]),
                        magmoms=np.array([m_fe, 0.0]))
    cfg.features = {"learn_source": f"B2 FeAl a={a:g} m_Fe={m_fe:g} {note}".strip()}
    return cfg


def b2_double(a, m1, m2, note=""):
    """B2 doubled along x: Fe at 0 and a·x̂, Al at the two cube centres."""
    pos = np.array([[0.0, 0.0, 0.0], [a, 0.0, 0.0], [a / 2, a / 2, a / 2], [1.5 * a, a / 2, a / 2]])
    cfg = Configuration(cell=np.diag([2 * a, a, a]), positions=pos, types=np.array([0, 0, 1, 1]),
                        magmoms=np.array([m1, m2, 0.0, 0.0]))
    cfg.features = {"learn_source": f"B2 FeAl 2x1x1 a={a:g} m_Fe=({m1:g},{m2:g}) {note}".strip()}
    return cfg


configs = []
for a in (2.80, 2.85, 2.90, 2.95, 3.00):
    for m in (0.0, 0.4, 0.8, 1.2, 1.6):
        configs.append(b2(a, m))
for a in (2.85, 2.95):
    configs.append(b2_double(a, 0.8, -0.8, note="antiparallel"))
configs.append(b2_double(2.90, 0.4, 1.2, note="unequal"))
configs.append(b2(2.90, 0.8, strain=(0.0, 0.0, 0.03), note="tetragonal +3%"))
configs.append(b2(2.90, 0.8, strain=(0.0, 0.0, -0.03), note="tetragonal -3%"))
configs.append(b2(2.90, 0.8, shift=(0.0, 0.0, 0.08), note="dz=0.08"))

write_cfg(Path(__file__).with_name("initial.cfg"), configs)
print(f"{len(configs)} configurations written to initial.cfg")
