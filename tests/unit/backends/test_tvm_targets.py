"""TVM kernels for the board targets: CUDA for Jetson (cubin via nvcc), aarch64 CPUs (cross
compiled; run under qemu where set up), OpenCL for Mali (run on PoCL, compared with the reference).
Each test skips with the reason where its tool is absent."""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgemoe.backends.tvm import tvm_missing_reason
from edgemoe.quant.record import decode_record, encode_record
from edgemoe.quant.spec import QuantSpec

pytestmark = pytest.mark.skipif(tvm_missing_reason() is not None,
                                reason=f"apache-tvm is not installed: {tvm_missing_reason()}")
SPEC = QuantSpec()
HIDDEN, INTER = 64, 96          # down has K = 96: a padded last group
AARCH64_CC = "aarch64-linux-gnu-gcc"
EM_AARCH64, EM_CUDA = 183, 190


@pytest.fixture(scope="module")
def record():
    rng = np.random.default_rng(0)
    w = {"gate_up": (rng.standard_normal((2 * INTER, HIDDEN)) * 0.05).astype(np.float32),
         "down": (rng.standard_normal((HIDDEN, INTER)) * 0.05).astype(np.float32)}
    chunks, layout = encode_record(w, SPEC)
    return layout, np.frombuffer(b"".join(chunks), dtype=np.uint8).copy()


def _build(name, target, folder, buckets=(1, 4, 16)):
    from edgemoe.backends.tvm.compile import build_device
    from edgemoe.backends.tvm.specs import kernel_specs
    from edgemoe.backends.tvm.targets import resolve

    dt = resolve({name: target})[name]
    return build_device(dt, SPEC, kernel_specs(HIDDEN, INTER, SPEC, buckets), folder)


def _elf_machine(path: Path) -> int:
    data = path.read_bytes()[:64]
    assert data[:4] == b"\x7fELF", f"{path} is not an ELF file"
    return struct.unpack_from("<H", data, 18)[0]


def _nvcc_codes() -> list[str]:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return []
    return subprocess.run([nvcc, "--list-gpu-code"], capture_output=True, text=True).stdout.split()


def test_device_targets_resolve_presets_dicts_and_json():
    from edgemoe.backends.tvm.targets import host_target, resolve
    from edgemoe.errors import ConfigError

    got = resolve({"host": "host", "orin": "jetson-orin",
                   "pi5": '{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76"}',
                   "gpu": {"kind": "cuda", "arch": "sm_87"}})
    assert got["host"].target == host_target() and got["host"].cc is None
    assert got["orin"].target == {"kind": "cuda", "arch": "sm_87"} and got["orin"].arch == "aarch64"
    assert got["pi5"].arch == "aarch64" and got["pi5"].cc == AARCH64_CC
    assert got["gpu"].host == host_target()              # host code for this machine by default
    with pytest.raises(ConfigError, match="presets: host, aarch64"):
        resolve(["tpu"])
    with pytest.raises(ConfigError, match="not supported"):
        resolve({"v": {"kind": "vulkan"}})


# ---------------------------------------------------------------- CUDA (Jetson)

