"""Measured runs of the demo package: metrics, the trace and its meta, the cache replay against the
runtime's own bytes, isolation (peak RSS seen from outside), and refusals."""
from __future__ import annotations

import json

import pytest

from edgemoe.devices import HOST, get_device
from edgemoe.errors import BudgetError, ConfigError
from edgemoe.profiler.forecast import forecast
from edgemoe.profiler.metrics import decode_step_timeline, summarize
from edgemoe.profiler.recorder import RunConfig, record, run_isolated
from edgemoe.profiler.simulate import simulate
from edgemoe.profiler.workload import load_workload, package_id
from edgemoe.runtime.trace import read_trace

from conftest import PROMPTS


def test_summary_of_a_measured_run(recorded):
    rec, _ = recorded
    m = summarize(rec)
    assert m["prompts"] == 2 and m["decode_steps"] == 16
    assert m["decode_tokens_per_s"] > 0 and m["prefill_tokens_per_s"] > 0
    assert 0 < m["time_to_first_token_s"] < 10
    assert 0 <= m["hit_rate"] <= 1 and 0 <= m["stall_share"] < 1
    assert m["runtime_peak_bytes"] <= m["budget_bytes"]            # the budget holds
    assert m["peak_rss_bytes"] > m["rss_base_bytes"] > 0
    assert m["level_mix"] == {"8": 1.0}


def test_trace_carries_the_meta_and_replays(recorded, demo_pkg):
    rec, trace = recorded
    header, records = read_trace(trace)
    assert header["profile"]["facts"]["num_experts"] == 8
    assert {r["step"] for r in records} == set(range(len(rec.steps)))
    wl = load_workload(trace, expect_package=package_id(__import__("edgemoe").Package(demo_pkg)))
    assert [s[0] for s in wl.steps] == [s[0] for s in rec.steps]
    # the replay at the recorded cache size reads what the runtime read (routing is the same)
    plans = simulate(wl, rec.plan["experts"])
    sim_bytes = sum(n for sp in plans for lp in sp.layers for _, _, n in lp.reads + lp.prefetch)
    assert sim_bytes == pytest.approx(rec.stats["expert_bytes_read"], rel=0.15)
    f = forecast(wl, get_device(HOST), rec.plan["experts"], timeline_step=0)
    measured = summarize(rec)["decode_tokens_per_s"]
    assert 0.5 < f["decode_tokens_per_s"] / measured < 2.0
    assert {s[0] for s in f["timeline"]} >= {"compute"}


def test_package_id_matches_the_runtime(demo_pkg):
    from edgemoe import Package, Runtime
    rt = Runtime(demo_pkg, level=8)
    try:
        assert package_id(Package(demo_pkg)) == rt.package_id
    finally:
        rt.close()


def test_replay_refusals(recorded, tmp_path):
    _, trace = recorded
    with pytest.raises(ConfigError, match="another package"):
        load_workload(trace, expect_package="something else")
    lines = trace.read_text().splitlines()
    header = json.loads(lines[0])
    del header["profile"]
    plain = tmp_path / "plain.jsonl"
    plain.write_text("\n".join([json.dumps(header)] + lines[1:]) + "\n")
    with pytest.raises(ConfigError, match="edgemoe profile"):
        load_workload(plain)


def test_timeline_of_a_measured_step(recorded):
    rec, _ = recorded
    k, segs = decode_step_timeline(rec)
    assert k >= 0
    kinds = {s[1] for s in segs}
    assert {"dense", "expert"} <= kinds
    assert all(0 <= s[2] <= s[3] for s in segs)


def test_eval_text_adds_perplexity_and_stays_out_of_the_trace(demo_pkg, tmp_path):
    from edgemoe.demo import ASSET
    from edgemoe.profiler.sweep import trace_meta
    from edgemoe.profiler.workload import write_meta
    trace = tmp_path / "e.jsonl"
    rec = record(RunConfig(str(demo_pkg), "75%", PROMPTS[:1], new_tokens=2, trace=str(trace),
                           eval_text=str(ASSET / "heldout.txt"), eval_tokens=80, eval_window=64))
    assert rec.eval["perplexity"] > 1 and rec.eval["perplexity"] < 1000
    assert len(rec.steps) == 3
    write_meta(trace, trace_meta(rec, get_device(HOST)), keep_steps=len(rec.steps))
    assert {r["step"] for r in read_trace(trace)[1]} == {0, 1, 2}


def test_isolated_run_reports_peak_rss_seen_from_outside(demo_pkg):
    rec = run_isolated(RunConfig(str(demo_pkg), "50%", PROMPTS[:1], new_tokens=2))
    assert rec.rss["peak"] == pytest.approx(rec.rss["outside_peak"], rel=0.10)
    with pytest.raises(BudgetError, match="minimum"):
        run_isolated(RunConfig(str(demo_pkg), "1MiB", PROMPTS[:1], new_tokens=2))
