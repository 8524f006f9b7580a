"""The onnxruntime expert backend lets go of the record buffer once a session exists (onnxruntime
pre-packs the weights and never reads them again), checked per backend by overwriting the bytes."""
from __future__ import annotations

import numpy as np
import onnx

from edgemoe.backends.ort.backend import OrtBackend
from edgemoe.package.reader import Package
from edgemoe.package.record_store import ExpertStore


def _x(pkg, rows=3):
    return np.random.default_rng(1).standard_normal((rows, pkg.arch.hidden_size)).astype(np.float32)


def test_sessions_do_not_read_their_record_after_creation(demo_package):
    pkg = Package(demo_package)
    store = ExpertStore(pkg)
    for exact in (False, True):
        be = OrtBackend(exact=exact)
        for bits in pkg.quant.ladder:
            buf = np.array(store.read(0, 1, bits), copy=True)
            handle = be.load(pkg, 0, 1, bits, buf)
            y0 = be.run(handle, _x(pkg))
            buf[...] = 0xA5                        # what a freed and reused buffer could hold
            assert np.array_equal(be.run(handle, _x(pkg)), y0), (exact, bits)
        assert be.releases_source is True          # this onnxruntime pre-packs everything
        assert handle[1] is None                   # so the handle holds no view of the record


def test_where_sessions_read_the_record_it_is_kept(demo_package, monkeypatch):
    pkg = Package(demo_package)
    be = OrtBackend()
    monkeypatch.setattr(be, "_session_ignores_source", lambda *a: False)
    buf = ExpertStore(pkg).read(0, 2, 8)
    sess, values = be.load(pkg, 0, 2, 8, buf)
    assert be.releases_source is False and values and all(v is not None for v in values)


def test_the_check_can_fail(demo_package, monkeypatch):
    """A session that reads its initializers while running is caught: the check says keep them."""
    pkg = Package(demo_package)
    be = OrtBackend()

    class Reads:                                   # a session whose output depends on its bytes
        def __init__(self, views):
            self.views = views

        def run(self, _, feeds):
            return [feeds["x"] * float(sum(int(v.view(np.uint8).ravel()[0]) for v in self.views.values()))]

    monkeypatch.setattr(be, "_session", lambda model, views: (Reads(views), list(views.values())))
    buf = ExpertStore(pkg).read(0, 1, 8)
    be.load(pkg, 0, 1, 8, buf)
    assert be.releases_source is False


def test_fused_experts_equal_the_package_graphs_and_the_reference(demo_package):
    """Multi-plane levels load as one MatMulNBits per matrix over the level's codes: the same
    outputs as the package's one-per-plane graphs (int8 activations: 1e-5 of each other, both ~2%
    from exact; fp32 compute: both within 1e-5 of the numpy reference)."""
    from edgemoe.backends.reference.backend import ReferenceBackend

    pkg = Package(demo_package)
    store = ExpertStore(pkg)
    ref = ReferenceBackend()
    for exact in (False, True):
        fused, stored = OrtBackend(exact=exact), OrtBackend(exact=exact, fuse=False)
        for bits in pkg.quant.ladder:
            buf = store.read(0, 3, bits)
            x = _x(pkg, 5)
            y_f = fused.run(fused.load(pkg, 0, 3, bits, buf), x)
            y_s = stored.run(stored.load(pkg, 0, 3, bits, buf), x)
            y_r = ref.run(ref.load(pkg, 0, 3, bits, buf), x)
            scale = np.abs(y_r).max()
            assert np.abs(y_f - y_s).max() / scale < 1e-5, (exact, bits)
            if exact:
                assert np.abs(y_f - y_r).max() / scale < 1e-5, bits
            else:
                assert 1e-4 < np.abs(y_f - y_r).max() / scale < 5e-2, bits    # int8 activations
    model = onnx.load_model_from_string(fused._graphs[("fused", 8)])
    assert [n.op_type for n in model.graph.node].count("MatMulNBits") == 2   # gate_up, down
