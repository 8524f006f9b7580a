"""Device profiles: what a board offers a package (memory, bandwidths, storage, compute per backend).

One YAML file per board ships in ``edgemoe/device_profiles``; users add their own in
``$EDGEMOE_DEVICES`` (default ``~/.config/edgemoe/devices``) or a ``--devices-dir``, later folders
overriding earlier ones by name. ``edgemoe calibrate`` measures this machine into ``host.yaml`` there;
without it, ``host`` is the built-in conservative defaults and says so (``calibrated: false``).

A file looks like::

    name: jetson-orin-nano-8gb
    description: ...
    memory: {total: 8GiB, usable: 6.5GiB, bandwidth: 68GB/s}
    storage: {kind: nvme, read_bandwidth: 1.9GB/s, read_latency: 90us, verify_bandwidth: 1.1GB/s}
    cpu: {cores: 6, io_contention: 0.05}
    compute: {ort: 8.0, planes: 0.15}       # effective GFLOP/s per backend, as the runtime runs it
    targets: {ort_providers: [...], tvm_target: ..., hls_part: ...}

Every number cites its source in a comment of its file.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from edgemoe.errors import DeviceProfileError

BUILTIN_DIR = Path(__file__).parent / "device_profiles"
HOST = "host"
_TIME = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_BYTES = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


@dataclass(frozen=True)
class Storage:
    kind: str                   # nvme | emmc | sd | ssd | ...
    read_bandwidth: float       # bytes/s, sequential reads of record chunks
    read_latency: float         # s, per read (queue depth 1, small reads)
    verify_bandwidth: float     # bytes/s of sha256 on one CPU core (the loader checks every chunk)


@dataclass(frozen=True)
class Targets:
    ort_providers: tuple[str, ...]
    tvm_target: str | None
    hls_part: str | None


@dataclass(frozen=True)
class DeviceProfile:
    """A board, normalised once: bytes, bytes/s, seconds, GFLOP/s.

    ``compute`` holds (backend, effective GFLOP/s) pairs: ``ort`` (dense graphs on onnxruntime's CPU
    provider, one intra-op thread as the runtime runs them), ``planes`` (the numpy expert kernel at
    decode), and informational accelerator entries (``ort-cuda``, ``tvm-opencl``, ``hls``...).
    ``io_contention``: compute time lost per second of overlapping expert I/O (the CPU share a read
    and its sha256 take from the compute thread); 0 = I/O is free for compute.
    """

    name: str
    description: str
    memory_total: int
    memory_usable: int
    memory_bandwidth: float
    storage: Storage
    cpu_cores: int
    io_contention: float
    compute: tuple[tuple[str, float], ...]
    targets: Targets
    calibrated: bool = False     # true once `edgemoe calibrate` measured it (host only)
    source: str = ""             # the file it came from

    def throughput(self, backend: str) -> float:
        """Effective GFLOP/s of ``backend`` on this board."""
        for name, value in self.compute:
            if name == backend:
                return value
        raise DeviceProfileError(f"device {self.name!r} ({self.source}) has no compute throughput for "
                                 f"backend {backend!r}; add compute.{backend} to its file")

    def read_seconds(self, nbytes: int) -> float:
        """Time of one expert chunk read of ``nbytes``: latency, transfer, sha256 verification."""
        s = self.storage
        return s.read_latency + nbytes / s.read_bandwidth + nbytes / s.verify_bandwidth

    def to_dict(self) -> dict:
        """The profile in its file's structure (numbers in bytes, bytes/s, s): ``parse_profile``
        reads it back unchanged."""
        s = self.storage
        return {"name": self.name, "description": self.description, "calibrated": self.calibrated,
                "memory": {"total": self.memory_total, "usable": self.memory_usable,
                           "bandwidth": self.memory_bandwidth},
                "storage": {"kind": s.kind, "read_bandwidth": s.read_bandwidth,
                            "read_latency": s.read_latency, "verify_bandwidth": s.verify_bandwidth},
                "cpu": {"cores": self.cpu_cores, "io_contention": self.io_contention},
                "compute": dict(self.compute),
                "targets": {"ort_providers": list(self.targets.ort_providers),
                            "tvm_target": self.targets.tvm_target, "hls_part": self.targets.hls_part}}


# ---- parsing ----

def _field(where: str, path: str, msg: str) -> DeviceProfileError:
    return DeviceProfileError(f"{where}: field {path}: {msg}")


def _get(d: dict, path: str, where: str, required: bool = True, default=None):
    cur = d
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            if required:
                raise _field(where, path, "missing; every profile needs it (see edgemoe/device_profiles/ "
                                          "for examples)")
            return default
        cur = cur[part]
    return cur


def _bytes(text, where: str, path: str) -> int:
    if isinstance(text, (int, float)) and not isinstance(text, bool) and text > 0:
        return int(text)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?", str(text).strip().lower())
    if not m:
        raise _field(where, path, f"cannot read {text!r} as a size; write it like 8GiB or 512MB")
    return int(float(m.group(1)) * _BYTES[m.group(2) or ""])


def _rate(text, where: str, path: str) -> float:
    if isinstance(text, (int, float)) and not isinstance(text, bool) and text > 0:
        return float(text)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)/s", str(text).strip().lower())
    if not m or float(m.group(1)) <= 0:
        raise _field(where, path, f"cannot read {text!r} as a bandwidth; write it like 68GB/s or 450MB/s")
    return float(m.group(1)) * _BYTES[m.group(2)]


def _seconds(text, where: str, path: str) -> float:
    if isinstance(text, (int, float)) and not isinstance(text, bool) and text >= 0:
        return float(text)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|ms|us|µs|ns)", str(text).strip().lower())
    if not m:
        raise _field(where, path, f"cannot read {text!r} as a time; write it like 90us or 0.4ms")
    return float(m.group(1)) * _TIME[m.group(2)]


def _number(text, where: str, path: str, lo: float = 0.0, hi: float = float("inf")) -> float:
    if isinstance(text, bool) or not isinstance(text, (int, float)) or not lo <= text <= hi:
        raise _field(where, path, f"{text!r} is not a number in [{lo}, {hi}]")
    return float(text)


def parse_profile(data, where: str = "<profile>") -> DeviceProfile:
    """Validate and normalise one profile (a dict loaded from YAML); errors name the field."""
    if not isinstance(data, dict):
        raise DeviceProfileError(f"{where}: a device profile is a YAML mapping (name:, memory:, "
                                 f"storage:, cpu:, compute:, targets:), not {type(data).__name__}")
    name = _get(data, "name", where)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise _field(where, "name", f"{name!r} must be a word of letters, digits, '.', '_' or '-'")
    total = _bytes(_get(data, "memory.total", where), where, "memory.total")
    usable = _bytes(_get(data, "memory.usable", where, False, int(total * 0.85)), where, "memory.usable")
    if usable > total:
        raise _field(where, "memory.usable", "is larger than memory.total")
    compute = _get(data, "compute", where)
    if not isinstance(compute, dict) or not compute:
        raise _field(where, "compute", "must map backends to effective GFLOP/s, e.g. {ort: 8, planes: 0.2}")
    pairs = tuple((str(k), _number(v, where, f"compute.{k}", 1e-6)) for k, v in compute.items())
    for needed in ("ort", "planes"):
        if needed not in dict(pairs):
            raise _field(where, f"compute.{needed}", "missing; forecasts scale the runtime's dense "
                                                     "(ort) and expert (planes) compute by it")
    providers = _get(data, "targets.ort_providers", where, False, ["CPUExecutionProvider"])
    if not isinstance(providers, list) or not all(isinstance(p, str) for p in providers):
        raise _field(where, "targets.ort_providers", "must be a list of onnxruntime provider names")
    tvm = _get(data, "targets.tvm_target", where, False)
    hls = _get(data, "targets.hls_part", where, False)
    for path, v in (("targets.tvm_target", tvm), ("targets.hls_part", hls)):
        if v is not None and not isinstance(v, str):
            raise _field(where, path, f"{v!r} must be a string or null")
    calibrated = _get(data, "calibrated", where, False, False)
    if not isinstance(calibrated, bool):
        raise _field(where, "calibrated", "must be true or false")
    return DeviceProfile(
        name=name, description=str(_get(data, "description", where, False, "")),
        memory_total=total, memory_usable=usable,
        memory_bandwidth=_rate(_get(data, "memory.bandwidth", where), where, "memory.bandwidth"),
        storage=Storage(
            kind=str(_get(data, "storage.kind", where, False, "unknown")),
            read_bandwidth=_rate(_get(data, "storage.read_bandwidth", where), where,
                                 "storage.read_bandwidth"),
            read_latency=_seconds(_get(data, "storage.read_latency", where), where,
                                  "storage.read_latency"),
            verify_bandwidth=_rate(_get(data, "storage.verify_bandwidth", where, False, "1GB/s"),
                                   where, "storage.verify_bandwidth")),
        cpu_cores=int(_number(_get(data, "cpu.cores", where), where, "cpu.cores", 1, 4096)),
        io_contention=_number(_get(data, "cpu.io_contention", where, False, 0.1), where,
                              "cpu.io_contention", 0.0, 4.0),
        compute=pairs, targets=Targets(tuple(providers), tvm, hls), calibrated=calibrated,
        source=where)


def load_profile(path) -> DeviceProfile:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise DeviceProfileError(f"cannot read device profile {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise DeviceProfileError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from e
    return parse_profile(data, str(path))


def user_dir() -> Path:
    """Where users keep their own profiles and the calibrated ``host.yaml``."""
    env = os.environ.get("EDGEMOE_DEVICES")
    return Path(env) if env else Path.home() / ".config" / "edgemoe" / "devices"


def profile_dirs(extra=None) -> list[Path]:
    dirs = [BUILTIN_DIR, user_dir()]
    if extra:
        dirs.append(Path(extra))
    return dirs


def load_devices(extra_dir=None) -> dict[str, DeviceProfile]:
    """Every known profile by name: built-in, then the user folder, then ``extra_dir`` (later wins)."""
    if extra_dir is not None and not Path(extra_dir).is_dir():
        raise DeviceProfileError(f"--devices-dir {extra_dir} is not a folder; point it at a folder of "
                                 f"device YAML files")
    out: dict[str, DeviceProfile] = {}
    for d in profile_dirs(extra_dir):
        if not d.is_dir():
            continue
        for f in sorted(d.glob("*.y*ml")):
            p = load_profile(f)
            out[p.name] = p
    return out


def get_device(name: str, extra_dir=None) -> DeviceProfile:
    """The profile called ``name``; an unknown name lists the known ones."""
    devices = load_devices(extra_dir)
    if name not in devices:
        raise DeviceProfileError(f"unknown device {name!r}; known devices: {', '.join(sorted(devices))} "
                                 f"(add your own YAML file to {user_dir()} or --devices-dir)")
    return devices[name]
