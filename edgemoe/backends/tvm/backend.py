"""TVM experts: the package's ahead-of-time kernels (``kernels/<device>/``) run on views of the record.

A loaded expert is its record prefix and nothing else: every plane, scale and offset is handed to
the kernels as a zero-copy DLPack view of the buffer the loader filled (one buffer or one per
chunk), so a resident expert costs ``layout.prefix_length(bits)`` bytes. Per call, a token block
runs ``gate_up`` (bit-plane GEMV/GEMM) -> ``swiglu`` -> ``down`` at the expert's level; token
counts are padded up to the next bucket the kernels were built for (1, 4, 16) and longer blocks
run in chunks of the largest.
"""
from __future__ import annotations

from edgemoe.backends.reference.backend import act_of, glu
from edgemoe.package.expert_graph import PLAIN_SWIGLU

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from edgemoe.backends.tvm import require_tvm
from edgemoe.backends.tvm.runtime_lib import (arch_mismatch, cpu_mismatch, from_dlpack, load_cpu_module,
                                              runtime_missing_reason)
from edgemoe.backends.tvm.compile import FORMAT, INDEX, KERNELS_DIR, VERSION
from edgemoe.backends.tvm.specs import chunks, kernel_name
from edgemoe.errors import KernelsMissingError
from edgemoe.quant.record import RecordLayout, slot_array

MATRICES = ("gate_up", "down")


def _build_hint(root: Path, device: str) -> str:
    return (f"build them with `edgemoe compile {root} --device {device}` (Python: "
            f"edgemoe.backends.tvm.compile.compile_package({str(root)!r}, [{device!r}]))")


def _runnable_here(index: dict) -> str | None:
    """Why kernels described by ``index`` cannot run on this machine (None if they can). CPU
    kernels are checked without importing tvm (``runtime_lib``)."""
    kind = index.get("kind")
    if kind == "llvm":
        return cpu_mismatch(index)
    why = arch_mismatch(index.get("host") or {})
    if why:
        return why
    tvm = require_tvm()
    if kind == "cuda":
        dev = tvm.cuda(0)
        if not dev.exist:
            return "they are CUDA kernels and no CUDA device is visible"
        arch = "sm_" + dev.compute_version.replace(".", "")
        if arch != index["target"].get("arch"):
            return f"they are built for {index['target'].get('arch')}, this GPU is {arch}"
        return None
    if kind == "opencl":
        if not tvm.opencl(0).exist:
            return ("they are OpenCL kernels and this TVM runtime has no OpenCL device (run them with "
                    "edgemoe.backends.tvm.opencl.OpenCLKernels, or a TVM built with OpenCL)")
        return None
    return f"unknown kernel kind {kind!r}"


def _install_cubin(folder: Path, index: dict) -> None:
    """Make TVM's load-time CUDA compile hook return the cubin built ahead of time for this source."""
    import tvm.support.nvcc  # noqa: F401  (registers TVM's own hook first: ours wraps it)
    import tvm_ffi

    files = index["files"]
    if "cubin" not in files:
        return                     # TVM compiles the embedded source at load (NVRTC / nvcc)
    source = (folder / files["source"]["file"]).read_text()
    cubin = (folder / files["cubin"]["file"]).read_bytes()
    known = hashlib.sha256(source.encode()).hexdigest()
    fallback = tvm_ffi.get_global_func("tvm_callback_cuda_compile", allow_missing=True)

    def compile_hook(code, target=None):
        if hashlib.sha256(code.encode()).hexdigest() == known:
            return bytearray(cubin)
        return fallback(code) if fallback is not None else None

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_hook, override=True)


@dataclass
class KernelSet:
    """The loaded kernels of one package on one device."""

    folder: Path
    index: dict
    funcs: dict          # kernel name -> callable
    device: object       # tvm device the tensors live on (None for CPU kernels: numpy arrays)
    on_cpu: bool         # numpy arrays go to the kernels as they are
    buckets: tuple
    planes_dtype: np.dtype
    scales_dtype: np.dtype


