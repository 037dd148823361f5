"""The cffi extension (io_uring binding and memory-ordering helpers) is built here at install."""

from setuptools import setup

setup(cffi_modules=["vmfs/_native_build.py:ffibuilder"])
