"""`edgemoe calibrate`: measures this machine into a host profile that loads and is used."""
from __future__ import annotations

import pytest

from edgemoe.devices import HOST, get_device, load_profile
from edgemoe.errors import ConfigError
from edgemoe.profiler.calibrate import calibrate


def test_calibrate_writes_a_host_profile(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEMOE_DEVICES", str(tmp_path / "devices"))
    stages = []
    path, m = calibrate(folder=tmp_path / "disk", size=8 << 20, progress=stages.append)
    assert path == tmp_path / "devices" / "host.yaml"
    assert stages == ["storage", "memory", "expert and dense kernels"]
    p = load_profile(path)
    assert p.name == HOST and p.calibrated
    assert p.storage.read_bandwidth > 1e6 and 0 < p.storage.read_latency < 0.1
    assert p.memory_bandwidth > 1e8 and p.throughput("ort") > 0.01
    assert p.throughput("planes_2") > 0 and p.throughput("planes_8") == p.throughput("planes")
    assert get_device(HOST).calibrated                   # the user file overrides the defaults
    assert "# " in path.read_text().splitlines()[0]      # says how it was measured
    assert not list((tmp_path / "disk").iterdir())       # the temp file is gone
    assert not [f for f in (tmp_path / "devices").iterdir() if f.name != "host.yaml"]


def test_calibrate_refuses_an_unwritable_target(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot write the host profile"):
        calibrate(folder=tmp_path, out_dir=blocker / "devices", size=8 << 20)