class TvmBackend:
    """Expert backend on Apache TVM kernels built by ``compile_package``.

    Parameters
    ----------
    device : str, optional
        Kernel folder to use (``kernels/<device>``); default ``$EDGEMOE_TVM_DEVICE``, else ``host``
        if it runs here, else the first built device that runs here.
    kernels_root : path, optional
        Folder holding ``kernels/`` (``compile_package``'s ``out``); default the package itself.
    threads : int
        TVM thread-pool size (``TVM_NUM_THREADS``) unless already set; 1 matches the runtime's
        single-threaded dense graphs.
    """

    name = "tvm"

    def __init__(self, device: str | None = None, kernels_root=None, threads: int = 1):
        self.device = device or os.environ.get("EDGEMOE_TVM_DEVICE") or None
        self.kernels_root = kernels_root
        self.unavailable_reason = runtime_missing_reason()
        os.environ.setdefault("TVM_NUM_THREADS", str(int(threads)))
        self._sets: dict = {}
        self._scratch: dict = {}      # (rows, I) -> the CPU kernels' work buffers

    def is_available(self) -> bool:
        """True if TVM's runtime can load kernels here (checked without importing it; GPU kernels
        need the full apache-tvm at ``prepare``); otherwise ``unavailable_reason`` says why."""
        return self.unavailable_reason is None

    @staticmethod
    def resident_bytes(layout: RecordLayout, bits: int) -> int:
        return layout.prefix_length(bits)

    # ---- kernels ----
    def _folder_root(self, pkg) -> Path:
        return Path(self.kernels_root) / KERNELS_DIR if self.kernels_root else Path(pkg.root) / KERNELS_DIR

    def _read_index(self, pkg, folder: Path) -> dict:
        device = folder.name
        path = folder / INDEX
        if not path.exists():
            raise KernelsMissingError(f"no TVM kernels for device {device!r} in {folder}; "
                                      f"{_build_hint(pkg.root, device)}")
        try:
            index = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            index = None
        if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("version") != VERSION:
            raise KernelsMissingError(f"{path} is not a version-{VERSION} kernel index; "
                                      f"re{_build_hint(pkg.root, device)}")
        want = {"hidden": pkg.arch.hidden_size, "intermediate": pkg.arch.intermediate_size,
                "quant": pkg.quant.to_dict()}
        got = {k: (index.get("built_for") or {}).get(k) for k in want}
        if got != want:
            raise KernelsMissingError(f"the kernels in {folder} were built for other expert shapes or "
                                      f"quantization ({got}; the package has {want}); "
                                      f"re{_build_hint(pkg.root, device)}")
        return index

    def _choose(self, pkg) -> Path:
        root = self._folder_root(pkg)
        if self.device:
            return root / self.device
        built = sorted((p for p in root.glob("*/") if (p / INDEX).exists()),
                       key=lambda p: (p.name != "host", p.name)) if root.is_dir() else []
        if not built:
            raise KernelsMissingError(f"{pkg.root} has no TVM kernels (no {KERNELS_DIR}/<device>/{INDEX}); "
                                      f"{_build_hint(pkg.root, 'host')}")
        reasons = []
        for folder in built:
            why = _runnable_here(self._read_index(pkg, folder))
            if why is None:
                return folder
            reasons.append(f"{folder.name}: {why}")
        raise KernelsMissingError(f"none of the TVM kernels in {root} run on this machine "
                                  f"({'; '.join(reasons)}); {_build_hint(pkg.root, 'host')}")

    def prepare(self, pkg, device: str | None = None) -> KernelSet:
        """Load (once) the kernels of ``pkg`` for ``device``; raises KernelsMissingError naming the
        build command if they are missing, stale, or built for another machine. CPU kernels load
        with TVM's runtime library alone (``runtime_lib``: ~20 MiB, not the compiler's ~160)."""
        if not hasattr(pkg, "root"):
            from edgemoe.package.reader import Package
            pkg = Package(pkg)
        if device is not None:
            self.device = device
        key = (str(pkg.root), self.device, str(self.kernels_root))
        if key in self._sets:
            return self._sets[key]
        folder = self._choose(pkg)
        index = self._read_index(pkg, folder)
        why = _runnable_here(index)
        if why:
            raise KernelsMissingError(f"the TVM kernels in {folder} cannot run here: {why}; "
                                      f"{_build_hint(pkg.root, 'host')}")
        lib = index["files"]["library"]
        path = folder / lib["file"]
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
        if digest != lib["sha256"]:
            raise KernelsMissingError(f"{path} is missing or does not match its sha256 in {INDEX}; "
                                      f"re{_build_hint(pkg.root, folder.name)}")
        if index["kind"] == "llvm":
            module, dev = load_cpu_module(path), None
        else:
            tvm = require_tvm()
            if index["kind"] == "cuda":
                _install_cubin(folder, index)
            module = tvm.runtime.load_module(str(path))
            dev = tvm.cuda(0) if index["kind"] == "cuda" else tvm.opencl(0)
        funcs = {k["name"]: module[k["name"]] for k in index["kernels"]}
        ks = KernelSet(folder, index, funcs, dev, index["kind"] == "llvm",
                       tuple(index["built_for"]["buckets"]),
                       np.dtype(index["call"]["planes"]), np.dtype(index["call"]["scales"]))
        self._sets[key] = ks
        return ks

    # ---- experts ----
    def _tensor(self, ks: KernelSet, arr: np.ndarray):
        if not ks.on_cpu:
            import tvm

            return tvm.runtime.tensor(np.ascontiguousarray(arr), device=ks.device)
        if not arr.flags.writeable:      # DLPack cannot export read-only memory: pay one copy
            arr = arr.copy()
        return from_dlpack(arr)

    def load(self, pkg, layer, expert, bits, buf):
        """Bind the kernels of level ``bits`` to zero-copy views of the record prefix ``buf``."""
        return self.bind(self.prepare(pkg), pkg.layout, bits, buf, act_of(getattr(pkg, "arch", None)))

    def bind(self, ks: KernelSet, layout: RecordLayout, bits: int, buf, act=PLAIN_SWIGLU) -> dict:
        """A runnable expert: ``ks``'s kernels over the views of ``buf`` (one buffer or a list of
        chunk buffers) that level ``bits`` reads. Experts with biases or gpt-oss's clamped
        activation (``act``) run the two matrix kernels and do the rest in numpy between them
        (vectors of 2I and H per row: the matrices' cost is the kernels')."""
        quant = layout.spec
        idx = quant.level_index(bits)
        args = {}
        for m in MATRICES:
            planes = [slot_array(buf, layout, layout.slot(m, "plane", quant.ladder[p])).view(ks.planes_dtype)
                      for p in range(idx + 1)]
            scale = slot_array(buf, layout, layout.slot(m, "scale", bits)).view(ks.scales_dtype)
            offset = slot_array(buf, layout, layout.slot(m, "offset", bits)).view(ks.scales_dtype)
            args[m] = [self._tensor(ks, a) for a in (*planes, scale, offset)]
        shapes = dict((m, (n, k)) for m, n, k in layout.matrices)
        by_rows = {t: (ks.funcs[kernel_name("gate_up", bits, t)], ks.funcs[f"swiglu_t{t}"],
                       ks.funcs[kernel_name("down", bits, t)]) for t in ks.buckets}
        handle = {"kernels": ks, "bits": bits, "args": args, "buf": buf, "by_rows": by_rows,
                  "hidden": shapes["down"][0], "intermediate": shapes["down"][1]}
        if layout.biases or act[0] != "silu":
            handle["numpy_glu"] = (act, *(slot_array(buf, layout, layout.bias_slot(m))
                                          if m in layout.biases else None for m in MATRICES))
        return handle

    def run(self, handle, x):
        """x [T, H] float32 -> y [T, H] float32 (rows in chunks of the token buckets, the last one
        padded)."""
        ks: KernelSet = handle["kernels"]
        bits, hid, inter = handle["bits"], handle["hidden"], handle["intermediate"]
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty((x.shape[0], hid), dtype=np.float32)
        for start, stop, t in chunks(x.shape[0], ks.buckets):
            full = stop - start == t
            xb = x[start:stop]
            if not full:
                xb = np.zeros((t, hid), dtype=np.float32)
                xb[:stop - start] = x[start:stop]
            if ks.on_cpu:
                y = out[start:stop] if full else np.empty((t, hid), dtype=np.float32)
                self._cpu_bucket(handle, t, xb, y)
            else:
                y = self._run_device(ks, handle, bits, t, xb, np.empty((t, 2 * inter), np.float32),
                                     np.empty((t, inter), np.float32), np.empty((t, hid), np.float32))
            if not (ks.on_cpu and full):
                out[start:stop] = y[:stop - start]
        return out

    def run_group(self, handles, xs, bounds, out):
        """The grouped call (``backends.base``): on CPUs, an expert whose rows fill a token bucket
        exactly (every decode row: T = 1) runs its three kernels straight from ``xs`` into ``out``,
        without ``run``'s chunking and copies; other row counts go through ``run``."""
        xs = np.ascontiguousarray(xs, dtype=np.float32)
        b = bounds.tolist()
        for i, h in enumerate(handles):
            lo, hi = b[i], b[i + 1]
            if h["kernels"].on_cpu and hi - lo in h["by_rows"]:
                self._cpu_bucket(h, hi - lo, xs[lo:hi], out[lo:hi])
            else:
                out[lo:hi] = self.run(h, xs[lo:hi])

    def _cpu_bucket(self, handle, t: int, xb: np.ndarray, y: np.ndarray):
        """One expert on ``t`` rows (a bucket): gate_up, SwiGLU and down kernels, ``xb`` [t, H] ->
        ``y`` [t, H], over the kept work buffers."""
        gate_up, swiglu, down = handle["by_rows"][t]
        gu, mid = self._work(t, handle["intermediate"])
        gate_up(xb, *handle["args"]["gate_up"], gu)
        if "numpy_glu" not in handle:
            swiglu(gu, mid)
            down(mid, *handle["args"]["down"], y)
            return
        act, gu_bias, down_bias = handle["numpy_glu"]
        if gu_bias is not None:
            gu += gu_bias
        mid[...] = glu(gu, *act)
        down(mid, *handle["args"]["down"], y)
        if down_bias is not None:
            y += down_bias

    def _work(self, t: int, inter: int):
        """Work buffers [t, 2I] and [t, I] of the CPU kernels, made once per shape."""
        key = (t, inter)
        bufs = self._scratch.get(key)
        if bufs is None:
            bufs = self._scratch[key] = (np.empty((t, 2 * inter), np.float32),
                                         np.empty((t, inter), np.float32))
        return bufs

    def _run_device(self, ks, handle, bits, t, xb, gu, h, y):
        import tvm

        d = [tvm.runtime.tensor(a, device=ks.device) for a in (xb, gu, h, y)]
        ks.funcs[kernel_name("gate_up", bits, t)](d[0], *handle["args"]["gate_up"], d[1])
        if "numpy_glu" not in handle:
            ks.funcs[f"swiglu_t{t}"](d[1], d[2])
            ks.funcs[kernel_name("down", bits, t)](d[2], *handle["args"]["down"], d[3])
            return d[3].numpy()
        act, gu_bias, down_bias = handle["numpy_glu"]     # through the host between the matrices
        g = d[1].numpy()
        mid = glu(g if gu_bias is None else g + gu_bias, *act).astype(np.float32)
        d[2] = tvm.runtime.tensor(np.ascontiguousarray(mid), device=ks.device)
        ks.funcs[kernel_name("down", bits, t)](d[2], *handle["args"]["down"], d[3])
        out = d[3].numpy()
        return out if down_bias is None else out + down_bias


