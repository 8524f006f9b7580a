"""The CLI as a user runs it: export a tiny checkpoint with a tokenizer, inspect it, generate text."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402

import tiny_models  # noqa: E402
from edgemoe.cli import main  # noqa: E402
from edgemoe.runtime.engine import Runtime  # noqa: E402

PROMPT = "the small model runs on tiny boards"


def _level(out: dict):
    """The level a `run --json` reports (top level, or in its runtime stats)."""
    return out["level"] if "level" in out else out["stats"]["level"]


def _edgemoe(*args, timeout=180):
    """`edgemoe ...` in a fresh process, exactly as a user runs it."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "edgemoe.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    d = tmp_path_factory.mktemp("e2e")
    # no eos id: greedy decoding must produce exactly the tokens asked for
    tiny_models.build("mixtral", d / "hf", eos_token_id=None)
    tiny_models.word_tokenizer(128).save(str(d / "hf" / "tokenizer.json"))
    out = d / "tiny.edgemoe"
    p = _edgemoe("export", d / "hf", "-o", out, "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["package"] == str(out)
    return out


def test_export_wrote_a_package_with_its_tokenizer(package):
    assert (package / "manifest.yaml").exists() and (package / "tokenizer.json").exists()
    r = CliRunner().invoke(main, ["inspect", str(package), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["tokenizer"] == "tokenizer.json" and info["arch"]["eos_token_ids"] == []
    a, kv = info["arch"], info["kv_bytes_per_token"]
    assert kv == {"f32": 4 * 2 * a["num_layers"] * a["num_kv_heads"] * a["head_dim"],
                  "f16": 2 * 2 * a["num_layers"] * a["num_kv_heads"] * a["head_dim"],
                  "int8": 2 * a["num_layers"] * a["num_kv_heads"] * a["head_dim"]}
    r = CliRunner().invoke(main, ["inspect", str(package)])
    assert "KV cache per token of context: f32" in r.output


def test_run_greedy_json(package):
    p = _edgemoe("run", package, "--prompt", PROMPT, "--max-new-tokens", 5, "--greedy", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert len(out["ids"]) == 5 and all(0 <= i < 128 for i in out["ids"])
    assert _level(out) == 8 and out["prompt"] == PROMPT
    assert isinstance(out["text"], str) and len(out["text"].split()) == 5
    # the CLI is a thin wrapper: the library gives the same tokens from the same prompt
    rt = Runtime(package)
    prompt_ids = rt.encode(PROMPT)
    assert "[UNK]" not in rt.decode(prompt_ids) and len(prompt_ids) == len(PROMPT.split())
    assert rt.generate(prompt_ids, 5).ids == out["ids"]


def test_run_at_level_4(package):
    r = CliRunner().invoke(main, ["run", str(package), "--prompt", PROMPT, "--max-new-tokens", "5",
                                  "--greedy", "--json", "--level", "4"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert _level(out) == 4 and len(out["ids"]) == 5


def test_run_streams_text(package):
    r = CliRunner().invoke(main, ["run", str(package), "--prompt", PROMPT, "--max-new-tokens", "3",
                                  "--greedy"])
    assert r.exit_code == 0, r.output
    assert r.output.startswith(PROMPT) and "[3 tokens" in r.output


@pytest.mark.parametrize("level", ["3", "16"])
def test_run_at_a_level_not_in_the_ladder(package, level):
    p = _edgemoe("run", package, "--prompt", PROMPT, "--max-new-tokens", 5, "--greedy", "--level", level)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and p.stdout == ""
    line = p.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and f"{level} bits" in line and "(2, 4, 8)" in line


@pytest.mark.parametrize("kv", ["f32", "f16", "int8"])
def test_run_with_each_kv_cache_type(package, kv):
    """`--kv-dtype`: every type's graphs are in the package and run; f32 gives the library's tokens."""
    p = _edgemoe("run", package, "--prompt", PROMPT, "--max-new-tokens", 6, "--greedy", "--json",
                 "--kv-dtype", kv)
    assert p.returncode == 0, p.stderr
    ids = json.loads(p.stdout)["ids"]
    assert len(ids) == 6
    if kv == "f32":
        rt = Runtime(package, kv_dtype="f32")
        assert rt.generate(rt.encode(PROMPT), 6).ids == ids


def test_run_with_an_unknown_kv_cache_type(package):
    p = _edgemoe("run", package, "--prompt", PROMPT, "--kv-dtype", "f8")
    assert p.returncode != 0
    assert "f16" in p.stderr and "f8" in p.stderr
