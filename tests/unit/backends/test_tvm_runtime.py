"""TVM backend end to end: ``compile_package`` into the built-in demo package, the runtime on
``backend="tvm"`` (same greedy tokens as ``planes``), and the typed errors for missing, stale or
foreign kernels."""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from edgemoe.backends.tvm import tvm_missing_reason
from edgemoe.errors import ConfigError, KernelsMissingError

needs_tvm = pytest.mark.skipif(tvm_missing_reason() is not None,
                               reason=f"apache-tvm is not installed: {tvm_missing_reason()}")
PROMPT = "In the beginning"
EXACT = "host-f32"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The built-in checkpoint exported with float32 dense graphs, host kernels compiled into it.
    (The demo's own package has int8 dense graphs, whose int8 activations turn the backends'
    1e-6 differences into rounding flips downstream: a comparison of expert kernels needs the
    dense part continuous.)"""
    from edgemoe.backends.tvm.compile import compile_package
    from edgemoe.demo import builtin_checkpoint
    from edgemoe.exporters.export import export
    from edgemoe.quant.dense import FLOAT32

    pkg = export(builtin_checkpoint(), tmp_path_factory.mktemp("demo") / "tiny-moe.edgemoe",
                 dense=FLOAT32)
    stages = []
    built = compile_package(pkg, ["host"], progress=lambda s, d, t: stages.append(s))
    # the same host kernels with float32 activations everywhere: exact against the numpy backends
    compile_package(pkg, {EXACT: "host"}, activations="float32")
    return {"pkg": pkg, "folder": built["host"], "stages": stages}


def _greedy(pkg, level: int, backends) -> dict:
    """16 greedy tokens after PROMPT per backend."""
    from edgemoe.runtime.engine import Runtime

    ids = {}
    for backend in backends:
        rt = Runtime(pkg, level=level, backend=backend)
        try:
            ids[backend] = list(rt.generate(PROMPT, max_new_tokens=16).ids)
        finally:
            rt.close()
    return ids


@pytest.fixture
def exact_kernels(monkeypatch):
    monkeypatch.setenv("EDGEMOE_TVM_DEVICE", EXACT)


@needs_tvm
def test_index_lists_files_targets_and_shapes(demo):
    from edgemoe.backends.tvm.compile import _sha256
    from edgemoe.backends.tvm.targets import host_target
    from edgemoe.package.reader import Package

    pkg = Package(demo["pkg"])
    index = yaml.safe_load((demo["folder"] / "index.yaml").read_text())
    assert index["format"] == "edgemoe-kernels" and index["device"] == "host"
    assert index["target"] == host_target()            # explicit mtriple and mcpu
    lib = index["files"]["library"]
    assert _sha256(demo["folder"] / lib["file"]) == lib["sha256"]
    assert index["built_for"]["quant"] == pkg.quant.to_dict()
    names = {k["name"] for k in index["kernels"]}
    for t in index["built_for"]["buckets"]:
        assert f"swiglu_t{t}" in names
        for bits in pkg.quant.ladder:
            assert {f"gate_up_k{bits}_t{t}", f"down_k{bits}_t{t}"} <= names
    gu = next(k for k in index["kernels"] if k["name"] == "gate_up_k8_t1")
    h, i = pkg.arch.hidden_size, pkg.arch.intermediate_size
    assert gu["args"][0] == ["x", [1, h], "float32"] and gu["args"][-1] == ["y", [1, 2 * i], "float32"]
    assert demo["stages"], "progress was never called"
    manifest = (demo["pkg"] / "manifest.yaml").read_text()
    assert "kernels/" not in manifest                   # the manifest is not touched


@needs_tvm
@pytest.mark.parametrize("level", [2, 4, 8])
def test_runtime_greedy_tokens_match_planes_and_ort(demo, exact_kernels, level):
    ids = _greedy(demo["pkg"], level, ("planes", "ort", "tvm"))
    assert ids["tvm"] == ids["planes"]
    assert ids["tvm"] == ids["ort"]     # onnxruntime's MatMulNBits graphs of the package


@needs_tvm
def test_runtime_under_a_budget_streams_chunks(demo):
    """The budgeted runtime hands the backend a list of chunk buffers; tokens still match."""
    from edgemoe.runtime.engine import Runtime

    ids = {}
    for backend in ("planes", "tvm"):
        rt = Runtime(demo["pkg"], level=4, backend=backend, budget="50%")
        try:
            ids[backend] = list(rt.generate(PROMPT, max_new_tokens=8).ids)
        finally:
            rt.close()
    assert ids["tvm"] == ids["planes"]


@needs_tvm
def test_prepare_and_resident_bytes(demo):
    from edgemoe.backends import get_backend
    from edgemoe.package.reader import Package

    pkg = Package(demo["pkg"])
    be = get_backend("tvm")
    ks = be.prepare(pkg, "host")
    assert ks.folder == demo["folder"] and ks.on_cpu
    for bits in pkg.quant.ladder:
        assert be.resident_bytes(pkg.layout, bits) == pkg.layout.prefix_length(bits)


def _copy_kernels(demo, root, edit=None, name="host"):
    dst = root / "kernels" / name
    shutil.copytree(demo["folder"], dst)
    if edit:
        index = yaml.safe_load((dst / "index.yaml").read_text())
        edit(index)
        (dst / "index.yaml").write_text(yaml.safe_dump(index))
    return dst


@needs_tvm
def test_missing_kernels_name_the_build_command(demo, tmp_path):
    from edgemoe.backends.tvm.backend import TvmBackend
    from edgemoe.package.reader import Package

    pkg = Package(demo["pkg"])
    with pytest.raises(KernelsMissingError, match=r"edgemoe compile .* --device host"):
        TvmBackend(kernels_root=tmp_path).prepare(pkg)
    with pytest.raises(KernelsMissingError, match=r"--device jetson-orin"):
        TvmBackend(device="jetson-orin").prepare(pkg)


@needs_tvm
@pytest.mark.parametrize("what", ["stale", "corrupt", "foreign"])
def test_unusable_kernels_are_refused(demo, tmp_path, what):
    from edgemoe.backends.tvm.backend import TvmBackend
    from edgemoe.package.reader import Package

    def stale(index):
        index["built_for"]["hidden"] += 1

    def foreign(index):
        index["target"] = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}

    folder = _copy_kernels(demo, tmp_path, {"stale": stale, "foreign": foreign}.get(what))
    if what == "corrupt":
        with open(folder / "experts.so", "r+b") as f:
            f.seek(100)
            f.write(b"\0" * 8)
    match = {"stale": "other expert shapes", "corrupt": "sha256", "foreign": "cannot run here|built for"}
    with pytest.raises(KernelsMissingError, match=match[what]):
        TvmBackend(device="host", kernels_root=tmp_path).prepare(Package(demo["pkg"]))


@needs_tvm
def test_float32_packages_are_refused():
    from edgemoe.backends.tvm.specs import kernel_specs
    from edgemoe.quant.spec import QuantSpec

    with pytest.raises(ConfigError, match="planes"):
        kernel_specs(64, 128, QuantSpec.float32())


def test_edgemoe_imports_and_reports_without_tvm():
    """With apache-tvm absent, edgemoe (and the backend module) import; the backend says why."""
    code = (
        "import sys; sys.modules['tvm'] = None\n"
        "import edgemoe, edgemoe.backends, edgemoe.runtime.engine\n"
        "from edgemoe.backends.tvm.backend import TvmBackend\n"
        "from edgemoe.backends import get_backend\n"
        "from edgemoe.errors import ConfigError\n"
        "b = TvmBackend()\n"
        "assert not b.is_available()\n"
        "print(b.unavailable_reason)\n"
        "try:\n"
        "    get_backend('tvm')\n"
        "except ConfigError as e:\n"
        "    print('refused:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install 'edgemoe[tvm]'" in out.stdout and "refused:" in out.stdout


@needs_tvm
def test_prefill_logits_match_planes(demo, exact_kernels):
    """A 40-token prefill goes through the GEMM buckets (experts see T = 1..40 rows, chunked by
    16); its logits match the numpy planes backend's."""
    from edgemoe.runtime.engine import Runtime

    logits = {}
    for backend in ("planes", "tvm"):
        rt = Runtime(demo["pkg"], level=8, backend=backend)
        try:
            ids = rt.encode(PROMPT * 3)[:40]
            logits[backend] = rt.forward(ids)
        finally:
            rt.close()
    ref = logits["planes"]
    assert np.abs(logits["tvm"] - ref).max() / np.abs(ref).max() < 1e-4


