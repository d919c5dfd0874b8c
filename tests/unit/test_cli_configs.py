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


# ---- hyperparam_search_config["kfp"]: the stage flags ------------------------------------


def test_no_stage_flag_sends_the_config_as_it_is():
    assert configs.hyperparam_search_config(None) == {}
    given = {"other": 1, "kfp": {"max_rows": 5}}
    assert configs.hyperparam_search_config(given) == given


def test_stage_flags_build_the_kfp_extension():
    got = configs.hyperparam_search_config(
        None,
        evaluate=True,
        eval_tasks=["arc_easy", "my_task"],
        eval_task_files=["s3://b/my_task.yaml"],
        register="mlflow",
        registry_uri="http://mlflow:5000",
        validation_fraction=0.1,
        max_rows=500,
        stages=["train", "evaluate", "register"],
    )
    assert got == {
        "kfp": {
            "evaluation": {
                "enabled": True,
                "tasks": ["arc_easy", "my_task"],
                "task_files": ["s3://b/my_task.yaml"],
            },
            "registry": {"kind": "mlflow", "uri": "http://mlflow:5000"},
            "validation_fraction": 0.1,
            "max_rows": 500,
            "stages": ["train", "evaluate", "register"],
        }
    }


def test_stage_flags_merge_over_the_configs_field_by_field():
    whole = {
        "other": {"x": 1},
        "kfp": {
            "evaluation": {"enabled": False, "limit": 5, "tasks": ["a"]},
            "registry": {"kind": "kubeflow", "gate": {"metric": "held_out/loss"}},
            "max_rows": 10,
        },
    }
    got = configs.hyperparam_search_config(
        whole,
        evaluation={"samples": 0, "tasks": ["b"]},
        eval_task_files=["t.yaml"],
        registry={"gate": {"min_delta": 0.1}, "model_name": "mine"},
        register="mlflow",
        max_rows=20,
    )
    assert got == {
        "other": {"x": 1},  # not ours: passed on
        "kfp": {
            # --evaluation over the config's, then the flags; `enabled: false` stated: kept.
            "evaluation": {"enabled": False, "limit": 5, "tasks": ["b"], "samples": 0,
                           "task_files": ["t.yaml"]},
            "registry": {"kind": "mlflow", "model_name": "mine",
                         "gate": {"metric": "held_out/loss", "min_delta": 0.1}},
            "max_rows": 20,
        },
    }  # fmt: skip
    assert whole["kfp"]["max_rows"] == 10 and whole["kfp"]["evaluation"]["tasks"] == ["a"]


def test_a_task_turns_the_evaluation_on_unless_told_otherwise():
    on = configs.hyperparam_search_config(None, eval_tasks=["t"])
    assert on["kfp"]["evaluation"] == {"tasks": ["t"], "enabled": True}
    off = configs.hyperparam_search_config(None, eval_tasks=["t"], evaluate=False)
    assert off["kfp"]["evaluation"] == {"tasks": ["t"], "enabled": False}
    assert configs.hyperparam_search_config(None, evaluate=False) == {
        "kfp": {"evaluation": {"enabled": False}}
    }


@pytest.mark.parametrize(
    ("base", "match"),
    [
        ({"evaluation": {"enabled": True}}, 'evaluation belong.* under "kfp"'),
        ({"kfp": ["max_rows"]}, '"kfp" must be a mapping, not list'),
        ({"kfp": {"evaluation": True}}, '"kfp".evaluation must be a mapping, not bool'),
    ],
)
def test_a_misshapen_hyperparam_search_config_says_what_is_wrong(base, match):
    with pytest.raises(configs.ConfigError, match=match):
        configs.hyperparam_search_config(base, evaluate=True)


def test_stages_flag():
    assert configs.stage_list(None) is None
    assert configs.stage_list("evaluate, register") == ["evaluate", "register"]
    with pytest.raises(configs.ConfigError, match="unknown stage 'eval'; the stages are train"):
        configs.stage_list("train,eval")
    with pytest.raises(configs.ConfigError, match="prepare-data always runs"):
        configs.stage_list("prepare-data,train")
    with pytest.raises(configs.ConfigError, match="name one or more"):
        configs.stage_list(" , ")


# ---- the submit commands send it ---------------------------------------------------------


@pytest.fixture
def sent(monkeypatch):
    """The requests the submit commands send, to a stand-in client (no server)."""
    from types import SimpleNamespace

    from llama_stack_provider_kfp.cli import main

    calls: list[dict] = []
    routes = SimpleNamespace(
        supervised_fine_tune=lambda **kw: calls.append({"route": "sft", **kw}),
        preference_optimize=lambda **kw: calls.append({"route": "dpo", **kw}),
    )
    monkeypatch.setattr(main, "make_client", lambda target: SimpleNamespace(
        alpha=SimpleNamespace(post_training=routes)))  # fmt: skip
    return calls


