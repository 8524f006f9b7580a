"""Ahead-of-time kernels for a package: ``compile_package(PKG, ["host", "jetson-orin"])``.

For each device it writes ``PKG/kernels/<device>/``::

    index.yaml      what was built: target, shapes the kernels fit, every kernel's arguments and
                    (GPU) launch extents, and every file with its sha256
    experts.so      the loadable library (CPU kernels, or GPU host code with the device source)
    experts.cu      CUDA source, and experts.cubin compiled from it by nvcc (CUDA devices)
    experts.cl      OpenCL source (OpenCL devices)

The manifest is not touched: kernels are a cache beside the package, rebuilt at will.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from edgemoe.backends.tvm import require_tvm
from edgemoe.backends.tvm.specs import BUCKETS, kernel_specs
from edgemoe.backends.tvm.targets import DeviceTarget, linker_missing, resolve
from edgemoe.errors import ConfigError

KERNELS_DIR = "kernels"
INDEX = "index.yaml"
FORMAT = "edgemoe-kernels"
VERSION = 1
LIBRARY = "experts.so"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _file_entry(folder: Path, name: str) -> dict:
    p = folder / name
    return {"file": name, "sha256": _sha256(p), "bytes": p.stat().st_size}


def _fcompile(dt: DeviceTarget):
    if dt.cc is None:
        return None
    from tvm.support import cc

    return cc.cross_compiler(dt.cc)


def _nvcc_cubin(source: Path, arch: str, out: Path) -> str | None:
    """Compile ``source`` to a cubin for ``arch`` (sm_87...); returns why not, or None."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return "nvcc is not installed here; on the device TVM compiles the embedded source at load"
    listed = subprocess.run([nvcc, "--list-gpu-code"], capture_output=True, text=True).stdout.split()
    if listed and arch not in listed:
        version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
        release = re.search(r"release ([\d.]+)", version)
        return (f"nvcc {release.group(1) if release else ''} here cannot target {arch} (it lists "
                f"{' '.join(listed)}); compile experts.cu on the device: "
                f"nvcc --cubin -O3 -arch={arch} experts.cu -o experts.cubin")
    run = subprocess.run([nvcc, "--cubin", "-O3", f"-arch={arch}", "-o", str(out), str(source)],
                         capture_output=True, text=True)
    if run.returncode:
        raise ConfigError(f"nvcc failed on the generated CUDA source for {arch}:\n{run.stderr[-2000:]}")
    return None


ACTIVATIONS = ("auto", "int8", "float32")


def build_device(dt: DeviceTarget, quant, specs, folder: Path, progress=None,
                 activations: str = "auto") -> dict:
    """Build every kernel of ``specs`` for ``dt`` into ``folder``; returns the index (a dict).
    ``activations``: see ``compile_package``."""
    tvm = require_tvm()
    from edgemoe.backends.tvm.schedules import launch_dims, schedule_cpu, schedule_gpu

    from edgemoe.backends.tvm.int8dot import int8_isa
    from edgemoe.backends.tvm.specs import int8_matmuls

    tick = progress or (lambda *_: None)
    target = dt.tvm_target()
    gpu = dt.kind != "llvm"
    if activations not in ACTIVATIONS:
        raise ConfigError(f"activations must be one of {', '.join(ACTIVATIONS)}, not {activations!r}")
    isa = None if gpu else int8_isa(dt.cpu_target)
    if activations == "int8" and isa is None:
        raise ConfigError(f"device {dt.name!r} has no integer SIMD the int8 kernels use (x86 AVX2 or "
                          f"AVX-512 VNNI, aarch64 NEON); compile it with --activations auto "
                          f"or float32 (activations= in Python)")
    if isa and activations != "float32":
        specs = int8_matmuls(specs, quant, isa)     # int8 activations (vpdpbusd / sdot)
    half_bits = dt.kind == "opencl" and quant.scale_dtype == "float16"
    funcs, entries = {}, []
    for i, ks in enumerate(specs):
        tick(f"{dt.name}: scheduling", i, len(specs))
        funcs[ks.name] = schedule_gpu(ks, quant, target, half_bits) if gpu else schedule_cpu(ks, quant)
        entry = {"name": ks.name, "op": ks.op, "tokens": ks.tokens,
                 "args": [[n, list(s), d] for n, s, d in ks.args(quant, gpu, half_bits)]}
        if ks.op == "matmul":
            entry.update({"matrix": ks.matrix, "bits": ks.bits, "activations": ks.activations})
            if ks.isa:
                entry["isa"] = ks.isa
        if gpu:
            entry["launches"] = launch_dims(funcs[ks.name])
        entries.append(entry)
    tick(f"{dt.name}: compiling", len(specs), len(specs))
    ex = tvm.compile(tvm.IRModule(funcs), target=target)
    ex.export_library(str(folder / LIBRARY), fcompile=_fcompile(dt))
    files = {"library": _file_entry(folder, LIBRARY)}
    notes = []
    if gpu:
        source = ex.mod.imports[0].inspect_source()
        name = "experts.cu" if dt.kind == "cuda" else "experts.cl"
        (folder / name).write_text(source)
        files["source"] = _file_entry(folder, name)
        if dt.kind == "cuda":
            why = _nvcc_cubin(folder / name, dt.target["arch"], folder / "experts.cubin")
            if why is None:
                files["cubin"] = _file_entry(folder, "experts.cubin")
            else:
                notes.append(why)
    from tvm.target import codegen

    from edgemoe.backends.tvm.runtime_lib import cpu_flags

    return {"format": FORMAT, "version": VERSION, "device": dt.name, "kind": dt.kind,
            "target": dt.target, "host": dt.host, "tvm_version": tvm.__version__,
            # the building CPU: kernels built for it are checked against it by feature flags
            "built_on": {"cpu": str(codegen.llvm_get_system_cpu()), "flags": cpu_flags()},
            "call": {"planes": "uint32" if gpu else "uint8",
                     "scales": "uint16" if half_bits else quant.scale_dtype},
            "files": files, "notes": notes, "kernels": entries}


