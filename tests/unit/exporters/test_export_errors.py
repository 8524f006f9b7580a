"""Bad checkpoints and options: a typed error that names the problem and the fix, never a traceback
or a half-written package.

Every case runs twice, through the library (the exception type and message) and through the CLI
(exit code 2, one ``error: ...`` line, no traceback); after each failed export neither the output
folder nor a ``*.partial`` staging folder exists.
"""
from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

import tiny_models  # noqa: E402
from edgemoe.cli import main  # noqa: E402
from edgemoe.errors import CheckpointError, ConfigError, UnsupportedArchitectureError  # noqa: E402
from edgemoe.exporters.export import export  # noqa: E402
from edgemoe.exporters.families import supported_model_types  # noqa: E402
from edgemoe.quant.spec import QuantSpec  # noqa: E402

EXPERT_UP = "model.layers.1.block_sparse_moe.experts.2.w3.weight"
Q_PROJ = "model.layers.1.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A good single-file checkpoint and a sharded copy of it (index + several shards)."""
    d = tmp_path_factory.mktemp("ckpt")
    model = tiny_models.build("mixtral", d / "hf")
    model.save_pretrained(d / "sharded", max_shard_size="50KB")
    assert (d / "sharded" / "model.safetensors.index.json").exists()
    return d


# ---- ways to break a checkpoint: (source folder name, mutate(folder)) ----

def _edit_config(**changes):
    def mutate(d):
        cfg = json.loads((d / "config.json").read_text())
        for k, v in changes.items():
            if v is None:
                cfg.pop(k)
            else:
                cfg[k] = v
        (d / "config.json").write_text(json.dumps(cfg))
    return mutate


def _edit_tensors(fn):
    def mutate(d):
        f = d / "model.safetensors"
        tensors = load_file(f)
        fn(tensors)
        save_file(tensors, f)
    return mutate


def _remove_shard(d):
    index = json.loads((d / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[1]
    (d / shard).unlink()


def _truncate(d):
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) * 2 // 3])


def _bad_header(d):
    header = json.dumps({"x": {"dtype": "F32"}}).encode()  # valid JSON, no shape / data_offsets
    (d / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)


def _broken_tokenizer(d):
    (d / "tokenizer.json").write_text('{"model": {"type": "nonsense"}}')


def _extra(t):
    t["model.layers.0.mlp.extra_proj.weight"] = np.zeros((3, 3), np.float32)


def _wrong_shape(t):
    t[EXPERT_UP] = np.zeros((3, 3), np.float32)


CASES = {
    # id: (source, mutate, error type, words the message must contain)
    "unsupported_architecture": ("hf", _edit_config(model_type="llama"), UnsupportedArchitectureError,
                                 ["'llama'", "not supported", *supported_model_types()]),
    "not_moe": ("hf", _edit_config(num_local_experts=None), UnsupportedArchitectureError,
                ["num_experts", "mixture-of-experts"]),
    "config_lacks_key": ("hf", _edit_config(hidden_size=None), CheckpointError,
                         ["config.json", "'hidden_size'"]),
    "missing_shard": ("sharded", _remove_shard, CheckpointError,
                      ["model-00002-of-", "missing", "download every shard"]),
    "truncated_shard": ("hf", _truncate, CheckpointError, ["model.safetensors", "truncated", "re-download"]),
    "malformed_header": ("hf", _bad_header, CheckpointError, ["model.safetensors", "malformed"]),
    "missing_tensor": ("hf", _edit_tensors(lambda t: t.pop(EXPERT_UP)), CheckpointError,
                       [EXPERT_UP, "missing"]),
    "missing_dense_tensor": ("hf", _edit_tensors(lambda t: t.pop(Q_PROJ)), CheckpointError,
                             [Q_PROJ, "missing"]),
    "leftover_tensor": ("hf", _edit_tensors(_extra), CheckpointError,
                        ["model.layers.0.mlp.extra_proj.weight", "weight map", "silently drop"]),
    "broken_tokenizer": ("hf", _broken_tokenizer, CheckpointError,
                         ["tokenizer.json", "does not load", "without a tokenizer"]),
    # found only while the layer is written: exercises the removal of the staging folder
    "wrong_shape": ("hf", _edit_tensors(_wrong_shape), CheckpointError,
                    [EXPERT_UP, "(3, 3)", "(96, 64)"]),
}


@pytest.fixture(params=sorted(CASES))
def broken(request, sources, tmp_path):
    src_name, mutate, err, words = CASES[request.param]
    src = tmp_path / "src"
    shutil.copytree(sources / src_name, src)
    mutate(src)
    return src, err, words


def _assert_nothing_written(out):
    assert not out.exists()
    assert not list(out.parent.glob("*.partial")), "a staging folder was left behind"


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _assert_cli_error(result, words):
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit)  # no other exception escaped
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    for w in words:
        assert w in errors[0], (w, errors[0])


