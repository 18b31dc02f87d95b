"""Build mmtp_hpc: one Extension per ``_*.pyx`` under mmtp_hpc/, directives in one place.

Environment switches:
  MMTP_NATIVE=1   add -march=native (not portable; off by default)
  MMTP_OPENMP=0   build without OpenMP (on by default where the compiler has it)
  MMTP_DEBUG=1    -O0 -g and Cython bounds checks
"""

import glob
import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("MMTP_DEBUG", "0") == "1"
NATIVE = os.environ.get("MMTP_NATIVE", "0") == "1"
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

compile_args = ["-O0", "-g"] if DEBUG else ["-O3", "-fno-math-errno"]
if NATIVE:
    compile_args.append("-march=native")
link_args = []
if OPENMP:
    compile_args.append("-fopenmp")
    link_args.append("-fopenmp")

extensions = []
for pyx in sorted(glob.glob("mmtp_hpc/**/_*.pyx", recursive=True)):
    module = pyx[:-4].replace(os.sep, ".")
    extensions.append(Extension(
        module, [pyx],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    ))

setup(ext_modules=cythonize(extensions, compiler_directives=COMPILER_DIRECTIVES, quiet=True))
