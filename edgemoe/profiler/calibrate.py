"""`edgemoe calibrate`: measure this machine into a ``host`` device profile (``host.yaml``).

Measured, each in well under a few seconds:
- storage: sequential O_DIRECT reads of a temporary file (bandwidth), random 4 KiB O_DIRECT reads
  (latency), in the folder where packages live; where O_DIRECT is refused, buffered reads after
  ``posix_fadvise(DONTNEED)``.
- memory bandwidth: a numpy copy of a large array (bytes read + written per second).
- sha256 bandwidth (the loader checks every chunk it reads).
- compute: the runtime's expert kernel (``planes``) at decode on a synthetic expert, per level; and
  the dense path (onnxruntime CPU, one thread) on a MatMul graph; as effective GFLOP/s.
- contention: how much slower the expert kernel runs while an I/O thread reads and hashes.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import mmap
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import yaml

from edgemoe.devices import HOST, parse_profile, user_dir
from edgemoe.errors import ConfigError

EXPERT_SHAPE = (512, 1024)        # (hidden, intermediate) of the synthetic expert


def _open_direct(path: Path) -> tuple[int, bool]:
    try:
        return os.open(path, os.O_RDONLY | getattr(os, "O_DIRECT", 0)), hasattr(os, "O_DIRECT")
    except OSError:
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return fd, False


def measure_storage(folder: Path, size: int) -> dict:
    """Sequential read bandwidth and 4 KiB read latency of ``folder``'s filesystem."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".edgemoe-calibrate-", delete=False) as f:
        path = Path(f.name)
        block = np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
        for _ in range(size >> 20):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    try:
        fd, direct = _open_direct(path)
        try:
            buf = mmap.mmap(-1, 1 << 20)
            off, t0 = 0, time.perf_counter()
            while True:
                n = os.preadv(fd, [buf], off)
                if n <= 0:
                    break
                off += n
            seq = off / (time.perf_counter() - t0)
            small = mmap.mmap(-1, 4096)
            rng = np.random.default_rng(1)
            lat = []
            for page in rng.integers(0, size // 4096, 200):
                t0 = time.perf_counter()
                os.preadv(fd, [small], int(page) * 4096)
                lat.append(time.perf_counter() - t0)
        finally:
            os.close(fd)
    finally:
        path.unlink(missing_ok=True)
    return {"read_bandwidth": seq, "read_latency": float(np.median(lat)), "direct": direct}


def measure_memory(nbytes: int = 256 << 20) -> float:
    a = np.ones(nbytes // 8)
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


def measure_sha256(nbytes: int = 64 << 20) -> float:
    data = bytes(nbytes)
    t0 = time.perf_counter()
    hashlib.sha256(data).digest()
    return nbytes / (time.perf_counter() - t0)


def _expert():
    """A synthetic expert through the planes backend: (backend, handles per bits, flops per token)."""
    from edgemoe.backends.planes.backend import PlanesBackend
    from edgemoe.quant.record import encode_record
    from edgemoe.quant.spec import QuantSpec

    h, i = EXPERT_SHAPE
    rng = np.random.default_rng(0)
    w = {"gate_up": rng.standard_normal((2 * i, h), np.float32) * 0.02,
         "down": rng.standard_normal((h, i), np.float32) * 0.02}
    spec = QuantSpec()
    chunks, layout = encode_record(w, spec)
    pkg = SimpleNamespace(layout=layout, quant=spec)
    be = PlanesBackend()
    handles = {b: be.load(pkg, 0, 0, b, chunks[: spec.level_index(b) + 1]) for b in spec.ladder}
    return be, handles, 2 * (2 * i * h + h * i)


def _rate(fn, min_s: float = 0.25) -> float:
    """Calls per second of ``fn`` (best of a few rounds of at least ``min_s``)."""
    fn()
    best = float("inf")
    for _ in range(3):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t0
            if dt >= min_s / 3:
                break
        best = min(best, dt / n)
    return 1.0 / best


def measure_planes() -> tuple[dict, float]:
    """Effective GFLOP/s of the planes kernel per level at decode (1 token), and contention."""
    be, handles, flops = _expert()
    x = np.random.default_rng(2).standard_normal((1, EXPERT_SHAPE[0]), np.float32)
    per_bits = {b: _rate(lambda h=h: be.run(h, x)) * flops / 1e9 for b, h in handles.items()}
    top = max(handles)
    alone = _rate(lambda: be.run(handles[top], x), 0.5)
    stop = threading.Event()

    def io():
        buf = bytes(256 << 10)
        while not stop.is_set():
            hashlib.sha256(buf).digest()
            bytearray(buf)                           # the copy a read lands into
    th = threading.Thread(target=io, daemon=True)
    th.start()
    try:
        loaded = _rate(lambda: be.run(handles[top], x), 0.5)
    finally:
        stop.set()
        th.join()
    return per_bits, float(np.clip(alone / loaded - 1.0, 0.0, 3.0))


def measure_ort(hidden: int = 1024) -> float:
    """Effective GFLOP/s of onnxruntime's CPU provider (one thread) on a decode-shaped MatMul."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(3).standard_normal((hidden, 4 * hidden), np.float32) * 0.02
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, hidden])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4 * hidden])],
                          [numpy_helper.from_array(w, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = 1, 1, 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = np.ones((1, hidden), np.float32)
    return _rate(lambda: sess.run(None, {"x": x})) * 2 * hidden * 4 * hidden / 1e9


def measure_kernels() -> tuple[dict, float, float]:
    """(planes GFLOP/s per level, contention, ort GFLOP/s), measured in a fresh process with the
    BLAS thread settings the profile's workers use (one thread unless the user set otherwise), so
    that calibration and profile runs time the same kernels the same way."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    p = subprocess.run([sys.executable, "-m", "edgemoe.profiler.calibrate", "--kernels"],
                       capture_output=True, text=True, env=env)
    if p.returncode:
        raise RuntimeError(f"the kernel calibration failed:\n{p.stderr[-2000:]}")
    d = json.loads(p.stdout.strip().splitlines()[-1])
    return {int(b): v for b, v in d["planes"].items()}, d["contention"], d["ort"]


def _meminfo() -> dict:
    out = {}
    try:
        for line in open("/proc/meminfo"):
            k, v = line.split(":")
            out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def calibrate(folder=None, out_dir=None, size: int = 128 << 20, progress=None) -> tuple[Path, dict]:
    """Measure this machine and write ``host.yaml`` into ``out_dir`` (default: the user folder).

    Parameters
    ----------
    folder : where to measure storage (default: the package cache, $EDGEMOE_CACHE)
    size : bytes of the temporary file read for the storage bandwidth
    progress : optional callback(stage: str)

    Returns
    -------
    (path of host.yaml, the measurements)
    """
    from edgemoe.demo import cache_dir

    folder = Path(folder) if folder else cache_dir()
    out_dir = Path(out_dir) if out_dir else user_dir()
    if size < (4 << 20):
        raise ConfigError("the storage test needs at least 4 MiB (--size 4MiB); 128MiB is typical")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out_dir, prefix=".host-", suffix=".yaml", delete=False)
    except OSError as e:
        raise ConfigError(f"cannot write the host profile into {out_dir}: {e.strerror}; set "
                          f"$EDGEMOE_DEVICES or --out-dir to a writable folder") from e
    stage = progress or (lambda s: None)
    try:
        stage("storage")
        storage = measure_storage(folder, size)
        stage("memory")
        mem_bw, sha = measure_memory(), measure_sha256()
        stage("expert and dense kernels")
        planes, contention, ort_gflops = measure_kernels()
    except OSError as e:
        probe.close()
        Path(probe.name).unlink(missing_ok=True)
        raise ConfigError(f"calibration could not use {folder}: {e.strerror}; pass --dir to a "
                          f"writable folder on the storage that holds your packages") from e
    info = _meminfo()
    m = {"cpu": _cpu_name(), "cores": os.cpu_count() or 1, "memory_total": info.get("MemTotal", 0),
         "memory_available": info.get("MemAvailable", 0), "memory_bandwidth": mem_bw,
         "sha256": sha, "planes": planes, "ort": ort_gflops, "contention": contention, **storage}
    text = host_yaml(m, folder)
    parse_profile(yaml.safe_load(text), "calibrated host")   # never write a bad file
    with probe:
        probe.write(text.encode())
    path = out_dir / "host.yaml"
    os.replace(probe.name, path)
    return path, m


