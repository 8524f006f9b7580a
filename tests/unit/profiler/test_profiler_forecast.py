"""The timing model on synthetic workloads (exact answers), and host timings recovered from events."""
from __future__ import annotations

import pytest

from edgemoe.devices import HOST, get_device, parse_profile
from edgemoe.errors import BudgetError
from edgemoe.profiler.forecast import forecast
from edgemoe.profiler.recommend import recommend
from edgemoe.profiler.recorder import RunRecord
from edgemoe.profiler.simulate import simulate
from edgemoe.profiler.timing import host_timing
from edgemoe.profiler.workload import Workload

CHUNKS = [4096, 4096, 8192]
EXPERT = sum(CHUNKS)
MS = 1e-3


def workload(steps=200, timing=None, experts=4, policy="lru", level=8) -> Workload:
    facts = {"num_layers": 2, "moe_layers": [0, 1], "num_experts": experts, "top_k": 1,
             "hidden_size": 64, "intermediate_size": 128, "ladder": [2, 4, 8], "chunk_bytes": CHUNKS,
             "expert_bytes": {"2": 2 * experts * 4096, "4": 2 * experts * 8192,
                              "8": 2 * experts * EXPERT},
             "dense_bytes": 10_000, "expert_flops": 2 * 3 * 64 * 128}
    t = {"dense_decode_layers": {"0": MS, "1": MS}, "dense_decode": 2 * MS, "dense_slope": 0.0,
         "overhead_decode": MS, "overhead_per_read": 0.0, "overhead_slope": 0.0,
         "compute": {"8": 2 * MS}, "compute_slope": 0.0, "read_latency": MS, "read_bandwidth": None,
         "reads": 100, "read_sizes": {}, "read_dispatch": 0.0, "contention": 0.0, "io_threads": 2, **(timing or {})}
    # decode steps; each layer routes its token to expert (step + layer) % 4
    st = tuple(("decode", 1, tuple((layer, ((int((s + layer) % experts), 1),)) for layer in (0, 1)))
               for s in range(steps))
    return Workload(package_id="p", facts=facts,
                    plan={"dense": 1_000_000, "kv_cache": 0, "work": 0, "context": 64,
                          "budget": 0, "experts": 0, "minimum": 0},
                    config={"budget": "50%", "policy": policy, "level": level}, timing=t,
                    host=get_device(HOST).to_dict(), steps=st, records=(), prefetch_recall=None,
                    rss={})


def test_everything_resident_is_dense_plus_overhead_plus_compute():
    wl = workload()
    f = forecast(wl, get_device(HOST), capacity=8 * EXPERT)
    # per step: 2 dense (1 ms) + overhead (1 ms) + 2 experts (2 ms); only the first 4 steps miss
    assert f["decode_tokens_per_s"] == pytest.approx(1 / (7 * MS), rel=0.03)
    assert f["hit_rate"] > 0.95 and f["stall_share"] < 0.03
    assert f["level_mix"] == {"8": 400}


def test_a_small_cache_reads_every_step_and_stalls():
    wl = workload()
    full = forecast(wl, get_device(HOST), capacity=8 * EXPERT)
    small = forecast(wl, get_device(HOST), capacity=2 * EXPERT)
    assert small["bytes_per_token"] == pytest.approx(2 * EXPERT, rel=0.05)   # one expert per layer
    assert small["stall_share"] > 0.2
    # each miss: 3 chunk reads of 1 ms on 2 threads -> the expert waits 2 ms
    step_s = 1 / small["decode_tokens_per_s"]
    assert step_s == pytest.approx(7 * MS + 2 * 2 * MS, rel=0.05)
    assert small["decode_tokens_per_s"] < full["decode_tokens_per_s"]


def test_contention_slows_compute_that_overlaps_reads():
    """A layer with one resident expert (computed first, under the other's reads) and one miss."""
    from edgemoe.profiler.forecast import Model, Timeline
    from edgemoe.profiler.simulate import LayerPlan, StepPlan

    lp = LayerPlan(0, reads=[((0, 1), 0, 4096)], compute=[(0, 8, 1, True), (1, 8, 1, False)])
    sp = StepPlan("decode", 1, [lp], 0)
    for kappa, expect in ((0.0, 4 * MS), (0.5, 4.5 * MS)):
        m = Model({0: 0.0}, 0.0, 0.0, 0.0, 0.0, {8: 2 * MS}, 0.0, MS, None, None, kappa, 2)
        r = Timeline(m).step(sp, [0], {0})
        # expert 0 runs 0-2 ms while the 1 ms read runs: + kappa * 1 ms; expert 1 then runs 2 ms
        assert r["seconds"] == pytest.approx(expect) and r["stall"] == 0.0


