"""`edgemoe compile PKG --device NAME`: ahead-of-time kernels for a board, stored in the package.

FPGA boards (a device profile with an ``hls_part``, or zcu102/kv260) get the HLS project; every other
device gets TVM kernels for the target its profile names (or a TVM preset such as ``host``).
"""
from __future__ import annotations

from pathlib import Path

from edgemoe.errors import ConfigError

# a profile's ``tvm_target`` text -> a TVM preset (TVM 0.27 no longer parses target strings)
_CUDA_PRESETS = {"sm_87": "jetson-orin", "sm_72": "jetson-xavier"}


def profile_target(text: str | None):
    """'llvm', 'llvm -mtriple=... -mcpu=...', 'cuda -arch=sm_87', 'opencl -device=mali' -> a preset
    name or a TVM target dict that ``edgemoe.backends.tvm.compile.compile_package`` takes."""
    if not text:
        raise ConfigError("this device profile names no TVM target (targets.tvm_target)")
    kind, *opts = text.split()
    kv = dict(o.lstrip("-").split("=", 1) for o in opts if "=" in o)
    if kind == "llvm" and not kv:
        return "host"
    if kind == "llvm":
        target = {"kind": "llvm", **kv}
        if target.get("mtriple", "").startswith("aarch64"):
            target["mattr"] = ["+neon"]
        return target
    if kind == "cuda" and kv.get("arch") in _CUDA_PRESETS:
        return _CUDA_PRESETS[kv["arch"]]
    if kind == "opencl":
        return "mali"
    raise ConfigError(f"cannot build kernels for target {text!r}; supported: llvm (host or "
                      f"-mtriple/-mcpu), cuda -arch=sm_87|sm_72, opencl -device=mali")


def compile_for_device(pkg_path, device: str, out=None, progress=None, devices_dir=None,
                       activations: str = "auto") -> Path:
    """Build the kernels of ``device`` for the package at ``pkg_path``; returns their folder.
    ``activations``: the TVM CPU kernels' decode precision (``compile_package``); HLS ignores it."""
    from edgemoe.backends.hls.project import PARTS
    from edgemoe.devices import load_devices
    from edgemoe.package.reader import Package

    profiles = load_devices(devices_dir)
    prof = profiles.get(device)
    if device in PARTS or (prof is not None and prof.targets.hls_part):
        pkg = Package(pkg_path)
        dest = Path(out) / "kernels" / device / "hls" if out else None
        from edgemoe.backends.hls.backend import HlsBackend
        return HlsBackend().prepare(pkg, device, out=dest,
                                    part=prof.targets.hls_part if prof else None)
    from edgemoe.backends.tvm.targets import PRESET_NAMES

    if prof is not None:
        target = profile_target(prof.targets.tvm_target)
    elif device in PRESET_NAMES:
        target = device
    else:
        known = sorted(set(profiles) | set(PRESET_NAMES) | set(PARTS))
        raise ConfigError(f"unknown device {device!r}; known: {', '.join(known)} "
                          f"(`edgemoe devices` lists the profiles)")
    try:
        from edgemoe.backends.tvm.compile import compile_package
    except ImportError as e:
        raise ConfigError(f"TVM kernels need apache-tvm: pip install 'edgemoe[tvm]' ({e})") from e
    return compile_package(pkg_path, {device: target}, out=out, progress=progress,
                           activations=activations)[device]
