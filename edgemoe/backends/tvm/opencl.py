"""Launch the generated OpenCL kernels through pyopencl (PoCL in tests; any OpenCL 1.2 runtime).

TVM's wheel builds OpenCL source but cannot launch it without an OpenCL-enabled runtime, so this
runs the source of ``kernels/<device>/experts.cl`` directly, with the grid and block extents that
``kernels/<device>/index.yaml`` records per kernel. Float16 scales are passed as their uint16 bit
patterns (decoded in the kernel), so devices without ``cl_khr_fp16`` run them too.
"""
from __future__ import annotations

import re

import numpy as np

_SIG = re.compile(r"__kernel\s+void\s+(\w+)\(([^)]*)\)\s*\{")


def kernel_params(source: str) -> dict[str, list[str]]:
    """Kernel name -> its buffer parameter names (``x``, ``plane1`` ... without TVM's ``_ptr``)."""
    out = {}
    for name, params in _SIG.findall(source):
        names = [p.split()[-1] for p in params.split(",") if p.strip()]
        out[name] = [n[:-4] if n.endswith("_ptr") else n for n in names]
    return out


class OpenCLKernels:
    """The kernels of one OpenCL source, callable by function name with numpy arrays."""

    def __init__(self, source: str, launches: dict[str, list[dict]], device=None):
        import pyopencl as cl

        self._cl = cl
        if device is None:
            device = cl.get_platforms()[0].get_devices()[0]
        self.device = device
        self.ctx = cl.Context([device])
        self.queue = cl.CommandQueue(self.ctx)
        self.program = cl.Program(self.ctx, source).build()
        self.params = kernel_params(source)
        self.launches = launches

    def __call__(self, name: str, arrays: dict[str, np.ndarray], out: str) -> np.ndarray:
        """Run function ``name`` (each of its kernels in order); ``out`` names the result array."""
        cl = self._cl
        mf = cl.mem_flags
        bufs = {k: cl.Buffer(self.ctx, mf.READ_WRITE | mf.COPY_HOST_PTR, hostbuf=np.ascontiguousarray(v))
                for k, v in arrays.items()}
        for i, dims in enumerate(self.launches[name]):
            kname = f"{name}_kernel" + (f"_{i}" if i else "")
            kernel = getattr(self.program, kname)
            kernel.set_args(*[bufs[p] for p in self.params[kname]])
            block = tuple(dims["block"])
            grid = tuple(g * b for g, b in zip(dims["grid"], block))
            cl.enqueue_nd_range_kernel(self.queue, kernel, grid, block)
        result = np.empty_like(arrays[out])
        cl.enqueue_copy(self.queue, result, bufs[out])
        self.queue.finish()
        return result
