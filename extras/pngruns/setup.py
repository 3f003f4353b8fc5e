"""The C extension; everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("panoptix_pngruns._pngruns", ["src/panoptix_pngruns/_pngruns.c"],
                             extra_compile_args=["-O3"])])
