"""The expert backend interface.

A backend turns an expert's record buffer (the prefix for one level, see ``edgemoe.quant.record``)
into something it can run, and runs it: ``load(pkg, layer, expert, bits, buf) -> handle`` and
``run(handle, x [T, H] float32) -> y [T, H] float32``. Ahead-of-time work (kernel compilation for a
device) goes in ``prepare``; backends that need none return None. Every backend is checked against
``reference`` (numpy, ground truth).

The grouped call, ``run_group(handles, xs, bounds, out)``, computes a whole MoE layer's experts in
one call, as llama.cpp's ``mul_mat_id``: ``xs [n, H]`` holds every (token, chosen expert) row, grouped
by expert; expert ``i`` (``handles[i]``, each at its own level) computes rows
``bounds[i]:bounds[i + 1]`` into the same rows of ``out [n, H]``. Backends without one of their own
get :func:`run_group`'s loop over ``run``, which is also the reference it is checked against.
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np


class ExpertBackend(Protocol):
    name: str

    def is_available(self) -> bool: ...

    def prepare(self, pkg, device: str | None = None) -> Any: ...

    def load(self, pkg, layer: int, expert: int, bits: int, buf: np.ndarray) -> Any: ...

    def run(self, handle: Any, x: np.ndarray) -> np.ndarray: ...


def run_each(backend, handles: Sequence[Any], xs: np.ndarray, bounds: np.ndarray, out: np.ndarray):
    """The grouped call as one ``run`` per expert (the reference of every ``run_group``)."""
    for i, h in enumerate(handles):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        out[lo:hi] = backend.run(h, xs[lo:hi])


def run_group(backend, handles: Sequence[Any], xs: np.ndarray, bounds: np.ndarray,
              out: np.ndarray) -> np.ndarray:
    """Every expert of ``handles`` on its rows of ``xs`` into ``out`` (see the module doc), by the
    backend's own grouped call where it has one; returns ``out``."""
    group = getattr(backend, "run_group", None)
    if group is None:
        run_each(backend, handles, xs, bounds, out)
    else:
        group(handles, xs, bounds, out)
    return out


def require_plain_swiglu(backend: str, arch):
    """Kernels that fuse the plain SwiGLU (HLS) refuse experts with biases or gpt-oss's clamped
    activation, naming the backends that compute them."""
    if arch.expert_act != "silu" or arch.expert_bias:
        from edgemoe.errors import ConfigError
        raise ConfigError(f"the {backend} kernels compute the plain SwiGLU expert; this {arch.family} "
                          f"package's experts have biases and a clamped activation: use --backend "
                          f"planes or tvm (under a budget), ort or reference (resident)")
