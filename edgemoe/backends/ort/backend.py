"""onnxruntime experts: the package's per-expert graph of a level, with its external initializers
bound to the record buffer already in memory (no second read of the file).

onnxruntime pre-packs MatMulNBits' weights, scales and zero points into buffers of its own when the
session is created and never reads the initializers again, so the record buffer is let go once the
session exists: the resident runtime then holds each expert once, in onnxruntime's layout (measured
on OLMoE-1B-7B shapes x 4 layers, level 8: 5202 -> 3405 MiB resident, 1.19x the package's bytes at
that level; level 4: 3491 -> 2285 MiB, 1.14x; same tokens and speed). That onnxruntime does not
read them is checked once per backend, on the first expert: its session is run, every byte it was
given is overwritten, and it must give the same output again; where it does not (another
onnxruntime version), buffers are kept as before.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from edgemoe.package.expert_graph import X, Y
from edgemoe.quant.record import RecordLayout, slot_array

_OUTPUTS = [Y]


def session_options(threads: int = 1) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.enable_cpu_mem_arena = False   # no per-session arena: resident memory stays what the weights need
    so.enable_mem_pattern = False
    return so


def slot_views(buf: np.ndarray, layout: RecordLayout, bits: int) -> dict[str, np.ndarray]:
    """Zero-copy views of every tensor of levels <= bits, keyed by slot name (= initializer name)."""
    return {t.name: slot_array(buf, layout, t)
            for c in layout.chunks[: layout.spec.level_index(bits) + 1] for t in c.tensors}


class OrtBackend:
    name = "ort"

    def __init__(self, threads: int = 1, providers: list[str] | None = None, exact: bool = False):
        """``exact``: MatMulNBits computes in fp32 (accuracy_level 1; bit-faithful to the numpy
        reference, 40-100x slower) instead of int8 activations (accuracy_level 4, the fast path,
        about 1.5-2% relative error per expert on top of the weight quantization)."""
        self.threads = threads
        self.exact = exact
        self.providers = providers or ["CPUExecutionProvider"]
        self._graphs: dict[str, bytes] = {}
        self.releases_source: bool | None = None   # checked on the first load (see the module doc)

    def is_available(self) -> bool:
        return True

    def prepare(self, pkg, device=None):
        return None

    def load(self, pkg, layer, expert, bits, buf):
        rel = pkg.experts[(layer, expert)].level(bits).graph
        model = self._graphs.get(rel)
        if model is None:
            model = pkg.read_file(rel)
            if self.exact:
                proto = onnx.load_model_from_string(model)
                for node in proto.graph.node:
                    for attr in node.attribute:
                        if node.op_type == "MatMulNBits" and attr.name == "accuracy_level":
                            attr.i = 1
                model = proto.SerializeToString()
            self._graphs[rel] = model
        if self.releases_source is None:
            self.releases_source = self._session_ignores_source(model, pkg, bits, buf)
        sess, values = self._session(model, slot_views(buf, pkg.layout, bits))
        # keep the OrtValues (views of buf) alive with the session unless it no longer reads them
        return sess, (None if self.releases_source else values)

    def _session(self, model: bytes, views: dict):
        so = session_options(self.threads)
        names, values = [], []
        for init in onnx.load_model_from_string(model).graph.initializer:
            if init.data_location == onnx.TensorProto.EXTERNAL:
                names.append(init.name)
                values.append(ort.OrtValue.ortvalue_from_numpy(views[init.name]))
        so.add_external_initializers(names, values)
        return ort.InferenceSession(model, so, providers=self.providers), values

    def _session_ignores_source(self, model: bytes, pkg, bits: int, buf) -> bool:
        """Does a session still give the same output after every byte of its record is overwritten?"""
        copy = np.array(buf, dtype=np.uint8, copy=True)
        sess, values = self._session(model, slot_views(copy, pkg.layout, bits))
        x = np.random.default_rng(0).standard_normal((2, pkg.arch.hidden_size)).astype(np.float32)
        y0 = sess.run(None, {"x": x})[0]
        copy[...] = 0x5A
        return bool(np.array_equal(y0, sess.run(None, {"x": x})[0]))

    def run(self, handle, x):
        sess, _ = handle
        return sess.run(None, {"x": np.ascontiguousarray(x, dtype=np.float32)})[0]

    def run_group(self, handles, xs, bounds, out):
        """The grouped call (``backends.base``): onnxruntime has no call over several sessions, so
        one run per expert, through the session's C++ entry point (the Python wrapper's per-call
        input checks cost as much as a small expert); ``xs`` is float32 and C-contiguous."""
        xs = np.ascontiguousarray(xs, dtype=np.float32)
        b = bounds.tolist()
        for i, (sess, _) in enumerate(handles):
            out[b[i]:b[i + 1]] = sess._sess.run(_OUTPUTS, {X: xs[b[i]:b[i + 1]]}, None)[0]