def jit_kernels(hidden: int, intermediate: int, quant, buckets=None, int8: bool | None = None,
                target: dict | None = None) -> KernelSet:
    """Compile the host (llvm) kernels in memory, without a package: for tests and benchmarks.
    The runtime uses the ones ``compile_package`` stores in the package. ``int8``: matmul
    kernels with int8 activations (default: where this CPU has a byte dot product, as ``compile``;
    False: float32 everywhere). ``target``: an llvm target this CPU can run instead of its own
    (e.g. ``{"mcpu": "haswell"}`` on an AVX-512 machine, to get and run the AVX2 kernels)."""
    tvm = require_tvm()
    from edgemoe.backends.tvm.schedules import schedule_cpu
    from edgemoe.backends.tvm.specs import BUCKETS, int8_matmuls, kernel_specs
    from edgemoe.backends.tvm.int8dot import int8_isa
    from edgemoe.backends.tvm.targets import host_target

    buckets = tuple(buckets or BUCKETS)
    specs = kernel_specs(hidden, intermediate, quant, buckets)
    target = {**host_target(), **(target or {})}
    isa = int8_isa(target)
    if isa and int8 is not False:
        specs = int8_matmuls(specs, quant, isa)
    ex = tvm.compile(tvm.IRModule({ks.name: schedule_cpu(ks, quant) for ks in specs}),
                     target=tvm.target.Target(target))
    funcs = {ks.name: ex[ks.name] for ks in specs}
    index = {"kind": "llvm", "target": target, "isa": isa,
             "kernels": [{"name": ks.name, "activations": ks.activations, "isa": ks.isa} for ks in specs]}
    return KernelSet(Path("."), index, funcs, tvm.cpu(0), True, buckets,
                     np.dtype("uint8"), np.dtype(quant.scale_dtype))
