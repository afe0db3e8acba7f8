"""Builds the optional compiled ring path (shm._ringfast); metadata is in pyproject.toml.

``optional=True``: where no C compiler is found the build says so and the
install goes on, and shm.ring falls back to its pure-Python path.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("shm._ringfast", ["shm/_ringfast.c"], optional=True,
                             extra_compile_args=["-O2", "-std=c11"])])
