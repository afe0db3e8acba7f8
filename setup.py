"""Builds the optional compiled parts: the ring path (shm._ringfast) and the journal's
payload check (pipeline._journalfast); metadata is in pyproject.toml.

``optional=True``: where no C compiler is found the build says so and the
install goes on, and each module falls back to its pure-Python path.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("shm._ringfast", ["shm/_ringfast.c"], optional=True,
                             extra_compile_args=["-O2", "-std=c11"]),
                   Extension("pipeline._journalfast", ["pipeline/_journalfast.c"], optional=True,
                             extra_compile_args=["-O2", "-std=c11"])])
