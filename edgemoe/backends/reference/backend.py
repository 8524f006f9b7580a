"""numpy reference expert: dequantize the record prefix (``edgemoe.quant``) and run SwiGLU in fp32."""
from __future__ import annotations

import numpy as np

from edgemoe.quant.record import decode_record


def swiglu(x: np.ndarray, gate_up: np.ndarray, down: np.ndarray) -> np.ndarray:
    """x [T, H], gate_up [2I, H] (rows 0:I gate), down [H, I] -> [T, H]."""
    gu = x @ gate_up.T
    i = gate_up.shape[0] // 2
    g, u = gu[:, :i], gu[:, i:]
    return ((g / (1 + np.exp(-g))) * u) @ down.T


class ReferenceBackend:
    name = "reference"

    def is_available(self) -> bool:
        return True

    def prepare(self, pkg, device=None):
        return None

    def load(self, pkg, layer, expert, bits, buf):
        w = decode_record(buf, pkg.layout, bits)
        return w["gate_up"], w["down"]

    def run(self, handle, x):
        return swiglu(x.astype(np.float32), *handle).astype(np.float32)