@pytest.mark.skipif("sm_87" not in _nvcc_codes(), reason="nvcc with sm_87 (Jetson Orin) support is not installed")
def test_cuda_orin_kernels_compile_to_an_sm87_cubin(tmp_path):
    index = _build("orin", {"kind": "cuda", "arch": "sm_87"}, tmp_path)
    cubin = tmp_path / index["files"]["cubin"]["file"]
    assert _elf_machine(cubin) == EM_CUDA
    flags = struct.unpack_from("<I", cubin.read_bytes(), 48)[0]
    assert (flags >> 8) & 0xFF == 87 or flags & 0xFF == 87, hex(flags)
    data = cubin.read_bytes()
    for k in index["kernels"]:
        assert f"{k['name']}_kernel".encode() in data, k["name"]
        assert k["launches"] and all(len(d["grid"]) == 3 and len(d["block"]) == 3 for d in k["launches"])
    assert index["call"] == {"planes": "uint32", "scales": "float16"}


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_cuda_xavier_source_is_generated_and_compiles(tmp_path):
    """Xavier is sm_72, which CUDA 13's nvcc no longer targets: the index says so and how to build
    the cubin on the device; the source itself compiles for the nearest arch nvcc has."""
    codes = _nvcc_codes()
    index = _build("xavier", {"kind": "cuda", "arch": "sm_72"}, tmp_path, buckets=(1,))
    source = tmp_path / index["files"]["source"]["file"]
    assert "__global__" in source.read_text()
    if "sm_72" in codes:
        assert "cubin" in index["files"]
        return
    assert "cubin" not in index["files"] and "sm_72" in index["notes"][0]
    nearest = next((c for c in ("sm_75", "sm_80") if c in codes), None)
    if nearest is None:
        pytest.skip(f"nvcc offers none of sm_72/75/80 ({codes})")
    out = subprocess.run(["nvcc", "--cubin", f"-arch={nearest}", "-o", str(tmp_path / "x.cubin"), str(source)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


# ---------------------------------------------------------------- aarch64 CPUs

@pytest.mark.skipif(shutil.which(AARCH64_CC) is None, reason=f"{AARCH64_CC} is not installed "
                    f"(apt-get install gcc-aarch64-linux-gnu)")
def test_aarch64_library_is_cross_compiled_with_neon(tmp_path):
    index = _build("aarch64", "aarch64", tmp_path)
    lib = tmp_path / index["files"]["library"]["file"]
    assert _elf_machine(lib) == EM_AARCH64
    objdump = shutil.which("aarch64-linux-gnu-objdump")
    if objdump:
        asm = subprocess.run([objdump, "-d", str(lib)], capture_output=True, text=True).stdout
        assert "fmla\tv" in asm, "no NEON fused multiply-add in the kernels"


QEMU_ENV = "EDGEMOE_AARCH64_PYTHON"
_QEMU_SCRIPT = """
import json, sys, numpy as np, tvm
lib = tvm.runtime.load_module(sys.argv[1])
spec = json.load(open(sys.argv[2]))
out = {}
for name, args in spec.items():
    arrays = [np.load(a) for a in args]
    lib[name](*arrays)
    np.save(args[-1], arrays[-1])
print("ok")
"""


def _qemu_python() -> list[str]:
    cmd = os.environ.get(QEMU_ENV)
    if not cmd:
        pytest.skip(f"${QEMU_ENV} is not set (a qemu-user command running an aarch64 Python with tvm)")
    if shutil.which(AARCH64_CC) is None:
        pytest.skip(f"{AARCH64_CC} is not installed")
    return cmd.split()


def _run_under_qemu(cmd: list[str], index: dict, layout, buf, folder: Path) -> dict[str, float]:
    """Run every matmul kernel of ``index`` (built into ``folder``) under qemu on random inputs;
    max relative error of each against its reference (float64 product, or the int8-activation
    reference for int8 kernels)."""
    from edgemoe.quant.matmul import matmul_from_planes_int8
    from edgemoe.quant.record import slot_array

    calls, refs = {}, {}
    rng = np.random.default_rng(3)
    for k in index["kernels"]:
        if k["op"] != "matmul":
            continue
        m, bits = k["matrix"], k["bits"]
        planes = [slot_array(buf, layout, layout.slot(m, "plane", SPEC.ladder[p]))
                  for p in range(SPEC.level_index(bits) + 1)]
        a = slot_array(buf, layout, layout.slot(m, "scale", bits))
        b = slot_array(buf, layout, layout.slot(m, "offset", bits))
        x = rng.standard_normal(k["args"][0][1]).astype(np.float32)
        y = np.zeros(k["args"][-1][1], dtype=np.float32)
        files = []
        for i, arr in enumerate([x, *planes, a, b, y]):
            files.append(str(folder / f"{k['name']}_{i}.npy"))
            np.save(files[-1], arr)
        calls[k["name"]] = files
        refs[k["name"]] = (matmul_from_planes_int8(x, planes, a, b, bits, SPEC, x.shape[1]).astype(np.float64)
                           if k["activations"] == "int8" else
                           x.astype(np.float64) @ decode_record(buf, layout, bits)[m].astype(np.float64).T)
    (folder / "calls.json").write_text(json.dumps(calls))
    (folder / "run.py").write_text(_QEMU_SCRIPT)
    run = subprocess.run(cmd + [str(folder / "run.py"), str(folder / index["files"]["library"]["file"]),
                                str(folder / "calls.json")], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-3000:]
    return {name: float(np.abs(np.load(files[-1]) - refs[name]).max() / np.abs(refs[name]).max())
            for name, files in calls.items()}


@pytest.mark.hardware
def test_aarch64_library_runs_under_qemu(tmp_path, record):
    """Runs the cross-compiled kernels on an emulated aarch64 CPU. Needs ``$EDGEMOE_AARCH64_PYTHON``:
    a command running an aarch64 Python with numpy and the aarch64 apache-tvm wheels under
    qemu-user; ``.ci/aarch64-python`` sets one up (Debian, root) and prints it."""
    cmd = _qemu_python()
    layout, buf = record
    index = _build("aarch64", "aarch64", tmp_path, buckets=(1, 16))      # GEMV and GEMM
    assert all(k.get("activations") != "int8" for k in index["kernels"])    # these shapes: float32
    errs = _run_under_qemu(cmd, index, layout, buf, tmp_path)
    print(f"aarch64 under qemu: {len(errs)} kernels, max rel err {max(errs.values()):.2e}", file=sys.stderr)
    assert max(errs.values()) < 1e-4, errs


@pytest.mark.hardware
@pytest.mark.parametrize("target", ["a72", "pi5"])
def test_aarch64_int8_kernels_run_under_qemu(tmp_path, int8_record, target):
    """The int8-activation kernels of a Cortex-A72 (NEON smull/addp/sadalp) and of a Cortex-A76
    (sdot), run on an emulated CPU against the int8 reference (``matmul_from_planes_int8``)."""
    from edgemoe.backends.tvm.compile import build_device
    from edgemoe.backends.tvm.specs import kernel_specs
    from edgemoe.backends.tvm.targets import resolve

    cmd = _qemu_python()
    layout, buf = int8_record
    dt = resolve({target: A72 if target == "a72" else PI5})[target]
    index = build_device(dt, SPEC, kernel_specs(256, 256, SPEC, (1, 16)), tmp_path)
    mats = [k for k in index["kernels"] if k["op"] == "matmul"]
    assert mats and all(k["activations"] == "int8" for k in mats)
    errs = _run_under_qemu(cmd, index, layout, buf, tmp_path)
    print(f"{target} int8 under qemu: {len(errs)} kernels, max rel err {max(errs.values()):.2e}",
          file=sys.stderr)
    assert max(errs.values()) < 1e-4, errs


PI5 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76"}   # dotprod
A72 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}   # NEON, no dotprod


@pytest.fixture(scope="module")
def int8_record():
    """A record whose shapes suit the int8 kernels (plane rows of whole 64-byte blocks)."""
    rng = np.random.default_rng(1)
    w = {"gate_up": (rng.standard_normal((512, 256)) * 0.05).astype(np.float32),
         "down": (rng.standard_normal((256, 256)) * 0.05).astype(np.float32)}
    chunks, layout = encode_record(w, SPEC)
    return layout, np.frombuffer(b"".join(chunks), dtype=np.uint8).copy()


@pytest.mark.skipif(shutil.which(AARCH64_CC) is None, reason=f"{AARCH64_CC} is not installed")
def test_aarch64_dotprod_kernels_use_sdot(tmp_path):
    """A Cortex-A76 (Raspberry Pi 5) target gets int8-activation kernels on ``sdot``."""
    from edgemoe.backends.tvm.compile import build_device
    from edgemoe.backends.tvm.specs import kernel_specs
    from edgemoe.backends.tvm.targets import resolve

    dt = resolve({"pi5": PI5})["pi5"]
    index = build_device(dt, SPEC, kernel_specs(256, 256, SPEC, (1,)), tmp_path)
    mats = [k for k in index["kernels"] if k["op"] == "matmul"]
    assert mats and all(k["activations"] == "int8" and k["isa"] == "dotprod" for k in mats)
    objdump = shutil.which("aarch64-linux-gnu-objdump")
    if objdump:
        asm = subprocess.run([objdump, "-d", str(tmp_path / index["files"]["library"]["file"])],
                             capture_output=True, text=True).stdout
        assert "sdot\tv" in asm, "no sdot in the int8 kernels"


@pytest.mark.hardware
def test_aarch64_dotprod_kernels_run_under_qemu(tmp_path, int8_record):
    """The Cortex-A76 int8 kernels (GEMV and GEMM) on an emulated CPU with dotprod match the int8
    reference; needs ``$EDGEMOE_AARCH64_PYTHON`` as above (qemu's ``-cpu max`` has dotprod)."""
    from edgemoe.backends.tvm.compile import build_device
    from edgemoe.backends.tvm.specs import kernel_specs
    from edgemoe.backends.tvm.targets import resolve

    cmd = _qemu_python()
    layout, buf = int8_record
    index = build_device(resolve({"pi5": PI5})["pi5"], SPEC, kernel_specs(256, 256, SPEC, (1, 16)), tmp_path)
    errs = _run_under_qemu(cmd, index, layout, buf, tmp_path)
    print(f"aarch64 dotprod under qemu: {len(errs)} kernels, max rel err {max(errs.values()):.2e}",
          file=sys.stderr)
    assert max(errs.values()) < 1e-4, errs


# ---------------------------------------------------------------- OpenCL (Mali) on PoCL

def _opencl_device():
    """(device, None) for the first OpenCL device that builds a kernel, else (None, why)."""
    if os.path.isdir("/etc/OpenCL/vendors"):   # Debian's pocl-opencl-icd: the pip PoCL lacks new CPUs
        os.environ.setdefault("OCL_ICD_VENDORS", "/etc/OpenCL/vendors")
    try:
        import pyopencl as cl
    except ImportError:
        return None, "pyopencl is not installed (pip install pyopencl; apt-get install pocl-opencl-icd)"
    errors = []
    try:
        platforms = cl.get_platforms()
    except cl.Error as e:
        return None, f"no OpenCL platform ({e})"
    for p in platforms:
        for d in p.get_devices():
            try:
                ctx = cl.Context([d])
                cl.Program(ctx, "__kernel void f(__global float* a) { a[0] = 1.0f; }").build()
                return d, None
            except cl.Error as e:
                errors.append(f"{d.name}: {str(e).splitlines()[0]}")
    return None, f"no OpenCL device builds a kernel ({'; '.join(errors) or 'none found'})"


def test_opencl_kernels_run_on_pocl_and_match_reference(tmp_path, record):
    device, why = _opencl_device()
    if device is None:
        pytest.skip(why)
    from edgemoe.quant.record import slot_array
    from edgemoe.backends.tvm.opencl import OpenCLKernels

    layout, buf = record
    index = _build("mali", {"kind": "opencl", "device": "mali"}, tmp_path)
    assert index["call"] == {"planes": "uint32", "scales": "uint16"}   # no cl_khr_fp16 needed
    source = (tmp_path / index["files"]["source"]["file"]).read_text()
    cl = OpenCLKernels(source, {k["name"]: k["launches"] for k in index["kernels"]}, device)
    rng = np.random.default_rng(4)
    worst = 0.0
    for k in index["kernels"]:
        if k["op"] == "swiglu":
            gu = rng.standard_normal(k["args"][0][1]).astype(np.float32)
            h = cl(k["name"], {"gu": gu, "h": np.zeros(k["args"][1][1], np.float32)}, "h")
            i = k["args"][1][1][1]
            g, u = gu[:, :i].astype(np.float64), gu[:, i:].astype(np.float64)
            assert np.abs(h - g / (1 + np.exp(-g)) * u).max() < 1e-5
            continue
        m, bits = k["matrix"], k["bits"]
        arrays = {"x": rng.standard_normal(k["args"][0][1]).astype(np.float32)}
        for p in range(SPEC.level_index(bits) + 1):
            arrays[f"plane{p + 1}"] = slot_array(buf, layout, layout.slot(m, "plane", SPEC.ladder[p])).view(np.uint32)
        arrays["scale"] = slot_array(buf, layout, layout.slot(m, "scale", bits)).view(np.uint16)
        arrays["offset"] = slot_array(buf, layout, layout.slot(m, "offset", bits)).view(np.uint16)
        arrays["y"] = np.zeros(k["args"][-1][1], dtype=np.float32)
        y = cl(k["name"], arrays, "y")
        ref = arrays["x"].astype(np.float64) @ decode_record(buf, layout, bits)[m].astype(np.float64).T
        err = np.abs(y - ref).max() / np.abs(ref).max()
        worst = max(worst, err)
        assert err < 1e-4, (k["name"], err)
    print(f"OpenCL on {device.name}: max rel err {worst:.2e} over {len(index['kernels'])} kernels",
          file=sys.stderr)


@pytest.mark.skipif(shutil.which(AARCH64_CC) is None, reason=f"{AARCH64_CC} is not installed")
def test_aarch64_kernels_without_dotprod_use_smull_and_sadalp(tmp_path):
    """A Cortex-A72 (Raspberry Pi 4) has no dotprod: its int8-activation kernels multiply bytes with
    ``smull`` and accumulate with ``sadalp`` (never ``sdot``), instead of falling back to float32."""
    from edgemoe.backends.tvm.compile import build_device
    from edgemoe.backends.tvm.specs import kernel_specs
    from edgemoe.backends.tvm.targets import resolve

    dt = resolve({"a72": A72})["a72"]
    index = build_device(dt, SPEC, kernel_specs(256, 256, SPEC, (1,)), tmp_path)
    mats = [k for k in index["kernels"] if k["op"] == "matmul"]
    assert mats and all(k["activations"] == "int8" and k["isa"] == "neon" for k in mats)
    objdump = shutil.which("aarch64-linux-gnu-objdump")
    if objdump is None:
        pytest.skip("aarch64-linux-gnu-objdump is not installed (binutils-aarch64-linux-gnu)")
    asm = subprocess.run([objdump, "-d", str(tmp_path / index["files"]["library"]["file"])],
                         capture_output=True, text=True).stdout
    assert "smull\tv" in asm and "sadalp\tv" in asm, "no smull / sadalp in the int8 kernels"
    assert "sdot\t" not in asm


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump is not installed (binutils)")
def test_x86_avx2_kernels_use_vpmaddubsw(tmp_path):
    """An AVX2 CPU without VNNI (Zen 3, Haswell..Skylake client) gets int8-activation kernels on
    ``vpmaddubsw`` + ``vpmaddwd``, not float32 ones and not ``vpdpbusd`` (which it lacks)."""
    from edgemoe.backends.tvm.compile import build_device
    from edgemoe.backends.tvm.specs import kernel_specs
    from edgemoe.backends.tvm.targets import resolve

    dt = resolve({"zen3": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver3"}})["zen3"]
    index = build_device(dt, SPEC, kernel_specs(256, 256, SPEC, (1,)), tmp_path)
    mats = [k for k in index["kernels"] if k["op"] == "matmul"]
    assert mats and all(k["activations"] == "int8" and k["isa"] == "avx2" for k in mats)
    asm = subprocess.run(["objdump", "-d", str(tmp_path / index["files"]["library"]["file"])],
                         capture_output=True, text=True).stdout
    assert "vpmaddubsw" in asm and "vpmaddwd" in asm, "no vpmaddubsw / vpmaddwd in the int8 kernels"
    assert "vpdpbusd" not in asm and "zmm" not in asm