@needs_tvm
def test_kernels_use_int8_activations_where_the_cpu_has_a_byte_dot_product(demo):
    """Default kernels: matmuls on int8 activations where the host has a byte dot product (the demo's
    shapes fit), float32 elsewhere; ``activations="float32"`` keeps all exact."""
    from edgemoe.backends.tvm.targets import host_target
    from edgemoe.backends.tvm.int8dot import int8_isa

    isa = int8_isa(host_target())
    for folder, int8 in ((demo["folder"], isa is not None), (demo["folder"].parent / EXACT, False)):
        index = yaml.safe_load((folder / "index.yaml").read_text())
        mats = [k for k in index["kernels"] if k["op"] == "matmul"]
        assert mats and all(k["activations"] == ("int8" if int8 else "float32") for k in mats), folder.name


@needs_tvm
@pytest.mark.parametrize("level", [2, 4, 8])
def test_runtime_default_kernels_greedy_tokens_match_ort(demo, level):
    """The default kernels (int8 activations on dot-product CPUs) against onnxruntime's int8-activation
    graphs of the package: the same greedy tokens."""
    ids = _greedy(demo["pkg"], level, ("ort", "tvm"))
    assert ids["tvm"] == ids["ort"]


@needs_tvm
def test_int8_kernels_are_refused_for_cpus_without_integer_simd(tmp_path):
    from edgemoe.backends.tvm.compile import build_device
    from edgemoe.backends.tvm.specs import kernel_specs
    from edgemoe.backends.tvm.targets import resolve
    from edgemoe.quant.spec import QuantSpec

    # x86-64 baseline (SSE2): no AVX2, no VNNI; every aarch64 CPU has NEON
    dt = resolve({"sse2": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64"}})["sse2"]
    spec = QuantSpec()
    with pytest.raises(ConfigError, match="no integer SIMD.*--activations auto or float32"):
        build_device(dt, spec, kernel_specs(256, 256, spec, (1,)), tmp_path, activations="int8")
    with pytest.raises(ConfigError, match="activations must be one of"):
        build_device(dt, spec, kernel_specs(256, 256, spec, (1,)), tmp_path, activations="int4")


@needs_tvm
def test_cpu_kernels_run_without_importing_tvm_or_torch(demo):
    """The runtime loads CPU kernels with TVM's runtime library alone: neither ``tvm`` (its
    compiler library: +160 MiB RSS measured) nor torch (which tvm_ffi imports eagerly where it is
    installed: +210 MiB) ends up in the process."""
    code = ("import sys\n"
            "from edgemoe.runtime.engine import Runtime\n"
            f"rt = Runtime({str(demo['pkg'])!r}, level=4, backend='tvm')\n"
            "ids = rt.generate('In the beginning', max_new_tokens=4).ids\n"
            "assert len(ids) == 4, ids\n"
            "print(sorted(m for m in ('tvm', 'torch', 'tvm_ffi') if m in sys.modules))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "['tvm_ffi']"


@needs_tvm
def test_host_kernels_refused_on_a_cpu_without_their_features(demo, tmp_path):
    """Host kernels record the building CPU's feature flags; a CPU lacking one is refused (the
    kernels could use its instructions), found without importing tvm."""
    from edgemoe.backends.tvm.backend import TvmBackend
    from edgemoe.package.reader import Package

    def needs_more(index):
        index["built_on"]["flags"] = index["built_on"]["flags"] + ["edgemoe_imaginary_feature"]

    _copy_kernels(demo, tmp_path, needs_more)
    with pytest.raises(KernelsMissingError, match="lacks edgemoe_imaginary_feature"):
        TvmBackend(device="host", kernels_root=tmp_path).prepare(Package(demo["pkg"]))
