"""The grouped expert call: expert-major rows and their weighted sum (``runtime.expert_rows``), and
every backend's ``run_group`` against one ``run`` per expert (``backends.base.run_each``)."""
from __future__ import annotations

import numpy as np
import pytest

from edgemoe.backends import get_backend
from edgemoe.backends.base import run_each, run_group
from edgemoe.package.reader import Package
from edgemoe.runtime.expert_rows import ExpertRows


def _routing(t, k, e, seed):
    rng = np.random.default_rng(seed)
    experts = np.stack([rng.choice(e, k, replace=False) for _ in range(t)])
    return experts, rng.random((t, k)).astype(np.float32)


@pytest.mark.parametrize("t,k", [(1, 1), (1, 8), (5, 2), (16, 8)])
def test_rows_group_by_expert_and_the_sum_matches_a_loop(t, k):
    experts, weights = _routing(t, k, 12, t * 10 + k)
    rows = ExpertRows.of(experts)
    assert rows.ids.tolist() == sorted(set(experts.ravel().tolist()))
    assert rows.counts().sum() == t * k and rows.bounds[0] == 0
    x = np.random.default_rng(1).standard_normal((t, 6)).astype(np.float32)
    xs = rows.gather(x)
    for i, e in enumerate(rows.ids):        # every row of expert e's group is a token routed to it
        toks = rows.order[rows.bounds[i]:rows.bounds[i + 1]] // k
        assert sorted(toks.tolist()) == sorted(np.nonzero(experts == e)[0].tolist())
        np.testing.assert_array_equal(xs[rows.bounds[i]:rows.bounds[i + 1]], x[toks])
    # an "expert" that scales its rows by (e + 1): the sum is sum_j w[t, j] * (e_tj + 1) * x[t]
    scale = (rows.ids + 1).astype(np.float32)
    ys = xs * np.repeat(scale, rows.counts())[:, None]
    want = (weights * (experts + 1)).sum(1, keepdims=True) * x
    np.testing.assert_allclose(rows.combine(ys, weights), want, rtol=1e-6)


def test_a_rows_sum_does_not_depend_on_the_rest_of_the_batch():
    """Batched and alone, a token's weighted sum is the same to the bit (greedy tokens of a batch
    equal the tokens run alone)."""
    experts, weights = _routing(9, 4, 16, 3)
    ys_of = np.random.default_rng(4).standard_normal((16, 9, 32)).astype(np.float32)  # [e, t, H]

    def moe(ex, w, toks):
        rows = ExpertRows.of(ex)
        ys = ys_of[ex.reshape(-1)[rows.order], np.asarray(toks)[rows.order // ex.shape[1]]]
        return rows.combine(ys, w)
    batched = moe(experts, weights, range(9))
    rows = ExpertRows.of(experts)
    ys = ys_of[experts.reshape(-1)[rows.order], rows.order // 4]
    slot_by_slot = sum(ys_of[experts[:, j], np.arange(9)] * weights[:, j, None] for j in range(4))
    np.testing.assert_array_equal(batched, slot_by_slot)     # the k slots added in order
    np.testing.assert_array_equal(rows.combine(ys, weights), batched)
    for t in range(9):
        np.testing.assert_array_equal(moe(experts[t:t + 1], weights[t:t + 1], [t])[0], batched[t])


BACKENDS = ["reference", "planes", "ort", "tvm"]
_KERNELS: dict = {}


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("t", [1, 3, 16])
def test_every_backends_grouped_call_equals_one_run_per_expert(demo_package, name, t):
    """Mixed levels in one call, rows from 1 to a bucket's size: each backend's ``run_group`` gives
    exactly what its ``run`` gives expert by expert."""
    from edgemoe.package.record_store import ExpertStore

    pkg = Package(demo_package)
    load = None
    if name == "tvm":
        from edgemoe.backends.tvm import tvm_missing_reason
        if tvm_missing_reason() is not None:
            pytest.skip(f"apache-tvm is not installed: {tvm_missing_reason()}")
        from edgemoe.backends.tvm.backend import TvmBackend, jit_kernels
        be = TvmBackend()
        if "tvm" not in _KERNELS:      # this CPU's kernels, compiled once for the module
            _KERNELS["tvm"] = jit_kernels(pkg.arch.hidden_size, pkg.arch.intermediate_size, pkg.quant)
        ks = _KERNELS["tvm"]

        def load(layer, e, bits, buf):
            return be.bind(ks, pkg.layout, bits, buf)
    else:
        be = get_backend(name)
    load = load or (lambda layer, e, bits, buf: be.load(pkg, layer, e, bits, buf))
    store = ExpertStore(pkg)
    ladder = pkg.quant.ladder
    experts, _ = _routing(t, pkg.arch.top_k, pkg.arch.num_experts, t)
    rows = ExpertRows.of(experts)
    handles = [load(0, int(e), ladder[i % len(ladder)], store.read(0, int(e), ladder[i % len(ladder)]))
               for i, e in enumerate(rows.ids)]
    xs = rows.gather(np.random.default_rng(t).standard_normal((t, pkg.arch.hidden_size)).astype(np.float32))
    want = np.full_like(xs, np.nan)
    run_each(be, handles, xs, rows.bounds, want)
    got = run_group(be, handles, xs, rows.bounds, np.full_like(xs, np.nan))
    assert hasattr(be, "run_group") == (name in ("ort", "tvm"))
    np.testing.assert_array_equal(got, want)


def test_threads_share_the_experts_and_give_the_same_tokens(demo_package):
    """``threads=2`` (the grouped call splits a layer's experts between two threads, the dense
    graphs get two intra-op threads): the same greedy tokens as one thread, logits within 1e-5."""
    from edgemoe.runtime.engine import Runtime

    out = {}
    for t in (1, 2):
        rt = Runtime(demo_package, threads=t)
        try:
            assert rt.backend.threads == t
            r = rt.generate("In the beginning", max_new_tokens=12, stop_at_eos=False)
            out[t] = (r.ids, rt.forward(rt.encode("And God said")))
            if t == 2:
                assert rt.backend._pool is not None          # the experts did run on two threads
        finally:
            rt.close()
    assert out[1][0] == out[2][0]
    np.testing.assert_allclose(out[2][1], out[1][1], atol=1e-5 * np.abs(out[1][1]).max())
