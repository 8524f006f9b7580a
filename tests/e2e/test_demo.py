"""`edgemoe demo` as a new user runs it: exports the built-in model once, then reuses the cache."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edgemoe.demo import ASSET


@pytest.fixture()
def env(tmp_path):
    if not (ASSET / "config.json").exists():
        pytest.skip("the built-in model is not in this checkout")
    return dict(os.environ, EDGEMOE_CACHE=str(tmp_path))


def _demo(env, *args):
    return subprocess.run([sys.executable, "-m", "edgemoe.cli", "demo", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_demo_streams_text_and_reports(env, tmp_path):
    p = _demo(env, "--max-new-tokens", "24")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("In the beginning")
    assert "tokens/s" in p.stdout and "peak RSS" in p.stdout and "hit rate" in p.stdout
    assert "= 50% of the model's" in p.stdout          # the default budget: half the model's size
    assert len(list(tmp_path.glob("tiny-moe-*.edgemoe"))) == 1


def test_demo_json_report_and_cache_reuse(env):
    first = json.loads(_demo(env, "--max-new-tokens", "8", "--greedy", "--json").stdout)
    again = json.loads(_demo(env, "--max-new-tokens", "8", "--greedy", "--json").stdout)
    assert first["package"] == again["package"]
    assert first["text"] == again["text"] and first["tokens"] == 8
    assert again["export_or_cache_s"] < first["export_or_cache_s"] or again["export_or_cache_s"] < 1
    assert first["expert_cache_bytes"] < first["package_expert_bytes"]      # really under a budget
    assert first["budget_bytes"] == first["model_bytes"] // 2
    assert set(first["level_mix"]) <= {"2", "4", "8"}
