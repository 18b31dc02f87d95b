"""Build mmtp_hpc: one Extension per ``_*.pyx`` under mmtp_hpc/, directives in one place.

The MTP kernels are built twice on x86-64: ``_kernels`` (portable) and ``_kernels_avx2``
(the same source with -mavx2 -mfma); ``mmtp_hpc/potentials/mtp/kernels.py`` picks one at
run time from the CPU's features.

Environment switches:
  MMTP_NATIVE=1   add -march=native to every module (not portable; off by default)
  MMTP_OPENMP=0   build without OpenMP (on by default where the compiler has it)
  MMTP_DEBUG=1    -O0 -g and Cython bounds checks
  MMTP_DEBUG=asan -O1 -g, Cython bounds checks and AddressSanitizer (-fsanitize=address);
                  the modules then need libasan loaded first: scripts/asan_kernels.sh builds
                  a copy this way and runs the kernel tests under it
"""

import glob
import os
import platform

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

_DEBUG_MODE = os.environ.get("MMTP_DEBUG", "0").strip().lower()
if _DEBUG_MODE not in ("0", "", "1", "asan"):
    raise SystemExit(f"MMTP_DEBUG must be 0, 1 or asan, got {_DEBUG_MODE!r}")
ASAN = _DEBUG_MODE == "asan"
DEBUG = _DEBUG_MODE == "1" or ASAN
NATIVE = os.environ.get("MMTP_NATIVE", "0") == "1"
X86_64 = platform.machine().lower() in ("x86_64", "amd64")
OPENMP = os.environ.get("MMTP_OPENMP", "1") == "1"

COMPILER_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": DEBUG,
    "nonecheck": False,
    "embedsignature": True,
}

if ASAN:
    compile_args = ["-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer"]
elif DEBUG:
    compile_args = ["-O0", "-g"]
else:
    compile_args = ["-O3", "-fno-math-errno"]
if NATIVE:
    compile_args.append("-march=native")
link_args = ["-fsanitize=address"] if ASAN else []
if OPENMP:
    compile_args.append("-fopenmp")
    link_args.append("-fopenmp")

extensions = []
for pyx in sorted(glob.glob("mmtp_hpc/**/_*.pyx", recursive=True)):
    module = pyx[:-4].replace(os.sep, ".")
    flags = list(compile_args)
    if module.endswith("_avx2"):
        if not X86_64:
            continue
        flags += ["-mavx2", "-mfma"]
    extensions.append(Extension(
        module, [pyx],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=flags,
        extra_link_args=link_args,
        depends=glob.glob(os.path.join(os.path.dirname(pyx), "*.h"))
        + glob.glob(os.path.join(os.path.dirname(pyx), "*.pxi")),
    ))

setup(ext_modules=cythonize(extensions, compiler_directives=COMPILER_DIRECTIVES, quiet=True))
