"""Test helper for tests/test_oracles.py: a soft-constrained "DFT" run, emulated exactly.

    penalty_oracle.py INPUT OUTPUT --calls FILE [--index I] [--lambda L] [--argv-json FILE]
                      [--note TEXT ...]
                      [--fail-flag FILE --fail-index I --fail-lambda L] [--fail-free]

Reads one configuration with target moments m0 (MLIP-3 .cfg). With a penalty strength λ
(``Feature constraint_lambda`` of INPUT) it minimises E_model(m) + λ Σ_i (m_i − m0_i)² over
the moments at fixed positions, as penalty-constrained DFT does, and labels the configuration
at the moments reached with the built-in analytic Fe–Al model (energy, forces, virial,
+∂E/∂m); without λ it labels at m0 (an exact constraint). With ``Feature constrained 0`` (the
unconstrained ground state) the moments relax from m0 with the model. Writes OUTPUT.

Every call appends "index lambda cwd" to --calls, so tests can count invocations, and
--argv-json records the argument list it received (--note values are only recorded). With
--fail-flag, the call fails (exit 3) when that file exists and index/lambda match.
"""

import argparse
import json
import os
import sys

import numpy as np

from scipy.optimize import minimize

from mmtp_hpc.io.cfg import read_cfg, write_cfg
from mmtp_hpc.potentials.analytic import AnalyticMagneticModel


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--calls", required=True)
    p.add_argument("--index", default="?")
    p.add_argument("--lambda", dest="lam", default="")
    p.add_argument("--argv-json", default=None)
    p.add_argument("--note", action="append", default=[])
    p.add_argument("--fail-flag", default=None)
    p.add_argument("--fail-index", default=None)
    p.add_argument("--fail-lambda", default=None)
    p.add_argument("--fail-free", action="store_true",
                   help="report an SCF that did not converge for every unconstrained run")
    p.add_argument("--free-offset", type=float, default=0.0,
                   help="unconstrained runs stop this far (μB) above the relaxed moments and report "
                        "success (a free SCF that stalls on a flat landscape)")
    args = p.parse_args()
    with open(args.calls, "a", encoding="utf-8") as f:
        f.write(f"{args.index} {args.lam or '-'} {os.getcwd()}\n")
    if args.argv_json:
        with open(args.argv_json, "w", encoding="utf-8") as f:
            json.dump(sys.argv, f)
    if (args.fail_flag and os.path.exists(args.fail_flag) and args.index == args.fail_index
            and args.lam == args.fail_lambda):
        print(f"penalty_oracle: simulated failure for index {args.index}, lambda {args.lam}",
              file=sys.stderr)
        return 3
    cfg = read_cfg(args.input)[0]
    model = AnalyticMagneticModel.default()
    if cfg.features.get("constrained") == "0":
        if args.fail_free:
            out = model.label(cfg)
            out.features = {"scf_converged": "0"}
            write_cfg(args.output, out)
            return 0
        out = model.label(cfg, relax=True)
        if args.free_offset:
            out = model.label(cfg, magmoms=out.magmoms + np.sign(out.magmoms) * args.free_offset)
        out.features.pop("constrained", None)
        write_cfg(args.output, out)
        return 0
    m0 = cfg.magmoms
    lam_feature = cfg.features.get("constraint_lambda")
    if lam_feature is not None and args.lam and float(lam_feature) != float(args.lam):
        print("lambda in input.cfg and on the command line differ", file=sys.stderr)
        return 4
    if lam_feature is not None:
        lam = float(lam_feature)

        def fun(m):
            res = model.evaluate(cfg, m)
            d = m - m0
            return (res["energy"] + lam * float(d @ d),
                    res["magnetic_gradient"] + 2.0 * lam * d)

        opt = minimize(fun, m0, jac=True, method="L-BFGS-B",
                       options={"gtol": 1e-11, "ftol": 1e-15, "maxiter": 1000})
        m = opt.x
    else:
        m = m0
    out = model.label(cfg, magmoms=m)
    out.features.pop("constraint_lambda", None)
    write_cfg(args.output, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
