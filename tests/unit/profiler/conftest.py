"""Shared fixtures: the built-in demo package (exported once into a temp folder) and one short
recorded run of it, with its trace carrying the profiler's meta."""
from __future__ import annotations

import pytest

from edgemoe.demo import ASSET

PROMPTS = ("In the beginning God created the heavens and the earth.",
           "And the LORD spoke to Moses, saying,")


@pytest.fixture(scope="session")
def demo_pkg(tmp_path_factory):
    if not (ASSET / "config.json").exists():
        pytest.skip("the built-in model is not in this checkout")
    from edgemoe.exporters.export import export
    return export(ASSET, tmp_path_factory.mktemp("profiler-demo") / "demo.edgemoe")


@pytest.fixture(scope="session")
def recorded(demo_pkg, tmp_path_factory):
    """(RunRecord, trace path) of a 50% run: two prompts, 8 decode steps each, in this process."""
    from edgemoe.devices import HOST, get_device
    from edgemoe.profiler.recorder import RunConfig, record
    from edgemoe.profiler.sweep import trace_meta
    from edgemoe.profiler.workload import write_meta

    trace = tmp_path_factory.mktemp("profiler-trace") / "t.jsonl"
    rec = record(RunConfig(str(demo_pkg), "50%", PROMPTS, new_tokens=8, trace=str(trace)))
    write_meta(trace, trace_meta(rec, get_device(HOST)), keep_steps=len(rec.steps))
    return rec, trace
