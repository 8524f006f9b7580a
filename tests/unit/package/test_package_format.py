"""The package keeps its promises: a self-describing manifest, one graph per expert and level that
stock onnxruntime runs standalone over the record bytes, and the export / inspect CLI around it."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml

pytest.importorskip("torch")
pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402

import tiny_models  # noqa: E402
from edgemoe import __version__  # noqa: E402
from edgemoe.backends.reference.backend import swiglu  # noqa: E402
from edgemoe.cli import main  # noqa: E402
from edgemoe.exporters.export import export  # noqa: E402
from edgemoe.package import constants as C  # noqa: E402
from edgemoe.package.reader import Package  # noqa: E402
from edgemoe.quant.record import decode_record  # noqa: E402
from edgemoe.quant.spec import QuantSpec  # noqa: E402
from edgemoe.package.record_store import ExpertStore  # noqa: E402

LEVELS = (2, 4, 8)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("fmt")
    tiny_models.build("mixtral", d / "hf")
    return d / "hf", export(d / "hf", d / "q.edgemoe", QuantSpec())


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_manifest_describes_the_package(built):
    src, out = built
    m = yaml.safe_load((out / C.MANIFEST).read_text())
    assert m[C.K_FORMAT] == "edgemoe" and m[C.K_VERSION] == C.FORMAT_VERSION
    prod = m[C.K_PRODUCER]
    assert prod["edgemoe"] == __version__ and prod["adapter"] == "mixtral"
    assert prod["source"]["model_type"] == "mixtral" and len(prod["source"]["fingerprint_sha256"]) == 64
    assert m[C.K_ARCH]["family"] == "mixtral" and m[C.K_ARCH]["num_experts"] == 4
    assert m[C.K_QUANT] == QuantSpec().to_dict()
    files = m[C.K_FILES]
    assert {"graphs/embed.onnx", "graphs/head.onnx", "graphs/L000.onnx", "graphs/L001.onnx"} <= set(files)
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    records = {e[C.K_FILE] for e in m[C.K_EXPERTS]}
    assert on_disk == set(files) | records | {C.MANIFEST}    # nothing unlisted, nothing missing
    for rel, meta in files.items():
        data = (out / rel).read_bytes()
        assert meta[C.K_LENGTH] == len(data)
        assert meta[C.K_SHA256] == hashlib.sha256(data).hexdigest()


def test_every_expert_has_one_graph_per_level(built):
    _, out = built
    pkg = Package(out)
    assert sorted(pkg.experts) == [(i, e) for i in (0, 1) for e in range(4)]
    graphs = set()
    for (i, e), entry in pkg.experts.items():
        assert entry.file == f"experts/L{i:03d}/records.bin"
        assert tuple(lv.bits for lv in entry.levels) == LEVELS
        for lv in entry.levels:
            assert lv.graph in pkg.files and (out / lv.graph).exists()
            graphs.add(lv.graph)
    assert len(graphs) == 8 * len(LEVELS)
    m = yaml.safe_load((out / C.MANIFEST).read_text())
    for layer in m[C.K_EXPERTS]:
        assert [lv[C.K_PREFIX] for lv in layer[C.K_LEVELS]] == [pkg.layout.prefix_length(b) for b in LEVELS]


def _patched(path, dest, accuracy_level):
    """A copy of an expert graph beside its record file, with MatMulNBits' accuracy_level changed."""
    model = onnx.load(str(path), load_external_data=False)
    n = 0
    for node in model.graph.node:
        for attr in node.attribute:
            if node.op_type == "MatMulNBits" and attr.name == "accuracy_level":
                attr.i, n = accuracy_level, n + 1
    assert n > 0
    onnx.save(model, str(dest))
    return dest


