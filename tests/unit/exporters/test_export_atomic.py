"""An interrupted export leaves no package that looks complete (its finished layers stay in the
staging folder for --resume); --overwrite replaces a package (and only a package); a later export
after a crash succeeds."""
from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402

import tiny_models  # noqa: E402
from edgemoe.cli import main  # noqa: E402
from edgemoe.errors import PackageError  # noqa: E402
from edgemoe.exporters import export as export_mod  # noqa: E402
from edgemoe.exporters.export import export  # noqa: E402
from edgemoe.package import constants as C  # noqa: E402
from edgemoe.package.reader import Package  # noqa: E402
from edgemoe.quant.spec import QuantSpec  # noqa: E402


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt") / "hf"
    tiny_models.build("mixtral", d)  # 2 layers, both MoE
    return d


def _interrupt_on_call(monkeypatch, name, n):
    """Make ``edgemoe.exporters.export.<name>`` raise KeyboardInterrupt on its n-th call."""
    real, calls = getattr(export_mod, name), []

    def wrapper(*a, **kw):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(export_mod, name, wrapper)
    return calls


def _no_staging(out):
    return not out.with_name(out.name + C.PARTIAL_SUFFIX).exists()


def _resumable(out):
    """The staging folder of an interrupted export: a journal of finished layers, no manifest."""
    stage = out.with_name(out.name + C.PARTIAL_SUFFIX)
    return (stage / C.JOURNAL).exists() and not (stage / C.MANIFEST).exists()


@pytest.mark.parametrize("name, n", [("_write_experts", 2),   # second MoE layer
                                     ("encode_record", 6)])   # second layer's 2nd expert
def test_interrupted_export_leaves_no_package(src, tmp_path, monkeypatch, name, n):
    out = tmp_path / "pkg.edgemoe"
    calls = _interrupt_on_call(monkeypatch, name, n)
    with pytest.raises(KeyboardInterrupt):
        export(src, out, QuantSpec())
    assert len(calls) == n                      # it really died mid-export
    assert not out.exists()
    assert _resumable(out)                      # layer 0 finished: kept for --resume
    with pytest.raises(PackageError, match="interrupted"):
        Package(out)
    monkeypatch.undo()
    export(src, out, QuantSpec())               # a later export (without --resume) starts over
    assert Package(out).verify() > 0 and _no_staging(out)


def test_cli_interrupt_exits_130_without_package(src, tmp_path, monkeypatch):
    out = tmp_path / "pkg.edgemoe"
    _interrupt_on_call(monkeypatch, "_write_experts", 2)
    result = CliRunner().invoke(main, ["export", str(src), "-o", str(out), "--json", "--jobs", "1"])
    assert result.exit_code == 130
    assert "Traceback" not in result.output and "--resume" in result.output
    assert not out.exists() and _resumable(out)
    monkeypatch.undo()
    result = CliRunner().invoke(main, ["export", str(src), "-o", str(out), "--json", "--resume"])
    assert result.exit_code == 0, result.output
    assert Package(out).verify() > 0 and _no_staging(out)


def test_killed_export_staging_is_not_a_package_and_is_replaced(src, tmp_path):
    """A hard kill (no cleanup) leaves only ``NAME.partial``: never read as a package, and removed by
    the next export."""
    out = tmp_path / "pkg.edgemoe"
    staging = out.with_name(out.name + C.PARTIAL_SUFFIX)
    (staging / "graphs").mkdir(parents=True)
    (staging / "graphs" / "embed.onnx").write_bytes(b"half written")
    with pytest.raises(PackageError, match="interrupted"):
        Package(out)
    with pytest.raises(PackageError):
        Package(staging)
    export(src, out, QuantSpec())
    assert not staging.exists()
    assert Package(out).verify() > 0


def test_existing_package_needs_overwrite(src, tmp_path):
    out = tmp_path / "pkg.edgemoe"
    export(src, out, QuantSpec(ladder=(4, 8)))
    before = (out / C.MANIFEST).read_bytes()
    with pytest.raises(PackageError, match="--overwrite"):
        export(src, out, QuantSpec())
    assert (out / C.MANIFEST).read_bytes() == before
    result = CliRunner().invoke(main, ["export", str(src), "-o", str(out), "--json"])
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert (out / C.MANIFEST).read_bytes() == before

    export(src, out, QuantSpec(), overwrite=True)
    assert Package(out).quant.ladder == (2, 4, 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg.edgemoe"]  # no .old, no .partial
    result = CliRunner().invoke(main, ["export", str(src), "-o", str(out), "--ladder", "4,8",
                                       "--overwrite", "--json"])
    assert result.exit_code == 0, result.output
    assert Package(out).quant.ladder == (4, 8)
    assert Package(out).verify() > 0


def test_failed_overwrite_keeps_the_old_package(src, tmp_path, monkeypatch):
    out = tmp_path / "pkg.edgemoe"
    export(src, out, QuantSpec(ladder=(4, 8)))
    _interrupt_on_call(monkeypatch, "_write_experts", 2)
    with pytest.raises(KeyboardInterrupt):
        export(src, out, QuantSpec(), overwrite=True)
    pkg = Package(out)
    assert pkg.quant.ladder == (4, 8)
    assert pkg.verify() > 0
    assert _resumable(out)


@pytest.mark.parametrize("overwrite", [False, True])
def test_non_package_folder_is_never_replaced(src, tmp_path, overwrite):
    out = tmp_path / "mydata"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(PackageError, match="not an edgemoe package") as info:
        export(src, out, QuantSpec(), overwrite=overwrite)
    assert "--overwrite" not in str(info.value)   # it must not suggest a flag that cannot help
    assert (out / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]
    assert _no_staging(out)
    args = ["export", str(src), "-o", str(out)] + (["--overwrite"] if overwrite else [])
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "error: " in result.output and "Traceback" not in result.output
    assert (out / "precious.txt").read_text() == "keep me"
