"""The Xilinx arbitrary-precision headers (ap_int.h, ap_fixed.h; Apache-2.0) for C-simulation with
g++: extracted from the hls4ml wheel on PyPI into a cache folder, never vendored in this repo."""
from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from edgemoe.errors import EdgeMoEError

PREFIX = "hls4ml/templates/vivado/ap_types/"


def ap_types_dir(cache: Path) -> Path:
    """Folder with ap_int.h & co.; downloads the hls4ml wheel (no dependencies) on first use."""
    out = Path(cache) / "ap_types"
    if (out / "ap_int.h").exists():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        p = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp,
                            "hls4ml"], capture_output=True, text=True)
        wheels = list(Path(tmp).glob("hls4ml-*.whl"))
        if p.returncode or not wheels:
            raise EdgeMoEError(f"could not download the hls4ml wheel for the ap_int.h headers "
                               f"({p.stderr.strip()[-200:]}); run `pip download --no-deps hls4ml` "
                               f"where PyPI is reachable")
        with zipfile.ZipFile(wheels[0]) as z:
            for name in z.namelist():
                if name.startswith(PREFIX) and not name.endswith("/"):
                    dst = out / name[len(PREFIX):]
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    dst.write_bytes(z.read(name))
    return out
