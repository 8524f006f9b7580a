"""The checkpoint's chat template and special tokens travel into the package."""
from __future__ import annotations

import json

import pytest

from edgemoe.errors import CheckpointError
from edgemoe.exporters.export import read_chat_config
from edgemoe.package.reader import Package


def test_tokenizer_config_string_and_added_token_dicts(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": "{{ messages[0].content }}", "add_bos_token": True,
        "bos_token": {"content": "<s>", "lstrip": False}, "eos_token": "</s>", "unk_token": None}))
    template, special, add_bos = read_chat_config(tmp_path)
    assert template == "{{ messages[0].content }}" and add_bos
    assert special == {"bos_token": "<s>", "eos_token": "</s>"}


def test_named_templates_take_default_and_jinja_file_wins(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": [
        {"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}))
    assert read_chat_config(tmp_path)[0] == "D"
    (tmp_path / "chat_template.jinja").write_text("J")
    assert read_chat_config(tmp_path)[0] == "J"


def test_no_config_means_no_template(tmp_path):
    assert read_chat_config(tmp_path) == (None, {}, False)


def test_bad_json_names_the_file(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{oops")
    with pytest.raises(CheckpointError, match="tokenizer_config.json is not valid JSON"):
        read_chat_config(tmp_path)


def test_the_demo_package_carries_its_template(demo_package):
    from edgemoe.demo import ASSET

    pkg = Package(demo_package)
    want = json.loads((ASSET / "tokenizer_config.json").read_text())["chat_template"]
    assert pkg.chat_template() == want
    assert pkg.special_tokens["eos_token"] == "</s>" and pkg.chat_template_file in pkg.files
