"""The OpenAI face's own settings: run.yaml read as llama-stack reads it, and the keys file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from llama_stack.core.stack import replace_env_vars

from harness.server import ROOT
from llama_stack_provider_kfp.config import KFPPostTrainingConfig
from llama_stack_provider_kfp.core.errors import InvalidRequest
from llama_stack_provider_kfp.openai_api import run_config
from llama_stack_provider_kfp.openai_api.keys import Keys


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"KFP_MODE": "remote", "KFP_URL": "https://kfp.example", "KFP_MAX_SEQ_LEN": "512",
         "KFP_WORK_DIR": "~/w", "KFP_VERIFY_SSL": "false", "KFP_OPENAI_KEYS_FILE": "/k",
         "KFP_VALIDATION_FRACTION": "0.25", "KFP_ALGORITHM": "osft"},
    ],
)  # fmt: skip
def test_run_yaml_expands_as_llama_stack_expands_it(env, monkeypatch):
    for name in [k for k in os.environ if k.startswith("KFP_")]:
        monkeypatch.delenv(name)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    raw = yaml.safe_load((ROOT / "run.yaml").read_text())
    entry = raw["providers"]["post_training"][0]["config"]
    assert run_config.expand(entry) == replace_env_vars(entry)
    ours = run_config.load(ROOT / "run.yaml")
    assert ours == KFPPostTrainingConfig.model_validate(replace_env_vars(entry))
    if env:
        assert ours.mode == "remote" and ours.max_seq_len == 512 and not ours.remote.verify_ssl
        assert ours.work_dir == Path("~/w").expanduser()
        assert ours.openai.keys_file == Path("/k") and ours.algorithm == "osft"


def test_a_bare_variable_must_be_set(tmp_path, monkeypatch):
    monkeypatch.delenv("KFP_SURELY_UNSET", raising=False)
    with pytest.raises(InvalidRequest, match="KFP_SURELY_UNSET is not set"):
        run_config.expand({"work_dir": "${env.KFP_SURELY_UNSET}"})
    assert run_config.expand({"a": "${env.KFP_SURELY_UNSET:+yes}", "b": 3}) == {"a": None, "b": 3}
    two = tmp_path / "two.yaml"
    mod = "llama_stack_provider_kfp"
    entries = [{"provider_id": "a", "module": mod, "config": {}},
               {"provider_id": "b", "module": mod, "config": {"seed": 3}}]  # fmt: skip
    two.write_text(yaml.safe_dump({"providers": {"post_training": entries}}))
    with pytest.raises(InvalidRequest, match="found: a, b"):
        run_config.load(two)
    assert run_config.load(two, "b").seed == 3


def test_keys_file(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# team keys\nsk-a alice\n\nsk-b bob\n")
    keys.chmod(0o644)
    with pytest.raises(InvalidRequest, match="readable by group or others: chmod 600"):
        Keys.load(keys)
    keys.chmod(0o600)
    ring = Keys.load(keys)
    assert ring.owner("sk-a").principal == "alice" and ring.owner("sk-b").principal == "bob"
    assert ring.owner("sk-c") is None and ring.owner(None) is None and ring.owner("sk-") is None
    assert not ring.single_user
    keys.write_text("sk-a alice extra\n")
    with pytest.raises(InvalidRequest, match="line 1: expected `<key> <owner>`"):
        Keys.load(keys)
    single = Keys.load(None)
    assert single.single_user and single.owner(None).principal == "local"