def test_library_raises_typed_error(broken, tmp_path):
    src, err, words = broken
    out = tmp_path / "out" / "pkg.edgemoe"
    with pytest.raises(err) as info:
        export(src, out, QuantSpec())
    for w in words:
        assert w in str(info.value), (w, str(info.value))
    _assert_nothing_written(out)


def test_cli_one_line_error(broken, tmp_path):
    src, _, words = broken
    out = tmp_path / "out" / "pkg.edgemoe"
    _assert_cli_error(_cli("export", src, "-o", out), words)
    _assert_nothing_written(out)


def test_dry_run_reports_the_same_errors_before_writing(sources, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(sources / "hf", src)
    _edit_tensors(_extra)(src)
    out = tmp_path / "pkg.edgemoe"
    _assert_cli_error(_cli("export", src, "-o", out, "--dry-run"), ["extra_proj", "weight map"])
    _assert_nothing_written(out)


@pytest.mark.parametrize("kw, words", [
    ({"ladder": (3, 8)}, ["(3, 8)", "2,4,8", "4,8", "ending at 8"]),
    ({"ladder": (2, 4)}, ["(2, 4)", "ending at 8"]),
    ({"group_size": 48}, ["48", "16, 32, 64, 128, 256"]),
    ({"scale_dtype": "int8"}, ["int8", "float16, float32"]),
])
def test_invalid_quant_spec_names_valid_values(kw, words):
    with pytest.raises(ConfigError) as info:
        QuantSpec(**kw)
    for w in words:
        assert w in str(info.value)


@pytest.mark.parametrize("args, words", [
    (["--ladder", "3,8"], ["(3, 8)", "2,4,8"]),
    (["--ladder", "two,four"], ["'two,four'", "'2,4,8'"]),
    (["--group-size", "48"], ["48", "16, 32, 64, 128, 256"]),
])
def test_cli_invalid_ladder_or_group_size(sources, tmp_path, args, words):
    out = tmp_path / "pkg.edgemoe"
    _assert_cli_error(_cli("export", sources / "hf", "-o", out, *args), words)
    _assert_nothing_written(out)


def test_missing_checkpoint_folder_and_config(tmp_path):
    out = tmp_path / "pkg.edgemoe"
    with pytest.raises(CheckpointError, match="does not exist"):
        export(tmp_path / "nowhere", out)
    (tmp_path / "empty").mkdir()
    _assert_cli_error(_cli("export", tmp_path / "empty", "-o", out), ["no config.json"])
    _assert_nothing_written(out)


def test_index_shards_outside_the_folder_are_refused(tmp_path):
    import json

    from edgemoe.errors import CheckpointError
    from edgemoe.exporters.checkpoint import Checkpoint

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mixtral"}))
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a.weight": "../elsewhere.safetensors"}}))
    with pytest.raises(CheckpointError, match="outside"):
        Checkpoint(tmp_path)
