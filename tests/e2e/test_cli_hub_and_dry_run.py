"""`edgemoe export` with a hub id from a local Hugging Face cache (no network), and `--dry-run` on
config-only copies of the flagship checkpoints (benchmarks/flagship_configs)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgemoe.cli import main
from edgemoe.exporters.families import supported_model_types

FLAGSHIPS = Path(__file__).resolve().parents[2] / "benchmarks" / "flagship_configs"
# total / active parameters (billions) from each flagship's model card (Sarvam and FlexOlmo: the
# counts of their configs in ../shared/research/FAMILIES.md, whose cards round them); the plan
# counts the embedding and LM head as active, as the cards of ERNIE and Qwen do
PUBLISHED = {"baidu--ERNIE-4.5-21B-A3B-PT": (21.8, 3.0), "zai-org--GLM-4.5-Air": (106.0, 12.0),
             "tencent--Hunyuan-A13B-Instruct": (80.0, 13.0), "Qwen--Qwen3-30B-A3B": (30.5, 3.3),
             "MiniMaxAI--MiniMax-M2": (230.0, 10.0), "openai--gpt-oss-20b": (21.0, 3.6),
             "rednote-hilab--dots.llm1.inst": (142.0, 14.0), "sarvamai--sarvam-30b": (32.0, 4.5),
             "allenai--FlexOlmo-7x7B-1T": (33.3, 24.6), "deepseek-ai--DeepSeek-V3": (671.0, 37.0),
             "deepseek-ai--DeepSeek-V2-Lite": (15.7, 2.4), "moonshotai--Moonlight-16B-A3B": (16.0, 3.0),
             "zai-org--GLM-4.7-Flash": (29.9, 3.3)}


def _cache(tmp_path, monkeypatch, repo: str, files: dict[str, Path]) -> Path:
    """A Hugging Face cache holding ``repo`` at one snapshot, laid out as huggingface_hub does."""
    root = tmp_path / "hub"
    snap = root / f"models--{repo.replace('/', '--')}" / "snapshots" / "0123abc"
    snap.mkdir(parents=True)
    for name, src in files.items():
        shutil.copy(src, snap / name)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("0123abc")
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    import huggingface_hub.constants as hc
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(root))
    return snap


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_dry_run_on_a_config_only_flagship_sizes_each_level(name):
    r = CliRunner().invoke(main, ["export", str(FLAGSHIPS / name), "-o", "/nonexistent/out",
                                  "--dry-run", "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert s["config_only"] is True
    total, active = PUBLISHED[name]
    assert abs(s["params_total"] / 1e9 - total) / total < 0.03
    assert 0.8 * active < s["params_active"] / 1e9 < 1.2 * active
    lv = s["levels"]
    assert 0 < s["fixed_bytes"] < lv["2"]["package_bytes"] < lv["4"]["package_bytes"] < lv["8"]["package_bytes"]
    # level 8 holds at least a byte per expert weight (the idle experts alone are total - active);
    # level 4 about half of that
    assert lv["8"]["expert_bytes"] > s["params_total"] - s["params_active"]
    assert 0.45 < lv["4"]["expert_bytes"] / lv["8"]["expert_bytes"] < 0.6
    assert not Path("/nonexistent/out").exists()
    text = CliRunner().invoke(main, ["export", str(FLAGSHIPS / name), "-o", "/nonexistent/out", "--dry-run"])
    assert "fixed part" in text.output and "resident at level 4" in text.output
    assert "no weights here" in text.output
    if name == "openai--gpt-oss-20b":      # 12 of 24 layers slide over 128 tokens: a fixed cache
        assert s["kv_window_bytes"]["f16"] > 0 and "sliding-window layers" in text.output
        assert s["kv_bytes_per_token"]["f16"] == 12 * 2 * 8 * 64 * 2
    if name == "deepseek-ai--DeepSeek-V3":   # the latent cache: (512 + 64) values x 61 layers x 2 bytes
        assert s["kv_bytes_per_token"]["f16"] == 576 * 61 * 2


def test_a_real_export_of_a_config_only_folder_is_refused(tmp_path):
    r = CliRunner().invoke(main, ["export", str(FLAGSHIPS / "Qwen--Qwen3-30B-A3B"), "-o", str(tmp_path / "p")])
    assert r.exit_code != 0 and "no *.safetensors" in r.output
    assert not (tmp_path / "p").exists()


def test_a_hub_id_exports_from_the_local_cache(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import tiny_models
    tiny_models.build("qwen3_moe", tmp_path / "hf")
    _cache(tmp_path, monkeypatch, "someorg/tiny-qwen3-moe",
           {p.name: p for p in (tmp_path / "hf").iterdir() if p.is_file()})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = CliRunner().invoke(main, ["export", "someorg/tiny-qwen3-moe", "-o", str(tmp_path / "p"),
                                  "--ladder", "4,8", "--json"])
    assert r.exit_code == 0, r.output
    from edgemoe.package.reader import Package
    source = Package(tmp_path / "p").manifest["producer"]["source"]
    assert source["path"].endswith("snapshots/0123abc") and source["hub_id"] == "someorg/tiny-qwen3-moe"


def test_a_hub_id_not_in_the_cache_says_how_to_download_and_writes_nothing(tmp_path, monkeypatch):
    _cache(tmp_path, monkeypatch, "someorg/other", {})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = CliRunner().invoke(main, ["export", "openai/gpt-oss-20b", "-o", str(tmp_path / "p")])
    assert r.exit_code != 0
    assert "huggingface-cli download openai/gpt-oss-20b" in r.output
    assert "HF_HUB_OFFLINE" in r.output
    assert not (tmp_path / "p").exists() and not (tmp_path / "p.partial").exists()


def test_a_cached_config_only_snapshot_dry_runs(tmp_path, monkeypatch):
    _cache(tmp_path, monkeypatch, "Qwen/Qwen3-30B-A3B",
           {"config.json": FLAGSHIPS / "Qwen--Qwen3-30B-A3B" / "config.json"})
    r = CliRunner().invoke(main, ["export", "Qwen/Qwen3-30B-A3B", "-o", str(tmp_path / "p"), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "qwen3_moe: 48 layers" in r.output


def test_export_help_names_every_supported_model_type():
    r = CliRunner().invoke(main, ["export", "--help"])
    missing = [t for t in supported_model_types() if t not in r.output]
    assert not missing