def submit(*args: str) -> int:
    from llama_stack_provider_kfp.cli.main import main

    common = ["--dataset-id", "ds", "--max-steps-per-epoch", "1"]
    return main(["--endpoint", "http://stack:1", "post_training", *args, *common])


def test_submit_commands_send_the_stage_flags(sent, tmp_path):
    registry = tmp_path / "registry.yaml"
    registry.write_text("kind: mlflow\ngate: {metric: held_out/loss}\n")
    assert submit("supervised_fine_tune", "--job-uuid", "j1", "--model", "m") == 0
    assert submit(
        "supervised_fine_tune", "--job-uuid", "j2", "--model", "m",
        "--hyperparam-search-config", '{"kfp": {"evaluation": {"limit": 5}}}',
        "--evaluate", "--eval-task", "a", "--eval-task", "b", "--eval-task-file", "t.yaml",
        "--registry", f"@{registry}", "--registry-uri", "http://mlflow:5000",
        "--validation-fraction", "0.2", "--max-rows", "100", "--stages", "train,evaluate,register",
    ) == 0  # fmt: skip
    assert submit("preference_optimize", "--job-uuid", "j3", "--finetuned-model", "m",
                  "--no-evaluate", "--register", "kubeflow") == 0  # fmt: skip
    assert [(c["route"], c["job_uuid"]) for c in sent] == [("sft", "j1"), ("sft", "j2"),
                                                           ("dpo", "j3")]  # fmt: skip
    assert sent[0]["hyperparam_search_config"] == {}  # no flag: nothing sent, as before
    assert sent[1]["hyperparam_search_config"] == {
        "kfp": {
            "evaluation": {"limit": 5, "enabled": True, "tasks": ["a", "b"],
                           "task_files": ["t.yaml"]},
            "registry": {"kind": "mlflow", "gate": {"metric": "held_out/loss"},
                         "uri": "http://mlflow:5000"},
            "validation_fraction": 0.2,
            "max_rows": 100,
            "stages": ["train", "evaluate", "register"],
        }
    }  # fmt: skip
    assert sent[2]["hyperparam_search_config"] == {
        "kfp": {"evaluation": {"enabled": False}, "registry": {"kind": "kubeflow"}}
    }


def test_osft_flags_ask_for_osft_through_the_extension(sent):
    assert submit("supervised_fine_tune", "--job-uuid", "o1", "--model", "m",
                  "--osft-ratio", "0.3", "--osft-modules", "q_proj, down_proj") == 0  # fmt: skip
    assert submit("supervised_fine_tune", "--job-uuid", "o2", "--model", "m",
                  "--algorithm", "osft") == 0  # fmt: skip
    assert (
        submit(
            "preference_optimize",
            "--job-uuid",
            "o3",
            "--finetuned-model",
            "m",
            "--algorithm",
            "full",
            "--hyperparam-search-config",
            '{"kfp": {"osft": {"unfreeze_rank_ratio": 0.5}}}',
            "--osft-ratio",
            "0.2",
        )
        == 0
    )
    assert [c["hyperparam_search_config"] for c in sent] == [
        {"kfp": {"osft": {"unfreeze_rank_ratio": 0.3, "target_modules": ["q_proj", "down_proj"]},
                 "algorithm": "osft"}},
        {"kfp": {"algorithm": "osft"}},
        # --algorithm names it; the ratio merges over the config's osft field by field.
        {"kfp": {"osft": {"unfreeze_rank_ratio": 0.2}, "algorithm": "full"}},
    ]  # fmt: skip
    assert all(c["algorithm_config"] is None for c in sent[:2])  # no LoRA: OSFT decides


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--osft-ratio", "0"], "--osft-ratio"),
        (["--algorithm", "lora"], "'lora' is not one of 'full', 'osft'"),
        (["--evaluation", "{enabled: true"], "--evaluation: the inline value is not valid JSON"),
        (["--registry", "[1]"], "--registry: the inline value must hold a mapping, not list"),
        (["--hyperparam-search-config", '{"max_rows": 3}'], 'max_rows belong(s) under "kfp"'),
        (["--stages", "train,deploy"], "--stages: unknown stage 'deploy'"),
        (["--validation-fraction", "1"], "--validation-fraction"),
        (["--register", "s3"], "'s3' is not one of 'mlflow', 'kubeflow', 'none'"),
    ],
)
def test_bad_stage_flags_are_usage_errors_before_anything_is_sent(sent, capsys, flags, says):
    assert submit("supervised_fine_tune", "--model", "m", *flags) == 64
    assert says in capsys.readouterr().err
    assert sent == []
