"""Exports in parallel and resumed: ``--jobs`` and ``--resume`` give byte-identical packages, an
interrupted export never looks complete, a resumed one redoes only what is not verified."""
from __future__ import annotations

import hashlib

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import tiny_models  # noqa: E402
from edgemoe.errors import EdgeMoEError  # noqa: E402
from edgemoe.exporters import export as export_mod  # noqa: E402
from edgemoe.exporters.export import export  # noqa: E402
from edgemoe.package import constants as C  # noqa: E402
from edgemoe.quant.spec import QuantSpec  # noqa: E402


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    tiny_models.build("qwen3_moe", d / "hf", num_hidden_layers=4)
    return d / "hf"


def _digest(pkg):
    """sha256 of every file but the manifest (whose timestamp differs), by path."""
    return {str(f.relative_to(pkg)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(pkg.rglob("*")) if f.is_file() and f.name != C.MANIFEST}


@pytest.fixture(scope="module")
def reference(src, tmp_path_factory):
    return _digest(export(src, tmp_path_factory.mktemp("ref") / "p.edgemoe"))


def test_jobs_give_the_same_bytes(src, reference, tmp_path):
    stats = {}
    assert _digest(export(src, tmp_path / "p.edgemoe", jobs=2, stats=stats)) == reference
    assert stats["job_peak_rss"] > 0


def _interrupted(src, out, monkeypatch, after: int):
    """An export stopped (KeyboardInterrupt) when layer ``after`` starts."""
    real = export_mod.export_layer

    def stop(w, wmap, arch, layout, quant, dense, i, tick=lambda s: None):
        if i == after:
            raise KeyboardInterrupt
        return real(w, wmap, arch, layout, quant, dense, i, tick)
    monkeypatch.setattr(export_mod, "export_layer", stop)
    with pytest.raises(KeyboardInterrupt):
        export(src, out)
    monkeypatch.setattr(export_mod, "export_layer", real)


def test_an_interrupted_export_resumes_to_the_same_bytes(src, reference, tmp_path, monkeypatch):
    out = tmp_path / "p.edgemoe"
    _interrupted(src, out, monkeypatch, after=2)
    stage = tmp_path / ("p.edgemoe" + C.PARTIAL_SUFFIX)
    assert not out.exists() and not (stage / C.MANIFEST).exists()      # never looks complete
    assert (stage / C.JOURNAL).exists()
    stats = {}
    assert _digest(export(src, out, resume=True, stats=stats)) == reference
    assert stats["layers_resumed"] == 2
    assert not stage.exists() and not (out / C.JOURNAL).exists()


def test_a_damaged_finished_layer_is_redone(src, reference, tmp_path, monkeypatch):
    out = tmp_path / "p.edgemoe"
    _interrupted(src, out, monkeypatch, after=3)
    stage = tmp_path / ("p.edgemoe" + C.PARTIAL_SUFFIX)
    rec = stage / C.expert_dir(1) / C.RECORD_FILE
    data = bytearray(rec.read_bytes())
    data[100] ^= 0xFF
    rec.write_bytes(bytes(data))
    stats = {}
    assert _digest(export(src, out, resume=True, stats=stats)) == reference
    assert stats["layers_resumed"] == 2                  # layers 0 and 2 kept, 1 redone


def test_resume_with_other_settings_is_refused(src, tmp_path, monkeypatch):
    out = tmp_path / "p.edgemoe"
    _interrupted(src, out, monkeypatch, after=2)
    with pytest.raises(EdgeMoEError, match="without --resume"):
        export(src, out, QuantSpec(ladder=(4, 8)), resume=True)
    assert _digest(export(src, out)) is not None          # without --resume: starts over


def test_the_disk_is_checked_before_anything_is_written(src, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(1 << 20, 0, 1 << 10))
    with pytest.raises(EdgeMoEError, match="GiB free"):
        export(src, tmp_path / "p.edgemoe")
    assert not (tmp_path / "p.edgemoe").exists()
    assert not (tmp_path / ("p.edgemoe" + C.PARTIAL_SUFFIX)).exists()
