"""Tiny random models of published Hugging Face families, made on the fly (nothing downloaded).

Each uses its family's own transformers config class with the published config.json keys and
the sizes shrunk, its published chat template and special tokens, and a byte-level BPE
tokenizer trained here on a few sentences (so the vocabulary is a few hundred tokens).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n{SYSTEM}<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + message['content'] + eos_token }}{% endif %}{% endfor %}"
)
GRANITE = (
    "{%- for message in messages %}{{- '<|start_of_role|>' + message['role'] + "
    "'<|end_of_role|>' + message['content'] + '<|end_of_text|>\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_of_role|>assistant<|end_of_role|>' }}{%- endif %}"
)
PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
    "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

CORPUS = [
    "Greet Ada. Hello, Ada! Nice to meet you.",
    "What is the capital of France? Paris is the capital of France.",
    "The quick brown fox jumps over the lazy dog.",
    "You are a helpful assistant. system user assistant",
] * 20

# family -> (config class, published keys with the sizes shrunk, special tokens, chat template)
FAMILIES: dict[str, dict[str, Any]] = {
    # HuggingFaceTB/SmolLM2-135M-Instruct: Llama architecture, tied embeddings, tokenizer.json.
    "smollm2": {
        "config": "LlamaConfig",
        "keys": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_act": "silu",
                 "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
                 "tie_word_embeddings": True, "attention_bias": False, "mlp_bias": False},
        "special": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "bos": "<|im_start|>", "eos": "<|im_end|>", "pad": "<|im_end|>",
        "template": CHATML.replace("{SYSTEM}", SMOLLM2_SYSTEM),
    },
    # Qwen/Qwen2.5-0.5B-Instruct: attention biases on q/k/v, tied embeddings.
    "qwen2": {
        "config": "Qwen2Config",
        "keys": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_act": "silu",
                 "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
                 "tie_word_embeddings": True, "use_sliding_window": False},
        "special": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "bos": None, "eos": "<|im_end|>", "pad": "<|endoftext|>",
        "template": CHATML.replace("{SYSTEM}", QWEN_SYSTEM),
    },
    # distilgpt2: fused c_attn, Conv1D layers, no chat template, no pad token.
    "gpt2": {
        "config": "GPT2Config",
        "keys": {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 1024,
                 "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5},
        "special": ["<|endoftext|>"],
        "bos": "<|endoftext|>", "eos": "<|endoftext|>", "pad": None,
        "template": None,
    },
    # mistralai/Mistral-7B-Instruct-v0.3: [INST] template, untied, no attention biases.
    "mistral": {
        "config": "MistralConfig",
        "keys": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_act": "silu",
                 "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 1000000.0,
                 "sliding_window": None, "tie_word_embeddings": False},
        "special": ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"],
        "bos": "<s>", "eos": "</s>", "pad": None,
        "template": MISTRAL,
    },
    # ibm-granite/granite-3.0-2b-instruct: Llama-like with muP-style multipliers, tied.
    "granite": {
        "config": "GraniteConfig",
        "keys": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_act": "silu",
                 "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                 "embedding_multiplier": 12.0, "logits_scaling": 8.0,
                 "residual_multiplier": 0.22, "attention_multiplier": 0.015625,
                 "tie_word_embeddings": True},
        "special": ["<|end_of_text|>", "<|start_of_role|>", "<|end_of_role|>"],
        "bos": "<|end_of_text|>", "eos": "<|end_of_text|>", "pad": "<|end_of_text|>",
        "template": GRANITE,
    },
    # microsoft/Phi-3-mini-4k-instruct: fused qkv_proj and gate_up_proj, untied.
    "phi3": {
        "config": "Phi3Config",
        "keys": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "num_key_value_heads": 4, "hidden_act": "silu",
                 "max_position_embeddings": 2048, "original_max_position_embeddings": 2048,
                 "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False},
        "special": ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>", "<|system|>"],
        "bos": "<|endoftext|>", "eos": "<|endoftext|>", "pad": "<|endoftext|>",
        "template": PHI3,
    },
}  # fmt: skip


def _tokenizer(spec: dict[str, Any]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=spec["special"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=spec["bos"],
        eos_token=spec["eos"],
        pad_token=spec["pad"],
    )
    if spec["template"]:
        fast.chat_template = spec["template"]
    return fast


def make(family: str, out: Path, seed: int = 0) -> Path:
    """Write a tiny `family` model (config.json, model.safetensors, tokenizer files) to `out`."""
    import torch
    import transformers

    spec = FAMILIES[family]
    tokenizer = _tokenizer(spec)
    ids = {name: tokenizer.convert_tokens_to_ids(spec[name]) if spec[name] else None
           for name in ("bos", "eos", "pad")}  # fmt: skip
    config_class = getattr(transformers, spec["config"])
    config = config_class(
        vocab_size=len(tokenizer),
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
        **spec["keys"],
    )
    config.architectures = [
        "GPT2LMHeadModel" if family == "gpt2" else f"{spec['config'][:-6]}ForCausalLM"
    ]
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # transformers 5 names its own backend class here, which transformers 4 cannot load;
    # published repos name a class both load (their tokenizer.json does the work).
    config_file = out / "tokenizer_config.json"
    tok_config = json.loads(config_file.read_text())
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_file.write_text(json.dumps(tok_config, indent=2))
    return out
