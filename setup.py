"""Builds the compiled allocator. Metadata lives in pyproject.toml.

A failed compile is an install error: there is deliberately no pure-Python
fallback at install time (WFM_ALLOCATOR=reference selects the reference
implementation at run time instead).
"""

from glob import glob

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "wfm_orchestrator.allocator._compiled",
        sources=["src/wfm_orchestrator/allocator/_compiled.pyx", *sorted(glob("csrc/*.c"))],
        include_dirs=["csrc"],
        extra_compile_args=["-O2", "-std=c99"],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level="3",
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    )
)