def host_yaml(m: dict, folder: Path) -> str:
    when = datetime.datetime.now().isoformat(timespec="seconds")
    top = max(m["planes"])
    gb = lambda x: f"{x / 1e9:.3f}GB/s"      # noqa: E731
    lines = [
        f"# Measured by `edgemoe calibrate` on {when}: {m['cpu']}, {m['cores']} cores.",
        "# Re-run it after changing the machine, its storage or its load.",
        f"name: {HOST}",
        f"description: this machine ({m['cpu']}), calibrated {when}",
        "calibrated: true",
        "memory:",
        f"  total: {m['memory_total'] or 4 << 30}   # /proc/meminfo MemTotal",
        f"  usable: {m['memory_available'] or 3 << 30}   # /proc/meminfo MemAvailable at calibration",
        f"  bandwidth: {gb(m['memory_bandwidth'])}   # numpy copy of 256 MiB, best of 3, read + write",
        "storage:",
        "  kind: local",
        f"  read_bandwidth: {gb(m['read_bandwidth'])}   # sequential 1 MiB "
        f"{'O_DIRECT' if m['direct'] else 'uncached'} reads of a {folder} temp file",
        f"  read_latency: {m['read_latency'] * 1e6:.1f}us   # median of 200 random 4 KiB reads",
        f"  verify_bandwidth: {gb(m['sha256'])}   # hashlib.sha256 over 64 MiB",
        "cpu:",
        f"  cores: {m['cores']}   # os.cpu_count()",
        f"  io_contention: {m['contention']:.3f}   # expert kernel slowdown with an I/O thread "
        "hashing and copying alongside",
        "compute:   # effective GFLOP/s, one inference thread (OMP_NUM_THREADS=1 unless set)",
        f"  ort: {m['ort']:.4g}   # onnxruntime CPU, MatMul [1,1024]x[1024,4096]",
        f"  planes: {m['planes'][top]:.4g}   # planes kernel, {top}-bit synthetic expert "
        f"{EXPERT_SHAPE}, 1 token",
    ]
    lines += [f"  planes_{b}: {v:.4g}   # planes kernel at {b} bits" for b, v in sorted(m["planes"].items())]
    lines += ["targets:", "  ort_providers: [CPUExecutionProvider]",
              f"  tvm_target: \"llvm -mtriple={platform.machine()}-linux-gnu\"", "  hls_part: null", ""]
    return "\n".join(lines)


if __name__ == "__main__" and sys.argv[1:] == ["--kernels"]:
    _planes, _contention = measure_planes()
    print(json.dumps({"planes": _planes, "contention": _contention, "ort": measure_ort()}))
