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

An expert whose level spans several bit planes is loaded, by default, as the fused graph of
``fused.py`` (one ``MatMulNBits`` per matrix over the level's codes, combined from the planes at
load) rather than the package's one-per-plane graph: the same weights, one pass instead of two or
three (measured on OLMoE-1B-7B experts cycling from DRAM: level 8 1.2-1.8x, level 4 1.5x faster).
``fuse=False`` runs the package's graphs as stored.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from edgemoe.backends.ort.fused import fused_arrays, fused_graph
from edgemoe.backends.reference.backend import act_of
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

    def __init__(self, threads: int = 1, providers: list[str] | None = None, exact: bool = False,
                 fuse: bool = True):
        """``exact``: MatMulNBits computes in fp32 (accuracy_level 1; bit-faithful to the numpy
        reference, 40-100x slower) instead of int8 activations (accuracy_level 4, the fast path,
        about 1.5-2% relative error per expert on top of the weight quantization). ``fuse``: load
        multi-plane levels as one ``MatMulNBits`` per matrix (see the module doc). ``threads``:
        experts computed at once by the grouped call (each session itself single-threaded)."""
        self.threads = max(1, int(threads))
        self.exact = exact
        self.fuse = fuse
        self._pool = None           # the grouped call's worker threads (threads > 1)
        self.providers = providers or ["CPUExecutionProvider"]
        self._graphs: dict[str, bytes] = {}
        self.releases_source: bool | None = None   # checked on the first load (see the module doc)

    def is_available(self) -> bool:
        return True

    def prepare(self, pkg, device=None):
        return None

    def _model(self, key, build) -> bytes:
        """A graph's bytes, made once (``build() -> ModelProto | bytes``), with the exact flag applied."""
        model = self._graphs.get(key)
        if model is None:
            model = build()
            if self.exact:
                proto = onnx.load_model_from_string(model) if isinstance(model, bytes) else model
                for node in proto.graph.node:
                    for attr in node.attribute:
                        if node.op_type == "MatMulNBits" and attr.name == "accuracy_level":
                            attr.i = 1
                model = proto
            model = self._graphs[key] = model if isinstance(model, bytes) else model.SerializeToString()
        return model

    def load(self, pkg, layer, expert, bits, buf):
        layout = pkg.layout
        if self.fuse and pkg.quant.scheme == "matryoshka" and pkg.quant.level_index(bits) > 0:
            shapes = {m: (n, k) for m, n, k in layout.matrices}       # gate_up [2I, H], down [H, I]
            hidden, inter = shapes["down"]
            model = self._model(("fused", bits), lambda: fused_graph(layout, bits, hidden, inter,
                                                                     act_of(getattr(pkg, "arch", None))))
            arrays = fused_arrays(buf, layout, bits)
        else:
            rel = pkg.experts[(layer, expert)].level(bits).graph
            model = self._model(rel, lambda: pkg.read_file(rel))
            arrays = slot_views(buf, layout, bits)
        if self.releases_source is None:
            self.releases_source = self._session_ignores_source(model, arrays, pkg.arch.hidden_size)
        sess, values = self._session(model, arrays)
        # keep the OrtValues (views of buf, or the fused arrays) alive with the session unless it
        # no longer reads them
        return sess, (None if self.releases_source else values)

    def _session(self, model: bytes, views: dict):
        so = session_options(1)     # threads > 1 run several experts at once (run_group)
        names, values = [], []
        for init in onnx.load_model_from_string(model).graph.initializer:
            if init.data_location == onnx.TensorProto.EXTERNAL:
                names.append(init.name)
                values.append(ort.OrtValue.ortvalue_from_numpy(views[init.name]))
        so.add_external_initializers(names, values)
        return ort.InferenceSession(model, so, providers=self.providers), values

    def _session_ignores_source(self, model: bytes, arrays: dict, hidden: int) -> bool:
        """Does a session still give the same output after every byte it was given is overwritten?"""
        copies = {name: np.array(a, copy=True) for name, a in arrays.items()}
        sess, values = self._session(model, copies)
        x = np.random.default_rng(0).standard_normal((2, hidden)).astype(np.float32)
        y0 = sess.run(None, {"x": x})[0]
        for a in copies.values():
            a.view(np.uint8)[...] = 0x5A
        return bool(np.array_equal(y0, sess.run(None, {"x": x})[0]))

    def run(self, handle, x):
        sess, _ = handle
        return sess.run(None, {"x": np.ascontiguousarray(x, dtype=np.float32)})[0]

    def run_group(self, handles, xs, bounds, out):
        """The grouped call (``backends.base``): onnxruntime has no call over several sessions, so
        one run per expert, through the session's C++ entry point (the Python wrapper's per-call
        input checks cost as much as a small expert); ``xs`` is float32 and C-contiguous. With
        ``threads`` > 1 the experts are shared among that many threads (onnxruntime lets go of the
        GIL while it runs), each session single-threaded: hundreds of resident sessions with a
        pool each spin on each other's cores (measured: 2 intra-op threads 1.2 tok/s, 1 thread 23)."""
        xs = np.ascontiguousarray(xs, dtype=np.float32)
        b = bounds.tolist()
        n = min(self.threads, len(handles))

        def part(i0: int):
            for i in range(i0, len(handles), n):
                out[b[i]:b[i + 1]] = handles[i][0]._sess.run(_OUTPUTS, {X: xs[b[i]:b[i + 1]]}, None)[0]
        if n == 1:
            part(0)
            return
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor
            self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="edgemoe-experts")
        futures = [self._pool.submit(part, i0) for i0 in range(1, n)]
        part(0)
        for f in futures:
            f.result()