def compile_package(pkg_path, device_targets, out=None, progress=None,
                    activations: str = "auto") -> dict[str, Path]:
    """Build the TVM expert kernels of a package for one or more devices, ahead of time.

    Parameters
    ----------
    pkg_path : str or Path
        An ``.edgemoe`` package (read, validated; its manifest is not modified).
    device_targets : str, list of str, or mapping of str to (str or dict)
        Device names: presets ``host`` (this machine, its exact CPU), ``aarch64``,
        ``jetson-orin`` (CUDA sm_87), ``jetson-xavier`` (CUDA sm_72), ``mali`` (OpenCL); or a
        mapping ``{name: preset or TVM target dict}``; a dict may add ``host`` (the host llvm
        target of a GPU device) and ``cc`` (the C compiler that links the library).
    out : str or Path, optional
        Root folder to write into instead of the package (``<out>/kernels/<device>/``), e.g. when
        the package is read-only; the backend's ``kernels_dir`` then points there.
    progress : callable, optional
        ``(stage, done, total)`` callback, as ``export``'s.
    activations : {"auto", "int8", "float32"}
        Precision of ``x`` in the matmul kernels on CPUs. ``auto``: int8 wherever the CPU has
        integer SIMD (``int8dot``: x86 AVX-512 VNNI, else AVX2; aarch64 dotprod, else NEON), x
        quantized per group in the kernel as onnxruntime's fast path does (1.4-2.3% relative
        error per expert; 1.1-3.4x faster than float32, see the README's kernel table), float32
        only on CPUs with none of them; ``float32``: the reference's precision everywhere (1e-6).

    Returns
    -------
    dict of str to Path
        The ``kernels/<device>`` folder written for each device.
    """
    require_tvm()
    from edgemoe.package.reader import Package

    pkg = Package(pkg_path)
    specs = kernel_specs(pkg.arch.hidden_size, pkg.arch.intermediate_size, pkg.quant)
    root = Path(out) if out is not None else pkg.root
    built = {}
    for name, dt in resolve(device_targets).items():
        why = linker_missing(dt)
        if why:
            raise ConfigError(f"cannot build kernels for device {name!r}: {why}")
        final = root / KERNELS_DIR / name
        tmp = final.with_name(name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        index = build_device(dt, pkg.quant, specs, tmp, progress, activations)
        index["built_for"] = {"hidden": pkg.arch.hidden_size, "intermediate": pkg.arch.intermediate_size,
                              "quant": pkg.quant.to_dict(), "buckets": list(BUCKETS)}
        (tmp / INDEX).write_text(yaml.safe_dump(index, sort_keys=False, default_flow_style=None))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        built[name] = final
    return built
