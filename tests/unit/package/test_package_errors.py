"""A damaged, foreign or malicious package is refused with a typed error that names the file, and
the CLI turns it into one ``error: ...`` line with exit code 2."""
from __future__ import annotations

import os
import shutil

import pytest
import yaml

pytest.importorskip("torch")
pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402

import tiny_models  # noqa: E402
from edgemoe.cli import main  # noqa: E402
from edgemoe.errors import (CorruptRecordError, IncompatiblePackageError, PackageError,  # noqa: E402
                            UnsafePathError)
from edgemoe.exporters.export import export  # noqa: E402
from edgemoe.package import constants as C  # noqa: E402
from edgemoe.package.reader import Package  # noqa: E402
from edgemoe.quant.spec import QuantSpec  # noqa: E402
from edgemoe.runtime.engine import Runtime  # noqa: E402
from edgemoe.package.record_store import ExpertStore  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("pkg")
    tiny_models.build("mixtral", d / "hf")
    return export(d / "hf", d / "good.edgemoe", QuantSpec())


@pytest.fixture
def pkg_dir(built, tmp_path):
    d = tmp_path / "copy.edgemoe"
    shutil.copytree(built, d)
    return d


def _edit_manifest(d, fn):
    m = yaml.safe_load((d / C.MANIFEST).read_text())
    fn(m)
    (d / C.MANIFEST).write_text(yaml.safe_dump(m, sort_keys=False))


def _cli_error(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert isinstance(r.exception, SystemExit) and "Traceback" not in r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    return lines[0]


def _flip(path, pos):
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x5A]))


# ---- corrupted and truncated records ----

def test_flipped_byte_found_at_levels_that_cover_it(pkg_dir):
    pkg = Package(pkg_dir)
    layer, expert = 1, 2
    entry = pkg.experts[(layer, expert)]
    chunk = pkg.layout.chunk_for(4)                       # the chunk that completes level 4
    _flip(pkg_dir / entry.file, entry.offset + chunk.offset + 7)
    store = ExpertStore(pkg)
    store.read(layer, expert, 2)                          # level 2 does not read that chunk
    for bits in (4, 8):
        with pytest.raises(CorruptRecordError) as info:
            store.read(layer, expert, bits)
        msg = str(info.value)
        assert entry.file in msg and f"layer {layer} expert {expert}" in msg and "level 4" in msg
    buf = store.read(layer, expert, 2)
    with pytest.raises(CorruptRecordError, match=f"layer {layer} expert {expert}"):
        store.read(layer, expert, 4, buf=buf, have_bits=2)  # the upgrade checks the new chunk too
    for key in pkg.experts:                               # the neighbours are fine
        if key != (layer, expert):
            store.read(*key, 8)
    Runtime(pkg_dir, level=2).close()
    with pytest.raises(CorruptRecordError, match=f"layer {layer} expert {expert}"):
        Runtime(pkg_dir, level=8)
    for args in (["inspect", pkg_dir, "--verify"], ["run", pkg_dir, "--prompt", "x", "--level", "4"]):
        line = _cli_error(*args)
        assert entry.file in line and f"layer {layer} expert {expert}" in line


def test_flipped_byte_in_padding_is_still_caught(pkg_dir):
    pkg = Package(pkg_dir)
    entry = pkg.experts[(0, 0)]
    c = pkg.layout.chunk_for(2)
    _flip(pkg_dir / entry.file, entry.offset + c.offset + c.length - 1)   # last byte: page padding
    with pytest.raises(CorruptRecordError, match="layer 0 expert 0"):
        ExpertStore(pkg).read(0, 0, 2)


def test_truncated_record_file(pkg_dir):
    rec = pkg_dir / "experts" / "L001" / C.RECORD_FILE
    os.truncate(rec, rec.stat().st_size - 100)
    with pytest.raises(CorruptRecordError) as info:
        Package(pkg_dir)
    assert "experts/L001/records.bin" in str(info.value) and "truncated" in str(info.value)
    line = _cli_error("inspect", pkg_dir)
    assert "experts/L001/records.bin" in line


