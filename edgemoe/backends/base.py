"""The expert backend interface.

A backend turns an expert's record buffer (the prefix for one level, see ``edgemoe.quant.record``)
into something it can run, and runs it: ``load(pkg, layer, expert, bits, buf) -> handle`` and
``run(handle, x [T, H] float32) -> y [T, H] float32``. Ahead-of-time work (kernel compilation for a
device) goes in ``prepare``; backends that need none return None. Every backend is checked against
``reference`` (numpy, ground truth).
"""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class ExpertBackend(Protocol):
    name: str

    def is_available(self) -> bool: ...

    def prepare(self, pkg, device: str | None = None) -> Any: ...

    def load(self, pkg, layer: int, expert: int, bits: int, buf: np.ndarray) -> Any: ...

    def run(self, handle: Any, x: np.ndarray) -> np.ndarray: ...
