"""Ship the potentials of the real-DFT campaigns (issue 17) to inputs/potentials/.

    python scripts/ship_abinit_potentials.py [--systems fe feal] [--ensemble-max-iter N]

For each campaign (``inputs/learn_fe_abinit`` → ``fe_bcc_abinit.almtp``,
``inputs/learn_feal_abinit`` → ``feal_b2_abinit.almtp``):

- the potential is the campaign's ``work/current.almtp`` after the loop's final refit
  (``[train] final_max_iter``); while the loop has not finished, the same refit is made here on a
  copy (same settings, same training set), so what is shipped is always a finished fit and the
  loop's own files are not touched;
- its card (``<name>.almtp.card.json``, printed by ``mmtp info``) states the training range,
  the DFT settings, how many DFT runs and core-hours the campaign took, whether it converged
  (or at which iteration it stands), and the limits of what it was trained on;
- the final ensemble (``work/ensemble/member_*.almtp``) goes to ``<name>_ensemble/`` for
  ``mmtp validate --ensemble``; before the loop has made it, the same ``[train] ensemble``
  members are trained here on the current training set.

Deterministic for a given campaign state; a few minutes per system.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmtp_hpc.active.learn import dft_totals, read_state, train_ensemble  # noqa: E402
from mmtp_hpc.active.learn_settings import load_learn_settings  # noqa: E402
from mmtp_hpc.active.maxvol import attach_active_set  # noqa: E402
from mmtp_hpc.io.atomic import atomic_path  # noqa: E402
from mmtp_hpc.io.potential_card import read_card, training_range, write_card  # noqa: E402
from mmtp_hpc.io.trainingset import read_trainingset_h5  # noqa: E402
from mmtp_hpc.potentials.mtp.mlip_io import load_potential, save_potential  # noqa: E402
from mmtp_hpc.training.fit import train  # noqa: E402

OUT = REPO / "inputs" / "potentials"

SYSTEMS = {
    "fe": {"campaign": "learn_fe_abinit", "name": "fe_bcc_abinit",
           "what": "bcc Fe (2-atom cubic cells)"},
    "feal": {"campaign": "learn_feal_abinit", "name": "feal_b2_abinit",
             "what": "B2 FeAl (2-atom cubic cells)"},
}

LIMITS = [
    "trained on 2-atom cubic cells (ideal, strained, and displaced along the MD of the learn loop): "
    "uniform, two-sublattice and antiparallel moments, small displacements",
    "thermal disorder of large supercells is outside this range: a 250-atom cell at 300 K grades "
    "above γ_break (MD with [extrapolation] says so and stops)",
]


def ship(key: str, log=print, ensemble_max_iter: int = 0) -> Path:
    spec = SYSTEMS[key]
    campaign = REPO / "inputs" / spec["campaign"]
    settings = load_learn_settings(campaign / "input.toml")
    work = campaign / settings.learn.workdir
    state = read_state(work)
    current = work / "current.almtp"
    training = read_trainingset_h5(work / "trainingset.h5")
    species = list(settings.learn.species)
    dest = OUT / f"{spec['name']}.almtp"
    if state.finished and state.final_refit:
        pot = load_potential(current)
        status = state.stop_reason if state.stop_reason.startswith("converged") \
            else f"finished: {state.stop_reason}"          # (the loop's reason says "converged: ...")
        refit = dict(state.final_refit)
    else:
        tset = settings.train_settings(first=False, final=True)
        if tset.max_iter <= 0:
            raise SystemExit(f"{campaign / 'input.toml'}: [train] final_max_iter is 0; nothing to refit")
        log(f"{spec['name']}: the loop is at iteration {state.iteration} ({state.phase}); refitting a copy "
            f"of {current} ({tset.max_iter} iterations max, {len(training)} configurations)")
        result = train(load_potential(current), training, tset, log=lambda s: None)
        pot = result.potential
        status = (f"interim: the learn loop is at iteration {state.iteration} (phase {state.phase}), "
                  "not converged yet; this is its current potential after the final refit")
        refit = {"max_iter": tset.max_iter, "training_size": len(training),
                 "errors": dict(result.train_errors)}
    pot.species_names = species
    attach_active_set(pot, training, mode=settings.select.mode)
    save_potential(pot, dest)
    learn_card = read_card(current) or {}
    oracle = learn_card.get("oracle") or {k: v for k, v in dict(settings.oracle).items()
                                          if k not in ("env", "command")}
    card = {
        "description": f"{spec['what']}, trained by mmtp learn on constrained-moment ABINIT 9.6 "
                       f"labels (PAW PBE): inputs/{spec['campaign']}/ (scripts/ship_abinit_potentials.py)",
        "status": status,
        "training": training_range(training, species),
        "oracle": oracle,
        "labels_computed": dft_totals(state.history),
        "final_refit": {k: refit[k] for k in ("max_iter", "training_size", "errors") if k in refit},
        "limits": LIMITS,
        "validation": f"inputs/{spec['campaign']}/README.md (mmtp validate against direct ABINIT)",
    }
    write_card(dest, card)
    ens = OUT / f"{spec['name']}_ensemble"
    members = sorted((work / "ensemble").glob("member_*.almtp")) if state.finished and not ensemble_max_iter else []
    if len(members) < settings.train.ensemble and settings.train.ensemble:
        # the loop has not made its ensemble yet (or longer member fits are asked for): the same
        # members, trained here afresh
        tmp_dir = ens.with_name(ens.name + ".tmp")
        shutil.rmtree(tmp_dir, ignore_errors=True)
        log(f"{spec['name']}: training an ensemble of {settings.train.ensemble} (fresh random starts"
            + (f", {ensemble_max_iter} iterations each)" if ensemble_max_iter else ")"))
        train_ensemble(dest, training, settings, species, tmp_dir, log=lambda s: None,
                       max_iter=ensemble_max_iter or None)
        shutil.rmtree(ens, ignore_errors=True)
        tmp_dir.rename(ens)
        members = sorted(ens.glob("member_*.almtp"))
    elif members:
        ens.mkdir(exist_ok=True)
        for m in members:
            with atomic_path(ens / m.name) as tmp:
                shutil.copyfile(m, tmp)
    log(f"{dest}: {status}; {len(training)} configurations; "
        + json.dumps({k: round(v, 4) for k, v in refit["errors"].items() if k.endswith("rmse")})
        + (f"; ensemble of {len(members)} in {ens}" if members else "; no ensemble yet"))
    return dest


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    p.add_argument("--ensemble-max-iter", type=int, default=0, metavar="N",
                   help="train the ensemble here with N iterations per member (fresh random starts, "
                        "the loop's seeds) instead of taking the loop's (0: the loop's, or [train] "
                        "ensemble_max_iter / max_iter where the loop has none yet)")
    args = p.parse_args()
    for key in args.systems:
        ship(key, ensemble_max_iter=args.ensemble_max_iter)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
