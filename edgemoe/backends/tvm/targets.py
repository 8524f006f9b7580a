"""Device names -> TVM targets: presets for the boards edgemoe supports, or any explicit target.

A device target is the TVM target of the kernels (``llvm`` for CPUs, ``cuda``, ``opencl``), the
``llvm`` target of the host code for GPU devices, and the C compiler that links the library
(a cross compiler for boards). Targets are dicts with explicit ``mtriple``/``mcpu``: TVM 0.27 ran
host kernels 2-2.5x faster with them than with a bare ``llvm``.
"""
from __future__ import annotations

import json
import platform
import re
import shutil
from dataclasses import dataclass

from edgemoe.errors import ConfigError

AARCH64_CC = "aarch64-linux-gnu-gcc"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _aarch64(mcpu: str) -> dict:
    return {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": mcpu, "mattr": ["+neon"]}


# name -> (kernel target, host target or None, C compiler or None for the system one)
PRESETS = {
    "aarch64": (_aarch64("cortex-a72"), None, AARCH64_CC),          # Raspberry Pi 4 class and up
    "jetson-orin": ({"kind": "cuda", "arch": "sm_87"}, _aarch64("cortex-a78ae"), AARCH64_CC),
    "jetson-xavier": ({"kind": "cuda", "arch": "sm_72"}, _aarch64("carmel"), AARCH64_CC),
    "mali": ({"kind": "opencl", "device": "mali"}, _aarch64("cortex-a55"), AARCH64_CC),
}
PRESET_NAMES = ("host",) + tuple(PRESETS)


def host_target() -> dict:
    """The llvm target of this machine, triple and CPU spelled out."""
    from tvm.target import codegen

    return {"kind": "llvm", "mtriple": f"{platform.machine()}-linux-gnu",
            "mcpu": str(codegen.llvm_get_system_cpu())}


@dataclass(frozen=True)
class DeviceTarget:
    """Where one device's kernels run and how they are built."""

    name: str
    target: dict                       # kernel target (llvm / cuda / opencl)
    host: dict | None = None           # host code target of GPU devices
    cc: str | None = None              # linker: None = the system compiler

    @property
    def kind(self) -> str:
        return self.target["kind"]

    @property
    def cpu_target(self) -> dict:
        """The llvm target of the CPU side (the kernels themselves on CPU devices)."""
        return self.target if self.kind == "llvm" else (self.host or host_target())

    @property
    def arch(self) -> str:
        """CPU architecture of the library (x86_64, aarch64...)."""
        return self.cpu_target.get("mtriple", "").split("-")[0]

    def tvm_target(self):
        import tvm

        return tvm.target.Target(self.target, host=self.host) if self.host else tvm.target.Target(self.target)


def _from_value(name: str, value) -> DeviceTarget:
    if value is None or value == "host" or (value == name and name == "host"):
        return DeviceTarget(name, host_target())
    if isinstance(value, str) and value in PRESETS:
        target, host, cc = PRESETS[value]
        return DeviceTarget(name, dict(target), dict(host) if host else None, cc)
    if isinstance(value, DeviceTarget):
        return value
    if isinstance(value, str) and value.lstrip().startswith("{"):   # a device profile's tvm_target
        try:
            value = json.loads(value)
        except ValueError as e:
            raise ConfigError(f"device {name!r}: target {value!r} is not valid JSON ({e})") from None
    if isinstance(value, dict):
        target = dict(value)
        host = target.pop("host", None)
        cc = target.pop("cc", None)
        if target.get("kind") not in ("llvm", "cuda", "opencl"):
            raise ConfigError(f"device {name!r}: target kind {target.get('kind')!r} is not supported; "
                              f"use llvm, cuda or opencl")
        if target["kind"] == "llvm" and "mtriple" not in target:
            target.update({k: v for k, v in host_target().items() if k not in target})
        if host is None and target["kind"] != "llvm":
            host = host_target()
        if cc is None and target.get("mtriple", (host or {}).get("mtriple", "")).startswith("aarch64") \
                and platform.machine() != "aarch64":
            cc = AARCH64_CC
        return DeviceTarget(name, target, host, cc)
    raise ConfigError(f"device {name!r}: cannot use {value!r} as a target; give a preset "
                      f"({', '.join(PRESET_NAMES)}) or a TVM target dict such as "
                      f"{{'kind': 'llvm', 'mtriple': 'aarch64-linux-gnu', 'mcpu': 'cortex-a76'}}")


def resolve(device_targets) -> dict[str, DeviceTarget]:
    """Normalise ``compile_package``'s ``device_targets``: a preset name, a list of preset names, or
    a mapping of device name -> preset name / TVM target dict or its JSON text (``host`` and ``cc``
    keys allowed; TVM 0.27 no longer parses ``"llvm -mcpu=..."`` strings)."""
    if isinstance(device_targets, str):
        device_targets = [device_targets]
    items = device_targets.items() if isinstance(device_targets, dict) else \
        [(d, d) for d in device_targets]
    out = {}
    for name, value in items:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(f"device name {name!r} must be a word of letters, digits, '.', '_' or '-'")
        if isinstance(value, str) and value == name and value not in PRESET_NAMES:
            raise ConfigError(f"unknown device {name!r}; presets: {', '.join(PRESET_NAMES)}, or pass "
                              f"{{{name!r}: <TVM target dict>}}")
        out[name] = _from_value(name, value)
    if not out:
        raise ConfigError(f"no device given; presets: {', '.join(PRESET_NAMES)}")
    return out


def linker_missing(dt: DeviceTarget) -> str | None:
    """Why this machine cannot link ``dt``'s library (None if it can)."""
    if dt.cc and shutil.which(dt.cc) is None:
        return (f"the cross compiler {dt.cc} is not installed "
                f"(Debian/Ubuntu: apt-get install gcc-aarch64-linux-gnu)")
    if dt.arch and dt.arch != platform.machine() and dt.cc is None:
        return f"device {dt.name!r} is {dt.arch}; give a cross compiler as its 'cc'"
    return None
