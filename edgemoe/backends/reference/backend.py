"""numpy reference expert: dequantize the record prefix (``edgemoe.quant``) and run the expert MLP
in fp32. The MLP is SwiGLU ``down(silu(gate x) * up x)``, or with ``arch.expert_act == "clamped"``
gpt-oss's: gate <= limit, -limit <= up <= limit, ``(up + 1) * gate * sigmoid(alpha * gate)``;
biases (``arch.expert_bias``) are added after each matrix."""
from __future__ import annotations

import numpy as np

from edgemoe.package.expert_graph import PLAIN_SWIGLU, act_of
from edgemoe.quant.record import decode_record


def glu(gu: np.ndarray, act: str = "silu", alpha: float = 1.702, limit: float = 7.0) -> np.ndarray:
    """gu [T, 2I] (columns 0:I gate, biases added) -> the gated activation [T, I]."""
    i = gu.shape[1] // 2
    g, u = gu[:, :i], gu[:, i:]
    if act == "silu":
        return (g / (1 + np.exp(-g))) * u
    g = np.minimum(g, np.float32(limit))
    u = np.clip(u, np.float32(-limit), np.float32(limit))
    return (u + np.float32(1)) * (g / (1 + np.exp(-np.float32(alpha) * g)))


def swiglu(x: np.ndarray, gate_up: np.ndarray, down: np.ndarray, act=PLAIN_SWIGLU,
           gate_up_bias: np.ndarray | None = None, down_bias: np.ndarray | None = None) -> np.ndarray:
    """x [T, H], gate_up [2I, H] (rows 0:I gate), down [H, I] (+ biases [2I], [H]) -> [T, H]."""
    gu = x @ gate_up.T
    if gate_up_bias is not None:
        gu = gu + gate_up_bias
    y = glu(gu, *act) @ down.T
    return y if down_bias is None else y + down_bias


class ReferenceBackend:
    name = "reference"

    def is_available(self) -> bool:
        return True

    def prepare(self, pkg, device=None):
        return None

    def load(self, pkg, layer, expert, bits, buf):
        w = decode_record(buf, pkg.layout, bits)
        return (w["gate_up"], w["down"], act_of(getattr(pkg, "arch", None)), w.get("gate_up.bias"),
                w.get("down.bias"))

    def run(self, handle, x):
        return swiglu(x.astype(np.float32), *handle).astype(np.float32)
