#!/usr/bin/env bash
# Build the compiled modules with AddressSanitizer (setup.py: MMTP_DEBUG=asan) in a scratch copy
# of the source tree and run the kernel tests against that copy: kernels vs the NumPy reference
# (magnetic basis sizes 1-6, radial basis sizes up to 10), finite differences, kernel variants,
# the neighbour list, the parameter kernels and Monte Carlo. Any
# out-of-bounds read or write stops the run with ASan's report.
#
#   scripts/asan_kernels.sh [extra pytest args]      (PYTHON=... selects the interpreter)
#
# The installed (optimised) build is left as it is. Python itself is not instrumented, so
# libasan is preloaded; leak checking is off (the interpreter keeps objects alive at exit).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
[ -x "$python" ] || python=$(command -v python3)
work=$(mktemp -d "${TMPDIR:-/tmp}/mmtp_asan.XXXXXX")
trap 'rm -rf "$work"' EXIT

# the tracked sources (plus uncommitted edits), without build outputs
(cd "$repo" && git ls-files -co --exclude-standard -- mmtp_hpc setup.py pyproject.toml tests inputs/potentials \
    | grep -v -E '\.(so|c)$' | tar -cf - -T -) | tar -xf - -C "$work"

cc=${CC:-gcc}
libasan=$("$cc" -print-file-name=libasan.so)
[ -f "$libasan" ] || { echo "libasan not found (install the compiler's libasan)" >&2; exit 2; }

echo "building with AddressSanitizer in $work ..."
(cd "$work" && MMTP_DEBUG=asan "$python" setup.py -q build_ext --inplace >build.log 2>&1) \
    || { tail -40 "$work/build.log"; exit 1; }

tests=(tests/test_kernels_vs_reference.py tests/test_finite_differences.py
       tests/test_kernel_variants.py tests/test_symmetric_onepass.py tests/test_neighbors.py
       tests/test_param_kernel.py tests/test_mc_incremental.py)
echo "running ${tests[*]} under ASan ..."
cd "$work"
MMTP_SHARED_DATA=${MMTP_SHARED_DATA:-$repo/../shared/data} \
PYTHONPATH="$work" \
LD_PRELOAD="$libasan" \
ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:strict_string_checks=1" \
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} \
    "$python" -m pytest -q -p no:cacheprovider "${tests[@]}" "$@"
echo "AddressSanitizer: kernel tests clean"
