"""`edgemoe devices / calibrate / profile` as a user runs them, on the built-in demo model."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edgemoe.demo import ASSET

BOARDS = ("jetson-orin-nano-8gb", "jetson-orin-nx-16gb", "jetson-agx-orin-64gb", "raspberry-pi-5-8gb",
          "rk3588-mali-g610", "kv260", "host")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-profile")
    return dict(os.environ, EDGEMOE_CACHE=str(d / "cache"), EDGEMOE_DEVICES=str(d / "devices"))


@pytest.fixture(scope="module")
def pkg(env):
    if not (ASSET / "config.json").exists():
        pytest.skip("the built-in model is not in this checkout")
    p = subprocess.run([sys.executable, "-c", "from edgemoe.demo import builtin_package; "
                        "print(builtin_package())"], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    f = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    f.write_text("In the beginning God created the heavens and the earth.\n\n"
                 "And the LORD spoke to Moses, saying,\n")
    return f


def _cli(env, *args):
    return subprocess.run([sys.executable, "-m", "edgemoe.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def profiled(env, pkg, prompts, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "prof"
    p = _cli(env, "profile", pkg, "--budgets", "25%,75%", "--prompts", prompts, "--new-tokens", 4,
             "--out", out)
    return p, out


def test_devices_lists_the_boards(env):
    p = _cli(env, "devices")
    assert p.returncode == 0, p.stderr
    for name in BOARDS:
        assert name in p.stdout
    assert "edgemoe calibrate" in p.stdout               # host is uncalibrated here and says so
    d = json.loads(_cli(env, "devices", "--json").stdout)
    assert d["kv260"]["targets"]["hls_part"] and d["host"]["calibrated"] is False


def test_profile_measures_each_budget_and_writes_the_report(profiled):
    p, out = profiled
    assert p.returncode == 0, p.stderr
    assert "profiling" in p.stderr                       # the progress bar
    assert "measured on this machine" in p.stdout and "Traceback" not in p.stderr
    rep = json.loads((out / "report.json").read_text())
    assert [r["budget"] for r in rep["rows"]] == ["25%", "75%"]
    for r in rep["rows"]:
        m = r["measured"]
        assert m["decode_tokens_per_s"] > 0 and m["prefill_tokens_per_s"] > 0
        assert m["runtime_peak_bytes"] <= m["budget_bytes"]
        assert m["peak_rss_bytes"] == pytest.approx(m["outside_peak_rss_bytes"], rel=0.10)
    assert rep["rows"][0]["measured"]["bytes_per_token"] >= rep["rows"][1]["measured"]["bytes_per_token"]
    for name in ("throughput_memory.png", "heat.png", "timeline_hebf-25pct.png", "report.txt",
                 "traces/hebf-25pct.jsonl"):
        assert (out / name).is_file(), name


def test_profile_forecasts_a_board_as_json(env, pkg, prompts):
    p = _cli(env, "profile", pkg, "--device", "raspberry-pi-5-8gb", "--budgets", "50%", "--prompts",
             prompts, "--new-tokens", 3, "--json", "--in-process", "--target-tps", "0.5", "--level", "auto")
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    row = rep["rows"][0]
    assert row["measured"]["decode_tokens_per_s"] > 0
    assert row["forecast"]["decode_tokens_per_s"] > 0 and row["forecast"]["fits_device_memory"]
    assert any(n.startswith("FORECAST for raspberry-pi-5-8gb") for n in rep["notes"])
    assert rep["recommendation"]["reached"] and rep["recommendation"]["budget_bytes"] > 0


def test_replay_forecasts_from_the_trace_alone(env, profiled, pkg):
    _, out = profiled
    trace = out / "traces" / "hebf-25pct.jsonl"
    p = _cli(env, "profile", "--replay", trace, "--device", "jetson-orin-nano-8gb", "--budgets",
             "25%,50%,100%", "--json")
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert rep["mode"] == "replay" and len(rep["rows"]) == 3
    kib = [r["forecast"]["bytes_per_token"] for r in rep["rows"]]
    assert kib[0] >= kib[1] >= kib[2]
    p = _cli(env, "profile", pkg, "--replay", trace, "--device", "host")      # same package: fine
    assert p.returncode == 0, p.stderr
    assert "FORECAST" in p.stdout


def _refused(p, *words):
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    for w in words:
        assert w in p.stderr, (w, p.stderr)


def test_unknown_device_lists_the_known_ones(env, pkg, tmp_path):
    p = _cli(env, "profile", pkg, "--device", "jetson-nanoo", "--out", tmp_path / "o")
    _refused(p, "unknown device 'jetson-nanoo'", *BOARDS)
    assert not (tmp_path / "o").exists()


def test_budget_below_the_minimum(env, pkg, tmp_path):
    p = _cli(env, "profile", pkg, "--budgets", "50%,4MiB", "--out", tmp_path / "o")
    _refused(p, "minimum")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_out(env, pkg, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    p = _cli(env, "profile", pkg, "--budgets", "50%", "--out", blocker / "report")
    _refused(p, "cannot write to --out")
    assert [x.name for x in tmp_path.iterdir()] == ["file"]


def test_a_trace_from_another_package(env, pkg, profiled, tmp_path):
    from edgemoe.exporters.export import export
    from edgemoe.quant.spec import QuantSpec
    other = export(ASSET, tmp_path / "other.edgemoe", QuantSpec(group_size=32))
    _, out = profiled
    p = _cli(env, "profile", other, "--replay", out / "traces" / "hebf-25pct.jsonl",
             "--out", tmp_path / "o")
    _refused(p, "another package")
    assert not (tmp_path / "o").exists()


def test_a_plain_run_trace_says_how_to_record_one(env, pkg, tmp_path):
    trace = tmp_path / "run.jsonl"
    p = _cli(env, "run", pkg, "--prompt", "In the beginning", "--max-new-tokens", 2, "--greedy",
             "--budget", "50%", "--trace", trace)
    assert p.returncode == 0, p.stderr
    _refused(_cli(env, "profile", "--replay", trace), "edgemoe profile")
