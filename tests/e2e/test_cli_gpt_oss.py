"""gpt-oss as a user runs it: an MXFP4 checkpoint in the official layout exported by the CLI,
verified, generated from resident and under a budget."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402

import tiny_models  # noqa: E402
from edgemoe.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    d = tmp_path_factory.mktemp("gptoss")
    tiny_models.build("gpt_oss", d / "hf")
    tiny_models.to_mxfp4(d / "hf")
    tiny_models.word_tokenizer(128).save(str(d / "hf" / "tokenizer.json"))
    r = CliRunner().invoke(main, ["export", str(d / "hf"), "-o", str(d / "p.edgemoe"), "--json"])
    assert r.exit_code == 0, r.output
    return d / "p.edgemoe"


def test_inspect_verifies_and_names_the_family(package):
    r = CliRunner().invoke(main, ["inspect", str(package), "--verify", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["arch"]["family"] == "gpt_oss" and info["arch"]["sliding_layers"] == [0, 2]


@pytest.mark.parametrize("extra", [["--level", "4"], ["--budget", "60%", "--level", "auto"]],
                         ids=["resident", "budget"])
def test_run_generates(package, extra):
    r = CliRunner().invoke(main, ["run", str(package), "--prompt", "the small model runs on tiny boards",
                                  "--max-new-tokens", "12", "--greedy", "--json", *extra])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert len(out["ids"]) == 12


def test_hls_kernels_refuse_the_clamped_experts(package):
    r = CliRunner().invoke(main, ["compile", str(package), "--device", "kv260"])
    assert r.exit_code != 0 and "clamped activation" in r.output and "planes or tvm" in r.output
