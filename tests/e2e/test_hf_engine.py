"""The Hugging Face engine through the real server: llama-stack's own post-training SFT request
(upstream tests/integration/post_training/test_post_training.py) sent unchanged, full
fine-tuning when algorithm_config is omitted, and LoRA on a model with fused projections and
no chat template. Tiny models of each family are made on the fly (harness/tiny_families.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hf_cache import make_hf_cache
from model_checks import logits

from harness.demo_data import instruct_rows
from harness.tiny_families import make
from llama_stack_provider_kfp.client import job_artifacts, job_status

from .helpers import new_id, register_rows, submit, training_config, wait_done

pytestmark = pytest.mark.e2e

LOGIT_ATOL = 1e-4


def _differs(base: Path, trained: Path) -> float:
    return float((logits(base) - logits(trained)).abs().max())


def test_upstream_sft_request_unchanged(client, hf_home, tmp_path):
    repo = "HuggingFaceTB/SmolLM2-135M-Instruct"
    base = make("smollm2", tmp_path / "smollm2")
    make_hf_cache(hf_home, repo, base)
    # Rows shaped like upstream's llamastack/simpleqa (instruct format).
    rows = [{"input_query": f"Who is {n}?", "expected_answer": f"{n} is a person.",
             "chat_completion_input": json.dumps([{"role": "user", "content": f"Who is {n}?"}])}
            for n in ("Ada", "Alan", "Grace", "Linus")]  # fmt: skip
    dataset = register_rows(client, tmp_path, rows)
    job = new_id("upstream-sft")
    client.alpha.post_training.supervised_fine_tune(
        job_uuid=job,
        model=repo,
        algorithm_config={"type": "LoRA", "lora_attn_modules": ["q_proj", "v_proj", "output_proj"],
                          "apply_lora_to_mlp": True, "apply_lora_to_output": False,
                          "rank": 8, "alpha": 16},
        training_config={"n_epochs": 1, "max_steps_per_epoch": 1, "gradient_accumulation_steps": 1,
                         "data_config": {"dataset_id": dataset, "batch_size": 1, "shuffle": False,
                                         "data_format": "instruct"}},
        hyperparam_search_config={},
        logger_config={},
        checkpoint_dir=None,
    )  # fmt: skip
    status = wait_done(client, job)
    assert status["status"] == "completed", status["resources_allocated"]
    res = status["resources_allocated"]
    assert res["engine"]["name"] == "huggingface"
    assert "not torchtune" in res["engine"]["reason"]  # no tiktoken tokenizer: said why
    assert res["dtype"] == "bf16" and res["progress"]["step"] == 1
    (ckpt,) = job_artifacts(client, job)["checkpoints"]
    epoch = Path(ckpt["path"])
    adapter = json.loads((epoch / "adapter" / "adapter_config.json").read_text())
    targets = set(adapter["target_modules"])
    assert {"self_attn.q_proj", "self_attn.v_proj", "self_attn.o_proj"} <= targets
    assert {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"} <= targets
    assert _differs(base, epoch / "merged") > 0  # one step at the default lr moved it


def test_full_fine_tuning_when_algorithm_config_is_omitted(client, tmp_path):
    base = make("qwen2", tmp_path / "qwen2")
    dataset = register_rows(client, tmp_path, instruct_rows(24, seed=3))
    job = new_id("full")
    tc = training_config(dataset, n_epochs=3, optimizer_config={"lr": 2e-3})
    submit(client, job, str(base), dataset, algorithm_config=None, training_config=tc)
    status = wait_done(client, job)
    assert status["status"] == "completed", status["resources_allocated"]
    res = status["resources_allocated"]
    assert res["engine"]["name"] == "huggingface"
    assert res["result"]["final_loss"] < 0.8 * res["result"]["first_loss"]
    last = Path(status["checkpoints"][-1]["path"])
    assert not (last / "adapter").exists()  # full fine-tuning: merged weights only
    assert (last / "merged" / "tokenizer.json").is_file()
    assert _differs(base, last / "merged") > 0.1


def test_lora_on_fused_projections_without_chat_template(client, tmp_path):
    # GPT-2: q/v live in the fused c_attn, the attention output is c_proj, no chat template and
    # no pad token. The PEFT adapter on the base gives the merged checkpoint's logits.
    base = make("gpt2", tmp_path / "gpt2")
    dataset = register_rows(client, tmp_path, instruct_rows(24, seed=4))
    job = new_id("gpt2")
    algo = {
        "type": "LoRA",
        "lora_attn_modules": ["q_proj", "v_proj", "output_proj"],
        "apply_lora_to_mlp": False,
        "apply_lora_to_output": False,
        "rank": 8,
        "alpha": 16,
    }
    tc = training_config(dataset, n_epochs=2)
    submit(client, job, str(base), dataset, algorithm_config=algo, training_config=tc)
    status = wait_done(client, job)
    assert status["status"] == "completed", status["resources_allocated"]
    res = status["resources_allocated"]
    assert res["result"]["final_loss"] < res["result"]["first_loss"]
    last = Path(status["checkpoints"][-1]["path"])
    adapter = json.loads((last / "adapter" / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {"attn.c_attn", "attn.c_proj"}
    merged = logits(last / "merged")
    assert float((merged - logits(base)).abs().max()) > 1e-3
    assert torch.allclose(logits(base, last / "adapter"), merged, atol=LOGIT_ATOL, rtol=0)


def test_unknown_module_names_list_the_models_own(client, server, tmp_path):
    from llama_stack_client import APIStatusError

    base = make("gpt2", tmp_path / "gpt2-names")
    dataset = register_rows(client, tmp_path, instruct_rows(8))
    algo = {"type": "LoRA", "lora_attn_modules": ["gate_proj"], "apply_lora_to_mlp": False,
            "apply_lora_to_output": False, "rank": 8, "alpha": 16}  # fmt: skip
    job = new_id("names")
    with pytest.raises(APIStatusError) as err:
        submit(client, job, str(base), dataset, algorithm_config=algo)
    assert err.value.status_code == 400
    assert "gate_proj" in str(err.value) and "attn.c_attn" in str(err.value)
    assert not (server.jobs_dir / job).exists()
    with pytest.raises(APIStatusError):
        job_status(client, job)


def _preference_rows(n: int, seed: int = 0) -> list[dict]:
    """hh-rlhf style rows (as upstream's trl-internal-testing dataset): a prompt string, and
    chosen / rejected as whole conversations that repeat it."""
    import random

    rng = random.Random(seed)
    names = ["Ada", "Alan", "Grace", "Linus", "Ken", "Tim", "Barbara"]
    rows = []
    for _ in range(n):
        name = rng.choice(names)
        ask = {"role": "user", "content": f"Greet {name}."}
        rows.append({
            "prompt": ask["content"],
            "chosen": [ask, {"role": "assistant", "content": f"Hello, {name}! Nice to meet you."}],
            "rejected": [ask, {"role": "assistant", "content": "Go away."}],
        })  # fmt: skip
    return rows


def test_upstream_dpo_request_unchanged(client, hf_home, tmp_path):
    base = make("gpt2", tmp_path / "distilgpt2")
    make_hf_cache(hf_home, "distilgpt2", base)
    dataset = register_rows(client, tmp_path, _preference_rows(6))
    job = new_id("upstream-dpo")
    client.alpha.post_training.preference_optimize(
        job_uuid=job,
        finetuned_model="distilgpt2",
        algorithm_config={"beta": 0.1, "loss_type": "sigmoid"},
        training_config={"n_epochs": 1, "max_steps_per_epoch": 1, "gradient_accumulation_steps": 1,
                         "data_config": {"dataset_id": dataset, "batch_size": 1, "shuffle": False,
                                         "data_format": "dialog"}},
        hyperparam_search_config={},
        logger_config={},
    )  # fmt: skip
    status = wait_done(client, job)
    assert status["status"] == "completed", status["resources_allocated"]
    res = status["resources_allocated"]
    assert res["engine"]["name"] == "huggingface" and res["progress"]["step"] == 1
    assert "reward_margin" in res["progress"]
    (ckpt,) = job_artifacts(client, job)["checkpoints"]
    epoch = Path(ckpt["path"])
    assert (epoch / "adapter" / "adapter_config.json").is_file()  # LoRA DPO by default
    assert _differs(base, epoch / "merged") > 0


def test_dpo_raises_the_margin(client, tmp_path):
    base = make("smollm2", tmp_path / "smollm2-dpo")
    rows = _preference_rows(24, seed=5)
    dataset = register_rows(client, tmp_path, rows)
    validation = register_rows(client, tmp_path, _preference_rows(8, seed=6))
    job = new_id("dpo")
    tc = training_config(dataset, n_epochs=2, optimizer_config={"lr": 1e-2},
                         data_config={"validation_dataset_id": validation})  # fmt: skip
    client.alpha.post_training.preference_optimize(
        job_uuid=job, finetuned_model=str(base),
        algorithm_config={"beta": 0.1, "loss_type": "sigmoid"}, training_config=tc,
        hyperparam_search_config={}, logger_config={},
    )  # fmt: skip
    status = wait_done(client, job)
    assert status["status"] == "completed", status["resources_allocated"]
    epochs = [json.loads((Path(c["path"]) / "metrics.json").read_text())
              for c in status["checkpoints"]]  # fmt: skip
    assert epochs[-1]["validation_reward_margin"] > epochs[0]["validation_reward_margin"] > 0
    assert epochs[-1]["validation_reward_accuracy"] == 1.0
    assert status["checkpoints"][-1]["training_metrics"]["validation_loss"] < 0.69  # < log 2
    history = status["resources_allocated"]["loss_history"]
    assert history[-1][1] < history[0][1]


def test_dpo_rows_are_checked_and_kto_pair_is_refused(client, server, tmp_path):
    from llama_stack_client import APIStatusError

    base = make("gpt2", tmp_path / "gpt2-dpo-bad")
    bad = register_rows(client, tmp_path, [{"prompt": "Hi?", "chosen": "Hello!"}])
    good = register_rows(client, tmp_path, _preference_rows(4))
    for dataset, algo, code, words in (
        (bad, {"beta": 0.1, "loss_type": "sigmoid"}, 400, ["row 1", "rejected"]),
        (good, {"beta": 0.1, "loss_type": "kto_pair"}, 501, ["kto_pair", "sigmoid"]),
    ):
        job = new_id("dpo-bad")
        with pytest.raises(APIStatusError) as err:
            client.alpha.post_training.preference_optimize(
                job_uuid=job, finetuned_model=str(base), algorithm_config=algo,
                training_config=training_config(dataset), hyperparam_search_config={},
                logger_config={},
            )  # fmt: skip
        assert err.value.status_code == code
        for w in words:
            assert w in str(err.value)
        assert not (server.jobs_dir / job).exists()
