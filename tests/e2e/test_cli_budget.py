"""`edgemoe run/eval --budget` as a user runs them: streaming output, JSON stats, Ctrl-C."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from edgemoe.demo import ASSET
from edgemoe.exporters.export import export


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    if not (ASSET / "config.json").exists():
        pytest.skip("the built-in model is not in this checkout")
    return export(ASSET, tmp_path_factory.mktemp("cli") / "demo.edgemoe")


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "edgemoe.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300, **kw)


def test_run_under_budget_json(pkg, tmp_path):
    trace = tmp_path / "t.jsonl"
    p = _cli("run", pkg, "--prompt", "In the beginning", "--max-new-tokens", "8", "--greedy",
             "--budget", "50%", "--level", "auto", "--trace", trace, "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    st = out["stats"]
    assert len(out["ids"]) == 8 and out["text"]
    assert st["cache_peak_bytes"] <= st["budget"]["experts"]
    assert set(st["level_mix"]) <= {"2", "4", "8"}
    assert len(trace.read_text().splitlines()) > 1


def test_budget_below_minimum_is_refused(pkg):
    p = _cli("run", pkg, "--prompt", "x", "--budget", "4MiB")
    assert p.returncode == 2
    assert "minimum" in p.stderr and "Traceback" not in p.stderr


def test_eval_under_budget(pkg):
    p = _cli("eval", pkg, "--text", ASSET / "heldout.txt", "--max-tokens", "600", "--budget", "50%",
             "--level", "auto", "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["tokens"] > 500 and 1 < r["perplexity"] < 1000


def test_ctrl_c_stops_cleanly(pkg):
    proc = subprocess.Popen([sys.executable, "-m", "edgemoe.cli", "run", str(pkg), "--prompt",
                             "In the beginning", "--max-new-tokens", "100000", "--budget", "25%"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not proc.stdout.read(1):
            pass
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130
    assert "Traceback" not in err
