"""Write the cards (``<potential>.card.json``: training range and provenance) of the shipped potentials
that do not come from ``mmtp learn`` (which writes its own): the analytic-model fits used by tests
and benchmarks, and MLIP-3's magnetic example. Run: ``python scripts/make_cards.py``.
"""

from __future__ import annotations

from pathlib import Path

from mmtp_hpc.io.potential_card import training_range, write_card
from mmtp_hpc.io.trainingset import read_trainingset_h5

POT = Path(__file__).resolve().parents[1] / "inputs" / "potentials"

ANALYTIC = {
    "fe_bcc_analytic_l16": ["Fe"],
    "feal_b2_analytic_l16": ["Fe", "Al"],
}


def main() -> None:
    for name, species in ANALYTIC.items():
        training = read_trainingset_h5(POT / f"{name}_train.h5")
        card = {"description": "NOT PHYSICS: fitted to the built-in analytic Fe–Al model "
                               "(mmtp_hpc.potentials.analytic), for tests and benchmarks only; "
                               "made by scripts/make_shipped_potentials.py",
                "training": training_range(training, species),
                "oracle": {"kind": "analytic", "model": "default (inputs/models/fe_al_model.json)"}}
        print(write_card(POT / f"{name}.almtp", card))
    card = {"description": "MLIP-3's magnetic Al–Fe example potential (level 16, unscaled, from the MLIP-3 "
                           "repository, BSD-2, LICENSE.mlip3): the reference for exactness with MLIP-3's "
                           "calculate_efs; its training data and range are not published with it"}
    print(write_card(POT / "al_fe_mag.mtpr", card))


if __name__ == "__main__":
    main()
