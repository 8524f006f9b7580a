"""Device profiles: the shipped boards load, every number cites a source, bad files name the field."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from edgemoe.devices import BUILTIN_DIR, HOST, get_device, load_devices, load_profile, parse_profile
from edgemoe.errors import DeviceProfileError

BOARDS = ("jetson-orin-nano-8gb", "jetson-orin-nx-16gb", "jetson-agx-orin-64gb", "raspberry-pi-5-8gb",
          "rk3588-mali-g610", "kv260", HOST)
NUMERIC_SECTIONS = ("memory", "storage", "cpu", "compute")


@pytest.fixture(autouse=True)
def _no_user_profiles(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEMOE_DEVICES", str(tmp_path / "user-devices"))


def test_the_boards_the_issue_names_ship():
    devs = load_devices()
    for name in BOARDS:
        assert name in devs, name
    fpga = [d for d in devs.values() if d.targets.hls_part]
    assert fpga and fpga[0].name == "kv260"
    mali = devs["rk3588-mali-g610"]
    assert "mali" in (mali.targets.tvm_target or "")
    nano = devs["jetson-orin-nano-8gb"]
    assert nano.memory_total == 8 * 2**30 and nano.memory_bandwidth == 68e9
    assert "TensorrtExecutionProvider" in nano.targets.ort_providers
    assert not devs[HOST].calibrated          # built-in defaults say so


def test_every_number_cites_its_source_in_a_comment():
    for f in sorted(BUILTIN_DIR.glob("*.yaml")):
        section = None
        for line in f.read_text().splitlines():
            if re.match(r"^\w", line):
                section = line.split(":")[0]
            m = re.match(r"^\s+(\w[\w-]*):\s*([^#]+?)\s*(#.*)?$", line)
            if section in NUMERIC_SECTIONS and m and re.match(r"^[\d.]", m.group(2)):
                assert m.group(3), f"{f.name}: {section}.{m.group(1)} has no source comment"


def test_profiles_ship_in_the_wheel():
    text = (Path(__file__).parents[3] / "pyproject.toml").read_text()
    assert "device_profiles/*.yaml" in text


@pytest.mark.parametrize("patch, field", [
    ({"storage": {"read_bandwidth": "fast"}}, "storage.read_bandwidth"),
    ({"memory": {"total": "lots"}}, "memory.total"),
    ({"compute": {"ort": 3}}, "compute.planes"),
    ({"cpu": {"cores": "six"}}, "cpu.cores"),
    ({"cpu": {"io_contention": -1}}, "cpu.io_contention"),
    ({"storage": {"read_latency": "soon"}}, "storage.read_latency"),
])
def test_a_bad_file_names_the_field(tmp_path, patch, field):
    data = yaml.safe_load((BUILTIN_DIR / "kv260.yaml").read_text())
    for k, v in patch.items():
        data[k] = {**data[k], **v} if k != "compute" else v
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(DeviceProfileError) as e:
        load_profile(bad)
    assert field in str(e.value) and "bad.yaml" in str(e.value)


def test_missing_field_and_broken_yaml(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("name: x\nmemory: {total: 1GiB}\ncompute: {ort: 1, planes: 1}\n")
    with pytest.raises(DeviceProfileError, match="memory.bandwidth"):
        load_profile(f)
    f.write_text("name: [unclosed\n")
    with pytest.raises(DeviceProfileError, match="not valid YAML"):
        load_profile(f)


def test_user_files_add_boards_and_override_host(tmp_path, monkeypatch):
    user = tmp_path / "user-devices"
    user.mkdir()
    data = yaml.safe_load((BUILTIN_DIR / "raspberry-pi-5-8gb.yaml").read_text())
    data["name"] = "my-board"
    (user / "mine.yaml").write_text(yaml.safe_dump(data))
    data = yaml.safe_load((BUILTIN_DIR / "host.yaml").read_text())
    data["calibrated"] = True
    (user / "host.yaml").write_text(yaml.safe_dump(data))
    devs = load_devices()
    assert "my-board" in devs and devs[HOST].calibrated
    extra = tmp_path / "extra"
    extra.mkdir()
    data["name"] = "lab-board"
    (extra / "lab.yml").write_text(yaml.safe_dump(data))
    assert get_device("lab-board", extra).name == "lab-board"


def test_unknown_device_lists_the_known_ones():
    with pytest.raises(DeviceProfileError) as e:
        get_device("jetson-nanoo")
    msg = str(e.value)
    assert "unknown device 'jetson-nanoo'" in msg
    for name in BOARDS:
        assert name in msg


def test_round_trip_and_read_model():
    d = get_device("raspberry-pi-5-8gb")
    assert parse_profile(d.to_dict(), d.source) == d
    small, big = d.read_seconds(4096), d.read_seconds(4 << 20)
    assert small >= d.storage.read_latency and big > 40 * small      # SD card: bandwidth-bound
    with pytest.raises(DeviceProfileError, match="compute.tvm"):
        d.throughput("tvm")
