"""What bench/gpu_train.py runs: the published model configurations, torchtune's recipe
settings for each, torchtune's published figures, and the plan of runs."""

from __future__ import annotations

from typing import Any

MAX_SEQ_LEN = 2048
# Dense bf16 tensor-core peak, FLOP/s, by a name that appears in torch's device name.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12,
              "A6000": 154.8e12}  # fmt: skip

_LLAMA_ROPE = {"high_freq_factor": 4.0, "low_freq_factor": 1.0,
               "original_max_position_embeddings": 8192, "rope_type": "llama3"}  # fmt: skip
_LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
          "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False,
          "initializer_range": 0.02, "max_position_embeddings": 131072, "pretraining_tp": 1,
          "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "vocab_size": 128256,
          "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]}  # fmt: skip
# The published config.json keys that set the sizes (meta-llama/*, Qwen/Qwen2.5-1.5B-Instruct).
MODELS: dict[str, dict[str, Any]] = {
    "llama-3.2-1b": {"family": "llama", "config": {
        **_LLAMA, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
        "tie_word_embeddings": True, "rope_scaling": {"factor": 32.0, **_LLAMA_ROPE}}},
    "qwen2.5-1.5b": {"family": "qwen2", "config": {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
        "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
        "num_attention_heads": 12, "num_key_value_heads": 2, "max_position_embeddings": 32768,
        "max_window_layers": 21, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
        "sliding_window": 32768, "use_sliding_window": False, "tie_word_embeddings": True,
        "vocab_size": 151936, "bos_token_id": 151643, "eos_token_id": 151645,
        "attention_dropout": 0.0, "initializer_range": 0.02}},
    "llama-3.2-3b": {"family": "llama", "config": {
        **_LLAMA, "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28,
        "num_attention_heads": 24, "num_key_value_heads": 8, "head_dim": 128,
        "tie_word_embeddings": True, "rope_scaling": {"factor": 32.0, **_LLAMA_ROPE}}},
    "llama-3.1-8b": {"family": "llama", "config": {
        **_LLAMA, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
        "tie_word_embeddings": False, "rope_scaling": {"factor": 8.0, **_LLAMA_ROPE}}},
}  # fmt: skip
# In this order: the runs with published figures first, so a cut-off call loses the others.
DEFAULT_MODELS = ["llama-3.2-3b", "llama-3.2-1b", "qwen2.5-1.5b"]
# --dry-run: the same architectures, 2 layers, width 64 (vocabularies kept: the special ids).
SCALED_DOWN = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}  # fmt: skip

# torchtune 0.6.1's single-device configs (recipes/configs/<family>/<size>_{lora,full}_single_
# device.yaml): batch size, activation checkpointing, lr; LoRA rank/alpha on q, v, output
# projections and the MLP. None: no such config (torchtune has no 8B full single-device run
# that fits; skipped). Full runs use plain AdamW where torchtune's configs use bitsandbytes.
RECIPES: dict[str, dict[str, dict[str, Any] | None]] = {
    "llama-3.2-1b": {"lora": {"batch": 4, "ckpt": False, "lr": 3e-4, "rank": 64, "alpha": 128},
                     "full": {"batch": 4, "ckpt": False, "lr": 2e-5}},
    "qwen2.5-1.5b": {"lora": {"batch": 2, "ckpt": False, "lr": 2e-3, "rank": 32, "alpha": 64},
                     "full": {"batch": 4, "ckpt": True, "lr": 2e-5}},
    "llama-3.2-3b": {"lora": {"batch": 4, "ckpt": True, "lr": 3e-4, "rank": 64, "alpha": 128},
                     "full": {"batch": 4, "ckpt": True, "lr": 2e-5}},
    "llama-3.1-8b": {"lora": {"batch": 2, "ckpt": True, "lr": 3e-4, "rank": 8, "alpha": 16},
                     "full": None},
}  # fmt: skip
# torchtune's published figures (its README's memory and speed table, as issue 21 quotes
# them): (model, algorithm, packed) -> (tokens/s, peak GiB or None, GPU).
PUBLISHED: dict[tuple[str, str, bool], tuple[float, float | None, str]] = {
    ("llama-3.2-3b", "lora", False): (8210, 8.5, "1x A100"),
    ("llama-3.2-3b", "full", True): (7075, None, "1x A100"),
    ("llama-3.1-8b", "lora", False): (4699, 30.3, "1x A6000"),
}
# What the training step must never import (the server's and the pipeline's side), checked on
# each run.
# (boto3 is not among them: accelerate, under peft, imports it whenever it is installed; the
# image has none, and `bench/gpu.sh gather` trains without it.)
FORBIDDEN = ("kfp", "llama_stack", "llama_stack_api", "llama_stack_client", "mlflow")


def plan_runs(models: list[str], algorithms: list[str], packing: list[bool],
              engines: list[str]) -> list[dict[str, Any]]:  # fmt: skip
    """Every configuration, model by model (weights made once per model)."""
    runs = []
    for model in models:
        for algorithm in algorithms:
            recipe = RECIPES[model][algorithm]
            if recipe is None:
                continue
            for packed in packing:
                for engine in engines:
                    if engine == "torchtune" and (
                        algorithm != "lora" or MODELS[model]["family"] != "llama"
                    ):
                        continue  # the torchtune engine: Llama-3 LoRA only
                    name = f"{model}-{algorithm}-{'packed' if packed else 'unpacked'}-{engine}"
                    runs.append({"name": name, "model": model, "algorithm": algorithm,
                                 "packed": packed, "engine": engine, **recipe})  # fmt: skip
    return runs


def model_config(model: str, dry_run: bool) -> dict[str, Any]:
    config = dict(MODELS[model]["config"])
    if dry_run:
        config.update(SCALED_DOWN)
    return config
