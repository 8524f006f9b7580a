"""Input and output names of the dense layer graphs: the contract between exporter and runtime."""

LAYER_INPUTS = ("hidden", "cos", "sin", "mask", "past_k", "past_v")
MOE_OUTPUTS = ("residual", "moe_in", "router_logits", "present_k", "present_v")
DENSE_OUTPUTS = ("hidden_out", "present_k", "present_v")
ROUTER_WEIGHT = "router_weight"   # initializer [H, E] of a MoE layer graph (read for prefetch)


def read_initializer(path, name: str):
    """One initializer of an ONNX file as numpy, reading only its bytes (external data or inline)."""
    from pathlib import Path

    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    for t in model.graph.initializer:
        if t.name != name:
            continue
        if t.data_location != onnx.TensorProto.EXTERNAL:
            return numpy_helper.to_array(t)
        info = {e.key: e.value for e in t.external_data}
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
        with open(Path(path).parent / info["location"], "rb") as f:
            f.seek(int(info.get("offset", 0)))
            raw = f.read(int(info["length"]))
        return np.frombuffer(raw, dtype=dtype).reshape(tuple(t.dims)).copy()
    raise KeyError(f"{name} not in {path}")