def test_record_truncated_after_open_is_a_short_read(pkg_dir):
    pkg = Package(pkg_dir)
    rec = pkg_dir / "experts" / "L000" / C.RECORD_FILE
    os.truncate(rec, pkg.experts[(0, 3)].offset + pkg.layout.prefix_length(4))
    store = ExpertStore(pkg)
    store.read(0, 3, 4)
    with pytest.raises(CorruptRecordError, match="short read for layer 0 expert 3"):
        store.read(0, 3, 8)


def test_truncated_or_corrupt_dense_file(pkg_dir):
    data = pkg_dir / "graphs" / "L000.onnx.data"
    _flip(data, 100)
    Package(pkg_dir)                                     # lengths still match: opens
    with pytest.raises(CorruptRecordError, match="graphs/L000.onnx.data"):
        Runtime(pkg_dir)
    assert "graphs/L000.onnx.data" in _cli_error("inspect", pkg_dir, "--verify")
    os.truncate(data, 10)
    with pytest.raises(CorruptRecordError, match="graphs/L000.onnx.data"):
        Package(pkg_dir)


def test_missing_file(pkg_dir):
    (pkg_dir / "graphs" / "head.onnx").unlink()
    with pytest.raises(PackageError, match="graphs/head.onnx is missing"):
        Package(pkg_dir)


# ---- foreign and future manifests ----

def test_newer_format_is_incompatible(pkg_dir):
    _edit_manifest(pkg_dir, lambda m: m.update({C.K_VERSION: "3.0"}))
    with pytest.raises(IncompatiblePackageError, match="upgrade edgemoe"):
        Package(pkg_dir)
    line = _cli_error("inspect", pkg_dir)
    assert "3.0" in line and "upgrade edgemoe" in line
    _cli_error("run", pkg_dir, "--prompt", "hi")


def test_older_format_asks_for_a_re_export(pkg_dir):
    """Format 1 layer graphs took the KV cache as an input and returned it grown by a copy."""
    _edit_manifest(pkg_dir, lambda m: m.update({C.K_VERSION: "1.0"}))
    with pytest.raises(IncompatiblePackageError, match="re-export"):
        Package(pkg_dir)
    line = _cli_error("inspect", pkg_dir)
    assert "1.0" in line and "edgemoe export" in line


def test_newer_minor_version_is_read(pkg_dir):
    _edit_manifest(pkg_dir, lambda m: m.update({C.K_VERSION: "2.7"}))
    assert Package(pkg_dir).arch.num_layers == 2


@pytest.mark.parametrize("edit, words", [
    (lambda m: m.update({C.K_FORMAT: "onnx"}), ["'onnx'", "not an edgemoe package"]),
    (lambda m: m.update({C.K_VERSION: "x"}), ["format_version"]),
    (lambda m: m.pop(C.K_GRAPHS), ["lacks keys", "graphs"]),
    (lambda m: m.update({C.K_FILES: []}), ["malformed"]),
    (lambda m: m[C.K_FILES]["graphs/embed.onnx"].pop(C.K_LENGTH), ["malformed", "'length'"]),
    (lambda m: m[C.K_EXPERTS][0].pop(C.K_RECORDS), ["malformed", "'records'"]),
    (lambda m: m[C.K_EXPERTS][0][C.K_RECORDS][1].update({C.K_OFFSET: "abc"}), ["malformed"]),
    (lambda m: m[C.K_EXPERTS][0][C.K_RECORDS][1].update({C.K_OFFSET: -4096}), ["offset -4096"]),
    (lambda m: m[C.K_EXPERTS][0][C.K_RECORDS][0][C.K_LEVELS].pop(), ["layer 0 expert 0", "ladder"]),
    (lambda m: m[C.K_EXPERTS][0][C.K_RECORDS].pop(), ["(0, 3)"]),
    (lambda m: m[C.K_EXPERTS].append(m[C.K_EXPERTS][0]), ["twice"]),
    (lambda m: m[C.K_GRAPHS][C.K_LAYERS]["f16"].pop(), ["1 layer graphs for 2 layers", "f16"]),
    (lambda m: m[C.K_EXPERTS][1][C.K_LEVELS][2].update({C.K_PREFIX: 4096}), ["record layout"]),
], ids=["format", "version", "no_graphs", "files_list", "no_length", "no_records", "offset_type",
        "offset_negative", "levels_short", "expert_missing", "expert_twice", "layers_short", "layout"])
