"""The packed planes are exactly onnxruntime's MatMulNBits B input (com.microsoft, CPU)."""
import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgemoe.quant import (  # noqa: E402
    QuantSpec,
    encode_record,
    level_affine,
    matmul_reference,
    quantize,
    record_views,
    unpack_plane,
)


def _plane_nodes(planes, scales, zps, widths, k, n, gs, accuracy_level=4):
    """One MatMulNBits per plane, outputs summed; B, scales, zero points (if any) are initializers."""
    nodes, inits, outs = [], [], []
    zps = zps if zps is not None else [None] * len(planes)
    for p, (b, s, z, bits) in enumerate(zip(planes, scales, zps, widths)):
        arrays = {f"B{p}": b, f"s{p}": s} if z is None else {f"B{p}": b, f"s{p}": s, f"z{p}": z}
        inits += [numpy_helper.from_array(np.ascontiguousarray(a), nm) for nm, a in arrays.items()]
        nodes.append(
            helper.make_node(
                "MatMulNBits", ["x"] + list(arrays), [f"y{p}"], domain="com.microsoft",
                K=k, N=n, bits=bits, block_size=gs, accuracy_level=accuracy_level,
            )
        )
        outs.append(f"y{p}")
    if len(outs) > 1:
        nodes.append(helper.make_node("Sum", outs, ["y"]))
    else:
        nodes[0].output[0] = "y"
    graph = helper.make_graph(
        nodes, "planes",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
        inits,
    )
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("k, scale_shape", [(256, "2d"), (200, "flat")])
def test_single_plane_dequant(bits, k, scale_shape):
    """A plane with arbitrary scale s and float zero point z computes x @ ((q - z) * s).T."""
    gs, n = 64, 48
    rng = np.random.default_rng(bits * k)
    spec = QuantSpec(ladder=(bits, 8) if bits == 4 else (2, 4, 8), group_size=gs)
    w = (rng.standard_t(4, size=(n, k)) * 0.02).astype(np.float32)
    chunks, lay = encode_record({"w": w}, spec)
    plane = record_views(b"".join(chunks), lay, bits)[("w", "plane", spec.ladder[0])]  # bytes straight from the record
    g = plane.shape[1]
    s = rng.uniform(0.01, 0.1, size=(n, g)).astype(np.float32)
    z = rng.uniform(-2, 2 ** bits + 1, size=(n, g)).astype(np.float32)
    q = unpack_plane(plane, bits, gs).reshape(n, g, gs).astype(np.float32)
    expect_w = ((q - z[..., None]) * s[..., None]).reshape(n, -1)[:, :k]
    x = rng.normal(size=(3, k)).astype(np.float32)
    if scale_shape == "flat":
        s, z = s.reshape(-1), z.reshape(-1)
    sess = _plane_nodes([plane], [s], [z], [bits], k, n, gs)
    y = sess.run(None, {"x": x})[0]
    ref = x @ expect_w.T
    assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("ladder", [(2, 4, 8), (4, 8)])
@pytest.mark.parametrize("k", [256, 136])
def test_level_as_sum_of_plane_products(ladder, k):
    """Level k = sum over its planes of MatMulNBits(scale a_k*2^(k-level_p)), bias as plane-0 zero point."""
    gs, n = 64, 40
    rng = np.random.default_rng(k)
    spec = QuantSpec(ladder=ladder, group_size=gs)
    w = (rng.normal(size=(n, k)) * 0.02).astype(np.float32)
    qm = quantize(w, spec)
    chunks, lay = encode_record({"w": w}, spec)
    views = record_views(b"".join(chunks), lay, 8)
    x = rng.normal(size=(4, k)).astype(np.float32)
    for i, bits in enumerate(ladder):
        plane_scales, bias = level_affine(qm.scales[bits], qm.offsets[bits], bits, spec)
        zps = [-bias / plane_scales[0]] + [np.zeros_like(bias)] * i
        planes = [views[("w", "plane", b)] for b in ladder[: i + 1]]
        sess = _plane_nodes(
            planes, [s.astype(np.float32) for s in plane_scales], [z.astype(np.float32) for z in zps],
            spec.plane_widths[: i + 1], k, n, gs,
        )
        y = sess.run(None, {"x": x})[0]
        ref = matmul_reference(x, qm, bits)
        assert np.abs(y - ref).max() <= 2e-5 * np.abs(ref).max(), bits


@pytest.mark.parametrize("accuracy_level, tol", [(0, 2e-5), (4, 2e-2)])
def test_level_without_zero_points_plus_group_bias(accuracy_level, tol):
    """Fast form: MatMulNBits with its implicit zero point 2**(w-1), bias added via group sums of x.

    accuracy_level=4 quantizes x to int8 per block inside onnxruntime, hence the looser tolerance.
    """
    gs, n, k = 32, 40, 200
    rng = np.random.default_rng(7)
    spec = QuantSpec(ladder=(2, 4, 8), group_size=gs)
    w = (rng.standard_t(4, size=(n, k)) * 0.02).astype(np.float32)
    qm = quantize(w, spec)
    chunks, lay = encode_record({"w": w}, spec)
    views = record_views(b"".join(chunks), lay, 8)
    x = rng.normal(size=(3, k)).astype(np.float32)
    g = -(-k // gs)
    xsum = np.pad(x, ((0, 0), (0, g * gs - k))).reshape(3, g, gs).sum(axis=2)  # [T, G]
    for i, bits in enumerate(spec.ladder):
        plane_scales, bias = level_affine(qm.scales[bits], qm.offsets[bits], bits, spec, implicit_zero_points=True)
        planes = [views[("w", "plane", b)] for b in spec.ladder[: i + 1]]
        sess = _plane_nodes(
            planes, [s.astype(np.float32) for s in plane_scales], None, spec.plane_widths[: i + 1], k, n, gs,
            accuracy_level=accuracy_level,
        )
        y = sess.run(None, {"x": x})[0] + xsum @ bias.T
        ref = matmul_reference(x, qm, bits)
        assert np.abs(y - ref).max() <= tol * np.abs(ref).max(), bits
