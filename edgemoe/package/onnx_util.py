"""Small helpers for building ONNX graphs from numpy (onnx only; no torch)."""
from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
MS_DOMAIN = "com.microsoft"

NP_TO_ONNX = {np.dtype("float32"): TensorProto.FLOAT, np.dtype("float16"): TensorProto.FLOAT16,
              np.dtype("uint8"): TensorProto.UINT8, np.dtype("int64"): TensorProto.INT64,
              np.dtype("int32"): TensorProto.INT32}


class GraphBuilder:
    """Accumulates nodes and initializers; ``out = b.op("MatMul", x, w)`` returns the output name."""

    def __init__(self, name: str):
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._ids = itertools.count()
        self.uses_ms = False

    def fresh(self, hint: str) -> str:
        return f"{hint}_{next(self._ids)}"

    def input(self, name: str, elem_type: int, shape) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, value: str, name: str, elem_type: int, shape) -> str:
        self.nodes.append(helper.make_node("Identity", [value], [name]))
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def const(self, array, name: str | None = None) -> str:
        """An initializer holding ``array`` (stored inline or as external data, as the saver decides)."""
        name = name or self.fresh("c")
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def external(self, name: str, dtype: str, shape, location: str, offset: int, nbytes: int) -> str:
        """An initializer whose bytes live in another file (an expert record), never copied."""
        t = TensorProto()
        t.name = name
        t.data_type = NP_TO_ONNX[np.dtype(dtype)]
        t.dims.extend(int(d) for d in shape)
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", location), ("offset", str(offset)), ("length", str(nbytes))):
            e = t.external_data.add()
            e.key, e.value = k, v
        self.inits.append(t)
        return name

    def op(self, op_type: str, *inputs: str, n_out: int = 1, domain: str = "", **attrs):
        outs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, domain=domain or None, **attrs))
        if domain == MS_DOMAIN:
            self.uses_ms = True
        return outs[0] if n_out == 1 else outs

    def model(self) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.inits)
        opsets = [helper.make_opsetid("", OPSET)]
        if self.uses_ms:
            opsets.append(helper.make_opsetid(MS_DOMAIN, 1))
        m = helper.make_model(graph, opset_imports=opsets, producer_name="edgemoe")
        m.ir_version = 8
        return m
