"""onnxruntime experts: the package's per-expert graph of a level, with its external initializers
bound to the record buffer already in memory (no second read of the file)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from edgemoe.quant.record import RecordLayout, slot_array


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
        views = slot_views(buf, pkg.layout, bits)
        so = session_options(self.threads)
        names, values = [], []
        for init in onnx.load_model_from_string(model).graph.initializer:
            if init.data_location == onnx.TensorProto.EXTERNAL:
                names.append(init.name)
                values.append(ort.OrtValue.ortvalue_from_numpy(views[init.name]))
        so.add_external_initializers(names, values)
        sess = ort.InferenceSession(model, so, providers=self.providers)
        return sess, values  # keep the OrtValues (views of buf) alive with the session

    def run(self, handle, x):
        sess, _ = handle
        return sess.run(None, {"x": np.ascontiguousarray(x, dtype=np.float32)})[0]
