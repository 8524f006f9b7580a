"""Shared test set-up: tests import ``tiny_models`` from this folder."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def demo_package():
    """The built-in model's package (exported once into the edgemoe cache)."""
    from edgemoe.demo import builtin_package
    return builtin_package()
