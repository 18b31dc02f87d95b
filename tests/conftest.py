"""Shared fixtures: where the reference data lives, and the `shared_data` path fixture."""

import os
from pathlib import Path

# Deterministic thread counts whatever the caller's environment: small dense linear algebra
# (line searches, 6×6 cell filters) stalls with BLAS threads on a busy machine, and the
# summation order of threaded BLAS would make optimiser paths depend on the machine.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import pytest  # noqa: E402  (after the environment is set)

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MMTP_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"reference data not found at {DATA} (set MMTP_SHARED_DATA)")
    return DATA

# the magnetic potential of the MD physics tests (a session fixture; see tests/md_potential.py)
from md_potential import fe_potential  # noqa: E402, F401
