"""The budgeted runtime on a tiny random Mixtral: exactness, the byte bound, traces and faults."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import tiny_models  # noqa: E402
from edgemoe.errors import BudgetError, ConfigError, CorruptRecordError  # noqa: E402
from edgemoe.exporters.export import export  # noqa: E402
from edgemoe.runtime.engine import Runtime  # noqa: E402
from edgemoe.runtime.trace import accesses, heat_profile, read_trace  # noqa: E402

IDS = list(range(3, 40))          # 24-token prefill + 13 decode steps


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    d = tmp_path_factory.mktemp("budget")
    tiny_models.build("mixtral", d / "hf", num_hidden_layers=3, num_local_experts=8)
    return export(d / "hf", d / "m.edgemoe")


def _run(rt):
    out = [rt.forward(IDS[:24])]
    out += [rt.forward([t]) for t in IDS[24:]]
    return np.concatenate(out)


@pytest.fixture(scope="module")
def resident(pkg):
    return _run(Runtime(pkg, level=8, backend="planes"))


@pytest.mark.parametrize("policy", ["hebf", "lru", "lfu"])
@pytest.mark.parametrize("budget", ["25%", "50%", "75%"])
def test_level8_identical_to_resident_and_cache_bounded(pkg, resident, policy, budget):
    rt = Runtime(pkg, level=8, budget=budget, policy=policy)
    got = _run(rt)
    st = rt.stats()
    rt.close()
    assert np.array_equal(got, resident)
    assert st["cache_peak_bytes"] <= st["budget"]["experts"]
    assert st["level_mix"] and set(st["level_mix"]) == {8}
    if budget == "25%":
        assert st["hit_rate"] < 1.0        # the budget really forces misses


def test_trace_replays_with_belady_and_static(pkg, resident, tmp_path):
    trace = tmp_path / "t.jsonl"
    rt = Runtime(pkg, level=8, budget="50%", policy="lru", trace=trace)
    _run(rt)
    lru_bytes = rt.stats()["expert_bytes_read"]
    rt.close()
    header, records = read_trace(trace)
    assert header["policy"] == "lru" and len(records) == 3 * (1 + len(IDS) - 24)
    assert sum(r["bytes"] for r in records) == lru_bytes
    for name, args in (("belady", {"future": accesses(records)}),
                       ("static", {"profile": heat_profile(records)})):
        rt = Runtime(pkg, level=8, budget="50%", policy=name, policy_args=args)
        assert np.array_equal(_run(rt), resident)
        if name == "belady":
            assert rt.stats()["expert_bytes_read"] <= lru_bytes    # the optimum reads no more
        rt.close()


def test_prefill_reads_each_expert_once_per_layer(pkg):
    rt = Runtime(pkg, level=8, budget="100%", prefetch=False)
    rt.forward(IDS[:24])
    distinct = sum(len(np.unique(r)) for r in rt.last_routing)
    assert rt.stats()["expert_bytes_read"] == distinct * rt.pkg.layout.prefix_length(8)
    rt.close()


def test_auto_levels_under_budget_and_errors(pkg):
    rt = Runtime(pkg, level="auto", budget="30%")
    _run(rt)
    mix = rt.stats()["level_mix"]
    assert set(mix) <= {2, 4, 8} and sum(mix.values()) > 0
    rt.close()
    with pytest.raises(ConfigError, match="budget"):
        Runtime(pkg, level="auto")
    with pytest.raises(BudgetError, match="minimum"):
        Runtime(pkg, budget="1MiB")
    with pytest.raises(BudgetError, match="1.5GiB"):
        Runtime(pkg, budget="lots")


def test_tokens_beyond_the_reserved_context_are_refused(pkg):
    """The budget reserved KV for ``context`` tokens; a longer sequence would break it silently."""
    rt = Runtime(pkg, level=8, budget="50%", context=30)
    rt.forward(IDS[:24])
    rt.forward(IDS[24:30])                                 # exactly the context: fine
    with pytest.raises(BudgetError, match="30-token context.*--context"):
        rt.forward([IDS[30]])
    rt.close()


def test_slow_disk_only_slows(pkg, resident):
    rt = Runtime(pkg, level=8, budget="25%", read_delay_s=0.002)
    assert np.array_equal(_run(rt), resident)
    rt.close()


def test_corrupt_record_mid_run_is_a_typed_error(pkg, tmp_path):
    import shutil
    bad = tmp_path / "bad.edgemoe"
    shutil.copytree(pkg, bad)
    rec = bad / "experts/L002/records.bin"
    data = bytearray(rec.read_bytes())
    data[len(data) // 2] ^= 0xFF
    rec.write_bytes(bytes(data))
    rt = Runtime(bad, level=8, budget="25%", prefetch=False)
    with pytest.raises(CorruptRecordError, match=r"L002/records.bin: layer 2 expert \d+"):
        _run(rt)
    rt.close()


@pytest.mark.parametrize("policy", ["lru", "hebf"])
def test_replay_matches_the_engine_bytes(pkg, tmp_path, policy):
    """The trace replay (no model run) reads what the engine read, byte for byte."""
    from edgemoe.schedulers import make_policy
    from edgemoe.schedulers.replay import replay, steps_from_trace

    trace = tmp_path / "t.jsonl"
    rt = Runtime(pkg, level=8, budget="40%", policy=policy, prefetch=False, trace=trace)
    _run(rt)
    real, cap = rt.stats()["expert_bytes_read"], rt.budget_plan.experts
    rt.close()
    _, records = read_trace(trace)
    p = rt.pkg
    pol = make_policy(policy, experts=sorted(p.experts))
    got = replay(pol, steps_from_trace(records), cap, p.quant.ladder,
                 tuple(c.length for c in p.layout.chunks), level=8, top_k=p.arch.top_k)
    assert got.bytes_total == real


@pytest.mark.parametrize("backend", ["ort", "reference"])
def test_backends_that_copy_weights_are_refused_under_a_budget(pkg, backend):
    with pytest.raises(ConfigError, match="planes, tvm or hls"):
        Runtime(pkg, budget="50%", backend=backend)
