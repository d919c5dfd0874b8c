"""The CLI's request configs: inline JSON, @file.json, @file.yaml, then flags over them."""

from __future__ import annotations

import json

import pytest

from llama_stack_provider_kfp.cli import configs
from llama_stack_provider_kfp.cli.connection import DEFAULT_ENDPOINT, resolve

TRAINING = {
    "n_epochs": 3,
    "max_steps_per_epoch": 100,
    "data_config": {"dataset_id": "ds", "batch_size": 4, "shuffle": False, "data_format": "dialog"},
    "optimizer_config": {
        "optimizer_type": "sgd",
        "lr": 0.1,
        "weight_decay": 0.0,
        "num_warmup_steps": 5,
    },
}


def test_inline_json_file_json_and_file_yaml_read_the_same(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps(TRAINING))
    (tmp_path / "t.yaml").write_text(
        "n_epochs: 3\nmax_steps_per_epoch: 100\n"
        "data_config: {dataset_id: ds, batch_size: 4, shuffle: false, data_format: dialog}\n"
        "optimizer_config:\n  optimizer_type: sgd\n  lr: 0.1\n  weight_decay: 0.0\n"
        "  num_warmup_steps: 5\n"
    )
    assert configs.load(json.dumps(TRAINING), "t") == TRAINING
    assert configs.load(f"@{tmp_path / 't.json'}", "t") == TRAINING
    assert configs.load(f"@{tmp_path / 't.yaml'}", "t") == TRAINING
    assert configs.load(None, "t") is None


def test_flags_override_the_config_field_by_field():
    cfg = configs.training_config(
        TRAINING, epochs=1, batch_size=8, lr=0.5, dataset_id="other", dtype="fp32"
    )
    assert cfg["n_epochs"] == 1 and cfg["max_steps_per_epoch"] == 100 and cfg["dtype"] == "fp32"
    assert cfg["data_config"] == {
        "dataset_id": "other", "batch_size": 8, "shuffle": False, "data_format": "dialog",
    }  # fmt: skip
    assert cfg["optimizer_config"] == {**TRAINING["optimizer_config"], "lr": 0.5}
    assert TRAINING["n_epochs"] == 3 and TRAINING["data_config"]["batch_size"] == 4  # untouched


def test_flags_alone_fill_only_what_the_api_requires():
    cfg = configs.training_config(None, dataset_id="ds", lr=1e-4)
    assert cfg == {
        "n_epochs": 1,
        "data_config": {
            "dataset_id": "ds", "batch_size": 1, "shuffle": True, "data_format": "instruct",
        },
        "optimizer_config": {
            "optimizer_type": "adamw", "lr": 1e-4, "weight_decay": 0.01, "num_warmup_steps": 0,
        },
    }  # fmt: skip
    assert "optimizer_config" not in configs.training_config(None, dataset_id="ds")
    dpo = configs.training_config(None, dataset_id="ds", default_data_format="dialog")
    assert dpo["data_config"]["data_format"] == "dialog"


def test_missing_pieces_say_what_to_add():
    assert "--dataset-id" in (configs.missing_data(configs.training_config(None, epochs=2)) or "")
    assert configs.missing_data(configs.training_config(None, dataset_id="ds")) is None
    with pytest.raises(configs.ConfigError, match="--lr"):
        configs.training_config(None, dataset_id="ds", optimizer="sgd")
    with pytest.raises(configs.ConfigError, match="--lora-rank"):
        configs.lora_config(None, alpha=16)


def test_lora_flags():
    assert configs.lora_config(None) is None  # no algorithm config: full fine-tuning
    lora = configs.lora_config(None, rank=4)
    assert lora == {**configs.LORA_DEFAULTS, "rank": 4, "alpha": 8}
    given = {**configs.LORA_DEFAULTS, "rank": 8, "alpha": 16, "lora_attn_modules": ["q_proj"]}
    assert configs.lora_config(given, rank=2) == {**given, "rank": 2}
    with pytest.raises(configs.ConfigError, match="LoRA"):
        configs.lora_config({"type": "QAT", "quantizer_name": "x", "group_size": 32}, rank=4)


def test_dpo_defaults_and_flags():
    assert configs.dpo_config(None) == {"beta": 0.1, "loss_type": "sigmoid"}
    assert configs.dpo_config({"beta": 0.3}, loss_type="ipo") == {"beta": 0.3, "loss_type": "ipo"}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{n_epochs: 1", "not valid JSON.*@config.yaml"),
        ("[1, 2]", "must hold a mapping"),
        ("@/nonexistent/t.yaml", "cannot read /nonexistent/t.yaml"),
    ],
)
def test_bad_configs_say_what_is_wrong(text, match):
    with pytest.raises(configs.ConfigError, match=match):
        configs.load(text, "--training-config")


def test_bad_yaml_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("n_epochs: [1\n")
    with pytest.raises(configs.ConfigError, match=f"{bad} is not valid YAML"):
        configs.load(f"@{bad}", "--training-config")


def test_endpoint_from_flag_then_config_file_then_default(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve(None, None, None).endpoint == DEFAULT_ENDPOINT
    (tmp_path / ".llama" / "client").mkdir(parents=True)
    (tmp_path / ".llama" / "client" / "config.yaml").write_text(
        "endpoint: http://stack.example:8321\napi_key: from-file\n"
    )
    found = resolve(None, None, None)
    assert (found.endpoint, found.api_key) == ("http://stack.example:8321", "from-file")
    assert resolve("http://other:1", None, None).endpoint == "http://other:1"
    other = tmp_path / "other.yaml"
    other.write_text("endpoint: http://third:2\n")
    assert resolve(None, "k", str(other)).endpoint == "http://third:2"
    assert resolve(None, "k", str(other)).api_key == "k"
