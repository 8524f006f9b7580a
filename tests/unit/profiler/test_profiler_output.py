"""The report folder: PNGs that are real plots, all-or-nothing writes, matplotlib as an option."""
from __future__ import annotations

import json
import sys

import pytest

from edgemoe.errors import ConfigError
from edgemoe.profiler import sweep
from edgemoe.profiler.output import Staging, check_out
from edgemoe.profiler.sweep import ProfileRequest, run_profile

from conftest import PROMPTS

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report(demo_pkg, tmp_path_factory):
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("prof") / "report"
    req = ProfileRequest(package=str(demo_pkg), device="jetson-orin-nano-8gb", budgets=("25%", "75%"),
                         prompts=PROMPTS, new_tokens=4, out=str(out), isolate=False, target_tps=1.0)
    return run_profile(req), out


def test_report_folder_contents(report):
    rep, out = report
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["heat.png", "report.json", "report.txt", "throughput_memory.png",
                            "timeline_hebf-25pct.png", "timeline_hebf-75pct.png", "traces"])
    assert json.loads((out / "report.json").read_text())["device"]["name"] == "jetson-orin-nano-8gb"
    assert "FORECAST for jetson-orin-nano-8gb" in (out / "report.txt").read_text()
    assert rep["recommendation"]["reached"]
    assert not list(out.parent.glob(".report.partial-*"))


@pytest.mark.parametrize("name, min_px", [("throughput_memory.png", (400, 1000)),
                                          ("timeline_hebf-25pct.png", (300, 1000)),
                                          ("heat.png", (300, 1000))])
def test_pngs_are_plots(report, name, min_px):
    import matplotlib.image as mpimg
    import numpy as np
    _, out = report
    data = (out / name).read_bytes()
    assert data[:8] == PNG and len(data) > 10_000
    img = mpimg.imread(out / name)
    assert img.shape[0] >= min_px[0] and img.shape[1] >= min_px[1]
    assert np.unique(img.reshape(-1, img.shape[-1]), axis=0).shape[0] > 20     # not blank


def test_a_failure_midway_leaves_nothing(demo_pkg, tmp_path, monkeypatch):
    calls = []

    def flaky(cfg, progress=None):
        calls.append(cfg.budget)
        if len(calls) == 2:
            raise ConfigError("simulated failure in the second run")
        return real(cfg, progress)
    real = sweep.record
    monkeypatch.setattr(sweep, "record", flaky)
    out = tmp_path / "new" / "parents" / "out"
    req = ProfileRequest(package=str(demo_pkg), budgets=("50%", "75%"), prompts=PROMPTS[:1],
                         new_tokens=2, out=str(out), isolate=False, plots=False)
    with pytest.raises(ConfigError, match="simulated"):
        run_profile(req)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_staging_commits_into_an_existing_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    s = Staging(out)
    s.path("a/b.txt").write_text("y")
    s.commit()
    assert (out / "keep.txt").exists() and (out / "a" / "b.txt").read_text() == "y"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_unwritable_out_is_refused_before_anything(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(ConfigError, match="is a file"):
        check_out(f / "sub" / "dir")
    with pytest.raises(ConfigError, match="is a file"):
        check_out(f)


def test_plots_without_matplotlib_say_how_to_install(monkeypatch):
    from edgemoe.profiler.plots import require_matplotlib
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ConfigError, match=r"pip install 'edgemoe\[plot\]'"):
        require_matplotlib()