def test_a_device_scales_compute_by_throughput_and_reads_by_its_storage():
    host = get_device(HOST)
    d = host.to_dict()
    d.update(name="twice-as-fast")
    d["compute"] = {k: 2 * v for k, v in d["compute"].items()}
    d["memory"]["bandwidth"] = 1e15
    fast = parse_profile(d, "test")
    f = forecast(workload(), fast, capacity=8 * EXPERT)
    step_s = 1 / f["decode_tokens_per_s"]
    assert step_s == pytest.approx(3.5 * MS, rel=0.03)
    d["storage"].update(read_bandwidth=4096 / MS, read_latency=0.0, verify_bandwidth=1e15)
    d["compute"] = dict(host.compute)
    slow_disk = parse_profile({**d, "name": "sd"}, "test")
    g = forecast(workload(), slow_disk, capacity=2 * EXPERT)
    # 16 KiB per miss through a 4 KiB/ms disk: the second expert of each layer waits 4 ms
    step_s = 1 / g["decode_tokens_per_s"]
    assert step_s == pytest.approx(7 * MS + 2 * 4 * MS, rel=0.05)


def test_memory_bandwidth_floors_the_compute():
    d = get_device(HOST).to_dict()
    d.update(name="narrow")
    d["memory"]["bandwidth"] = EXPERT / (10 * MS)     # streaming one expert takes 10 ms
    f = forecast(workload(), parse_profile(d, "test"), capacity=8 * EXPERT)
    step_s = 1 / f["decode_tokens_per_s"]
    assert step_s > 2 * 10 * MS


def test_simulated_bytes_fall_as_the_cache_grows():
    wl = workload(experts=8)
    per_step = []
    for cap in (EXPERT, 8 * EXPERT, 16 * EXPERT):     # lru on a cycle of 8 per layer: 16 to hit
        plans = simulate(wl, cap)
        per_step.append(sum(n for sp in plans for lp in sp.layers for _, _, n in lp.reads + lp.prefetch))
        assert max(sp.cache_used for sp in plans) <= cap
    assert per_step[0] >= per_step[1] > per_step[2]


def test_auto_levels_use_low_bits_under_a_small_cache():
    wl = workload(policy="hebf", level="auto")
    f = forecast(wl, get_device(HOST), capacity=3 * EXPERT)
    assert set(f["level_mix"]) - {"8"}                 # some experts computed below 8 bits
    assert any("never ran" in n for n in f["notes"])   # and it says those times are scaled


def test_resolve_budget_and_minimum():
    wl = workload()
    total, cap = wl.resolve_budget("50%")
    assert cap == 8 * EXPERT // 2 and total == 1_000_000 + cap
    with pytest.raises(BudgetError, match="minimum"):
        wl.resolve_budget("1000000")


def test_recommend_picks_the_smallest_budget_that_reaches_the_rate():
    wl = workload()
    host = get_device(HOST)
    full = forecast(wl, host, 8 * EXPERT)["decode_tokens_per_s"]
    r = recommend(wl, host, 0.9 * full)
    assert r["reached"] and r["decode_tokens_per_s"] >= 0.9 * full
    assert r["budget_bytes"] <= wl.fixed_bytes + 8 * EXPERT
    slower = recommend(wl, host, 0.5 * full)
    assert slower["budget_bytes"] <= r["budget_bytes"]
    none = recommend(wl, host, 10 * full)
    assert not none["reached"] and "no budget" in none["message"]


def _record(reads_overlap: bool) -> RunRecord:
    """Synthetic events: decode steps of 2 layers (1 ms dense, one 2 ms expert each); every other
    step one 1 ms read overlaps the second expert, which then takes 2.5 ms (contention 0.5)."""
    events, steps, t = [], [], 0.0
    for s in range(20):
        t0 = t
        for layer in (0, 1):
            events.append(("dense", t, t + MS, s, layer, -1, 0, 0))
            t += MS + 0.5 * MS                                         # 0.5 ms overhead
            dur = 2 * MS
            if reads_overlap and s % 2 and layer == 1:
                events.append(("read", t, t + MS, -1, layer, 3, 8, 4096))
                dur = 2.5 * MS
            events.append(("compute", t, t + dur, s, layer, s % 4, 8, 1))
            t += dur
        steps.append(["decode", 1, t0, t])
    return RunRecord(config={}, package_id="p", plan={}, stats={}, steps=steps, events=events,
                     rss={})


def test_host_timing_recovers_the_parts():
    t = host_timing(_record(True))
    assert t["dense_decode_layers"]["0"] == pytest.approx(MS)
    assert t["compute"]["8"] == pytest.approx(2 * MS)                 # from calls no read overlapped
    assert t["contention"] == pytest.approx(0.5, abs=0.01)
    assert t["overhead_decode"] == pytest.approx(MS, rel=0.05)
    assert host_timing(_record(False))["contention"] is None          # nothing to tell it from
