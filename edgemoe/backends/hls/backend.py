"""The `hls` expert backend on this machine: the FPGA's integer path (``int_path``) in numpy, so a
run shows exactly the numbers the board would compute; ``prepare`` writes the HLS project."""
from __future__ import annotations

from pathlib import Path

from edgemoe.backends.base import require_plain_swiglu
from edgemoe.backends.hls.int_path import expert_int
from edgemoe.quant.record import record_views


class HlsBackend:
    name = "hls"

    def is_available(self) -> bool:
        return True

    @staticmethod
    def resident_bytes(layout, bits: int) -> int:
        return layout.prefix_length(bits)

    def prepare(self, pkg, device: str = "zcu102", out: Path | None = None,
                part: str | None = None) -> Path:
        """Write the HLS project (kernel, testbench, Vitis script, test vectors) for ``device``."""
        from edgemoe.backends.hls.project import write_project

        require_plain_swiglu("hls", pkg.arch)
        return write_project(pkg, out or pkg.root / "kernels" / device / "hls", device, part=part)

    def load(self, pkg, layer, expert, bits, buf):
        require_plain_swiglu("hls", pkg.arch)
        return pkg.layout, record_views(buf, pkg.layout, bits), bits

    def run(self, handle, x):
        layout, views, bits = handle
        return expert_int(layout, views, bits, x)
