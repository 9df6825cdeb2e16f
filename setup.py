"""Builds the optional C extension ``soakd._profiler``; the metadata lives in pyproject.toml.

The extension is optional: without a compiler or Python's headers the install still succeeds,
with a warning, and soakd runs without the sampled profiler (``soakd.profiler.AVAILABLE`` is
False and says why; tracemalloc is the fallback).
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, ExecError, PlatformError

# What a missing or broken toolchain raises (distutils' errors, re-exported by setuptools).
BUILD_ERRORS = (CCompilerError, ExecError, PlatformError, OSError)


class OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing: the package works without the extension."""

    def run(self) -> None:
        try:
            super().run()
        except BUILD_ERRORS as exc:
            _warn(f"could not build C extensions: {exc}")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except BUILD_ERRORS as exc:
            _warn(f"could not build {ext.name}: {exc}")


def _warn(message: str) -> None:
    bar = "*" * 78
    print(
        f"\n{bar}\nWARNING: {message}\n"
        "soakd is installed without its sampled allocation profiler; it falls back to\n"
        "tracemalloc. Install a C compiler and the Python headers (e.g. gcc, python3-dev)\n"
        f"and reinstall to get it.\n{bar}\n",
        file=sys.stderr,
    )


setup(
    ext_modules=[
        Extension(
            "soakd._profiler",
            sources=["soakd/_profiler.c"],
            extra_compile_args=["-O2", "-std=c11"] if sys.platform != "win32" else [],
            libraries=["m"] if sys.platform != "win32" else [],
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
