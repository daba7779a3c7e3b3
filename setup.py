"""Build hook for the compiled GC op (csrc/). Metadata lives in pyproject.toml."""
from setuptools import setup

setup()