def test_malformed_manifest(pkg_dir, edit, words):
    _edit_manifest(pkg_dir, edit)
    with pytest.raises(PackageError) as info:
        Package(pkg_dir)
    for w in words:
        assert w in str(info.value), (w, str(info.value))
    _cli_error("inspect", pkg_dir)


def test_not_a_package(tmp_path):
    with pytest.raises(PackageError, match="edgemoe export"):
        Package(tmp_path)
    (tmp_path / C.MANIFEST).write_text("{{{: [")
    with pytest.raises(PackageError, match="not valid YAML"):
        Package(tmp_path)
    _cli_error("inspect", tmp_path)       # a multi-line YAML error still makes one line


# ---- paths that leave the package ----

def _outside_copy(pkg_dir, rel):
    """Replace ``rel`` with a symlink to an identical file outside the package."""
    target = pkg_dir.parent / ("outside_" + rel.replace("/", "_"))
    shutil.copyfile(pkg_dir / rel, target)
    (pkg_dir / rel).unlink()
    (pkg_dir / rel).symlink_to(target)


def _files_entry(path):
    def edit(m):
        m[C.K_FILES][path] = m[C.K_FILES]["graphs/embed.onnx"]
    return edit


UNSAFE = {
    "dotdot_file": lambda d: _edit_manifest(d, _files_entry("../x")),
    "dotdot_inner": lambda d: _edit_manifest(d, _files_entry("graphs/../../x")),
    "absolute_file": lambda d: _edit_manifest(d, _files_entry("/etc/passwd")),
    "absolute_graph": lambda d: _edit_manifest(d, lambda m: m[C.K_GRAPHS].update({C.K_EMBED: "/etc/hosts"})),
    "dotdot_record": lambda d: _edit_manifest(d, lambda m: m[C.K_EXPERTS][0].update(
        {C.K_FILE: "../copy.edgemoe/experts/L000/records.bin"})),
    "dotdot_tokenizer": lambda d: _edit_manifest(d, lambda m: m.update(
        {C.K_TOKENIZER: {C.K_FILE: "../tokenizer.json"}})),
    "symlink_dense_data": lambda d: _outside_copy(d, "graphs/L000.onnx.data"),
    "symlink_record": lambda d: _outside_copy(d, "experts/L001/records.bin"),
}


@pytest.mark.parametrize("name", sorted(UNSAFE))
def test_paths_that_leave_the_package(pkg_dir, name):
    UNSAFE[name](pkg_dir)
    with pytest.raises(UnsafePathError) as info:
        Package(pkg_dir)
    assert "package" in str(info.value) and "refusing" in str(info.value)
    assert "refusing" in _cli_error("inspect", pkg_dir)


def test_symlink_inside_the_package_is_fine(pkg_dir):
    """A link that stays inside the package is not an escape."""
    rel = "graphs/head.onnx.data"
    inner = pkg_dir / "graphs" / "head.copy"
    shutil.copyfile(pkg_dir / rel, inner)
    (pkg_dir / rel).unlink()
    (pkg_dir / rel).symlink_to(inner)
    assert Package(pkg_dir).verify() > 0
