"""Stand-in for ``abinit run.abi`` where ABINIT is not installed (CI): replays stored real outputs.

    standin_abinit.py run.abi

The outputs are real ABINIT 9.6.2 files in ``abinit_real/`` beside this script. What a run does
is chosen per configuration (``MMTP_INDEX``, set by the command oracle) by the JSON object in the
file named by ``STANDIN_PLAN`` (default for every index: ``"ok"``):

- ``"ok"``: run.abo = the constrained 2-atom Fe output with the sphere moments set to the targets
  (``spinat`` z of run.abi) and ``etotal`` shifted by 1e-3 Ha × index (labels tell apart);
- ``"scf:N"``: not converged (the stored output of an ``nstep 6`` run) while run.abi's ``nstep``
  is below N, else ``"ok"``;
- ``"error"``: ABINIT's chkinp error on stdout (stored log), exit status 14, as ABINIT does;
- ``"miss:D"``: ``"ok"`` with every sphere moment D μB off its target;
- ``"sleep:S"``: ``"ok"`` after S seconds.

Like ABINIT 9.6 with its default band count, every run whose ``spinat`` sums to less than
−2 μB (2-atom Fe: 17 bands per spin hold at most 34 electrons, the majority spin of a sum −M
needs (32 + M)/2) stops with the stored "not enough bands" error (exit status 14) whatever the
plan says: the writer must never send such an input.

Every call appends ``index start end nstep cwd`` to the file named by ``STANDIN_CALLS``.
"""

import json
import os
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent / "abinit_real"
OK = HERE / "fe2_a2.86_m2.2_constrained.abo"
NOT_CONVERGED = HERE / "fe2_nstep6_not_converged.abo"
ERROR_LOG = HERE / "fe2_chksymtnons_error.log"
NBAND_LOG = HERE / "fe2_negative_moments_nband_error.log"


def targets_and_nstep(abi: str) -> tuple[list[float], int]:
    lines = abi.splitlines()
    natom = int(next(ln.split()[1] for ln in lines if ln.startswith("natom")))
    k = next(i for i, ln in enumerate(lines) if ln.strip() == "spinat")
    moments = [float(lines[k + 1 + j].split()[2]) for j in range(natom)]
    nstep = int(next(ln.split()[1] for ln in lines if ln.startswith("nstep")))
    return moments, nstep


def ok_output(moments: list[float], index: int, offset: float = 0.0) -> str:
    text = OK.read_text()
    lines = text.splitlines()
    k = max(i for i, ln in enumerate(lines) if "Integrated electronic and magnetization" in ln)
    head = next(i for i in range(k, k + 8) if lines[i].split()[:1] == ["Atom"])
    for j, m in enumerate(moments):
        tok = lines[head + 1 + j].split()
        tok[5] = f"{m + offset:.6f}"
        lines[head + 1 + j] = "    " + "   ".join(tok)
    text = "\n".join(lines) + "\n"
    return re.sub(r"(etotal\s+)(-?[0-9.]+E[+-][0-9]+)",
                  lambda m: m.group(1) + f"{float(m.group(2)) + 1e-3 * index:.10E}", text, count=1)


def main() -> int:
    start = time.time()
    abi = Path(sys.argv[1]).read_text()
    index = int(os.environ.get("MMTP_INDEX", "0"))
    plan = {}
    if os.environ.get("STANDIN_PLAN"):
        plan = json.loads(Path(os.environ["STANDIN_PLAN"]).read_text())
    what = str(plan.get(str(index), "ok"))
    moments, nstep = targets_and_nstep(abi)
    kind, _, arg = what.partition(":")
    status = 0
    if kind == "sleep":
        time.sleep(float(arg))
    if sum(moments) < -2.0:
        sys.stdout.write(NBAND_LOG.read_text())
        status = 14
    elif kind == "error":
        sys.stdout.write(ERROR_LOG.read_text())
        status = 14
    elif kind == "scf" and nstep < int(arg):
        Path("run.abo").write_text(NOT_CONVERGED.read_text())
    else:
        offset = float(arg) if kind == "miss" else 0.0
        Path("run.abo").write_text(ok_output(moments, index, offset))
    if os.environ.get("STANDIN_CALLS"):
        with open(os.environ["STANDIN_CALLS"], "a") as f:
            f.write(f"{index} {start:.3f} {time.time():.3f} {nstep} {os.getcwd()}\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
