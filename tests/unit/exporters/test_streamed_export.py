"""Streamed export: checkpoint reads widen in place, graph weights stream to .data while building,
and the vocabulary-sized matrices are copied in row blocks; the files equal the non-streamed ones."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgemoe.exporters import checkpoint as ck
from edgemoe.package import onnx_util
from edgemoe.package.onnx_util import GraphBuilder, RowBlocks
from edgemoe.package.writer import PackageWriter


def _write_safetensors(path, tensors):
    """tensors: name -> (dtype tag, raw uint8/other ndarray, shape)"""
    header, blobs, off = {}, [], 0
    for name, (tag, arr, shape) in tensors.items():
        b = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": tag, "shape": list(shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    hb = json.dumps(header).encode()
    path.write_bytes(len(hb).to_bytes(8, "little") + hb + b"".join(blobs))


@pytest.mark.parametrize("chunk", [1, 3, 7, 1 << 20])
def test_half_precision_reads_widen_exactly(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(ck, "_WIDEN_CHUNK", chunk)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((37, 11)).astype(np.float32)
    bf = (x.view(np.uint32) >> 16).astype(np.uint16)
    h = x.astype(np.float16)
    _write_safetensors(tmp_path / "model.safetensors", {
        "bf": ("BF16", bf, x.shape), "h": ("F16", h, x.shape), "f": ("F32", x, x.shape),
        "d": ("F64", x.astype(np.float64), x.shape), "i": ("I64", np.arange(5), (5,)),
        "s": ("BF16", bf[:1, :1], ()), "e": ("F16", h[:0], (0, 11))})
    (tmp_path / "config.json").write_text("{}")
    c = ck.Checkpoint(tmp_path)
    want = {"bf": (bf.astype(np.uint32) << 16).view(np.float32), "h": h.astype(np.float32), "f": x,
            "d": x, "i": np.arange(5), "s": (bf[:1, :1].astype(np.uint32) << 16).view(np.float32).reshape(()),
            "e": np.zeros((0, 11), np.float32)}
    for name, w in want.items():
        got = c.read(name)
        assert got.dtype == w.dtype == c.dtype(name) and got.shape == w.shape and got.flags.writeable
        np.testing.assert_array_equal(got, w)
        if got.ndim:
            for bb in (1, 50, 1 << 20):
                blocks = list(c.row_blocks(name, bb))
                joined = np.concatenate(blocks) if blocks else np.zeros_like(w)
                np.testing.assert_array_equal(joined, w)
            if len(w) >= 3:
                np.testing.assert_array_equal(c.read_rows(name, 1, 3), w[1:3])


def _graph(data, w_lin, w_emb):
    b = GraphBuilder("g", data)
    b.input("x", onnx_util.TensorProto.FLOAT, ["T", w_lin.shape[1]])
    y = b.op("MatMul", "x", b.const_t(w_lin))
    y = b.op("Add", y, b.const(np.float32(1.0)))
    b.output(b.op("Gather", b.const(w_emb), b.const(np.int64(0))), "e", onnx_util.TensorProto.FLOAT, [None])
    b.output(y, "y", onnx_util.TensorProto.FLOAT, ["T", w_lin.shape[0]])
    return b.model()


@pytest.mark.parametrize("block", [1, 40, 16 << 20])
def test_streamed_graph_files_equal_saved_ones(tmp_path, monkeypatch, block):
    monkeypatch.setattr(onnx_util, "_BLOCK_BYTES", block)
    rng = np.random.default_rng(1)
    lin, emb = rng.standard_normal((13, 9)).astype(np.float32), rng.standard_normal((17, 5)).astype(np.float32)
    rows = lambda a, k: RowBlocks(a.shape, a.dtype, lambda: (a[i:i + k] for i in range(0, len(a), k)))  # noqa: E731
    builds = {"saved": None, "streamed": lambda d: _graph(d, lin, emb),
              "rows": lambda d: _graph(d, rows(lin, 4), rows(emb, 3))}
    out = {}
    for kind, build in builds.items():
        with PackageWriter(tmp_path / f"{kind}.edgemoe") as w:
            if build is None:
                w.write_onnx("graphs/g.onnx", _graph(None, lin, emb))
            else:
                w.write_graph("graphs/g.onnx", build)
            out[kind] = (dict(w.files), {f: (w.stage / f).read_bytes() for f in w.files})
            w.abort()
    assert set(out["saved"][0]) == {"graphs/g.onnx", "graphs/g.onnx.data"}
    assert out["streamed"] == out["saved"] and out["rows"] == out["saved"]


def test_row_blocks_without_external_data_are_joined():
    rng = np.random.default_rng(2)
    lin, emb = rng.standard_normal((13, 9)).astype(np.float32), rng.standard_normal((17, 5)).astype(np.float32)
    rows = lambda a, k: RowBlocks(a.shape, a.dtype, lambda: (a[i:i + k] for i in range(0, len(a), k)))  # noqa: E731
    assert (_graph(None, rows(lin, 4), rows(emb, 3)).SerializeToString()
            == _graph(None, lin, emb).SerializeToString())