def _rel_err(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("bits", LEVELS)
def test_expert_graph_runs_standalone_in_stock_onnxruntime(built, tmp_path, bits):
    """Every expert's graph at this level, loaded from its path by a plain InferenceSession (weights
    from records.bin as external data), matches the numpy reference on the decoded record."""
    _, out = built
    pkg = Package(out)
    store = ExpertStore(pkg)
    x = np.random.default_rng(bits).standard_normal((8, pkg.arch.hidden_size)).astype(np.float32)
    exact_dir = {}
    for (layer, e), entry in sorted(pkg.experts.items()):
        graph = out / entry.level(bits).graph
        w = decode_record(store.read(layer, e, bits), pkg.layout, bits)
        ref = swiglu(x, w["gate_up"], w["down"])
        fast = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
        assert [i.name for i in fast.get_inputs()] == ["x"]
        y = fast.run(None, {"x": x})[0]
        assert y.shape == ref.shape
        assert _rel_err(y, ref) <= 2e-2, (layer, e)           # int8 activations (accuracy_level 4)
        # accuracy_level 1 (fp32 compute): the reference's math. The patched copy lives in a copy of
        # the layer folder, beside records.bin, so the graph's external data still resolves.
        if layer not in exact_dir:
            exact_dir[layer] = tmp_path / graph.parent.name
            shutil.copytree(graph.parent, exact_dir[layer])
        exact = _patched(graph, exact_dir[layer] / f"exact_{graph.name}", 1)
        y1 = ort.InferenceSession(str(exact), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        assert _rel_err(y1, ref) <= 1e-5, (layer, e)
    store.close()


def test_expert_graph_reads_only_its_level(built, tmp_path):
    """A level-2 graph must still run when the record is cut right after its prefix."""
    _, out = built
    pkg = Package(out)
    entry = pkg.experts[(0, 0)]                        # offset 0: the prefix is the file's start
    assert entry.offset == 0
    d = tmp_path / "L000"
    d.mkdir()
    rec = (out / entry.file).read_bytes()
    (d / C.RECORD_FILE).write_bytes(rec[: pkg.layout.prefix_length(2)])
    shutil.copyfile(out / entry.level(2).graph, d / "g.onnx")
    x = np.ones((2, pkg.arch.hidden_size), np.float32)
    y = ort.InferenceSession(str(d / "g.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.isfinite(y).all() and y.shape == (2, pkg.arch.hidden_size)
    shutil.copyfile(out / entry.level(4).graph, d / "g4.onnx")
    with pytest.raises(Exception):                     # level 4 needs bytes past that prefix
        ort.InferenceSession(str(d / "g4.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})


def test_dry_run_writes_nothing_and_lists_the_plan(built, tmp_path):
    src, _ = built
    out = tmp_path / "planned.edgemoe"
    before = sorted(p.name for p in src.iterdir())
    r = _cli("export", src, "-o", out, "--dry-run")
    assert r.exit_code == 0, r.output
    for rel in ("graphs/embed.onnx", "graphs/L000.onnx", "graphs/L001.onnx", "graphs/head.onnx",
                "experts/L000/records.bin", "experts/L001/records.bin"):
        assert rel in r.output
    assert "level 2" in r.output and "level 8" in r.output
    r = _cli("export", src, "-o", out, "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    plan = json.loads(r.output)
    assert plan["family"] == "mixtral" and len(plan["files"]) == 6
    assert plan["total_bytes"] == sum(f["bytes"] for f in plan["files"]) > 0
    assert list(tmp_path.iterdir()) == [] and sorted(p.name for p in src.iterdir()) == before


def test_inspect_json(built):
    _, out = built
    r = _cli("inspect", out, "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    pkg = Package(out)
    assert info["arch"] == pkg.arch.to_dict() and info["arch"]["family"] == "mixtral"
    assert info["quant"]["ladder"] == list(LEVELS)
    assert info["n_experts"] == 8
    assert [lv["bits"] for lv in info["levels"]] == list(LEVELS)
    for lv in info["levels"]:
        assert lv["bytes_per_expert"] == pkg.layout.prefix_length(lv["bits"])
        assert lv["bytes"] == 8 * lv["bytes_per_expert"]
    sizes = [lv["bytes"] for lv in info["levels"]]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3
    assert info["dense_bytes"] > 0
    r = _cli("inspect", out)
    assert r.exit_code == 0 and "mixtral" in r.output and "level  4" in r.output


def test_inspect_verify(built, tmp_path):
    _, out = built
    r = _cli("inspect", out, "--json", "--verify")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["verified_bytes"] > 0
    bad = tmp_path / "bad.edgemoe"
    shutil.copytree(out, bad)
    f = bad / "experts" / "L000" / "E002.k4.onnx"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF
    f.write_bytes(bytes(data))
    assert _cli("inspect", bad).exit_code == 0      # same length: only --verify hashes content
    r = _cli("inspect", bad, "--verify")
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "error: " in r.output and "experts/L000/E002.k4.onnx" in r.output
