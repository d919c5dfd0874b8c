"""The inputs of bench/gpu_train.py, made on the spot (nothing downloaded): a byte-level
tokenizer per family, chat rows of known lengths, and random weights for a model config."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from gpu_configs import MODELS


def _llama3_specials() -> dict[str, int]:
    """Llama 3's special tokens at their ids (torchtune's LLAMA3_SPECIAL_TOKENS)."""
    named = {"<|begin_of_text|>": 128000, "<|end_of_text|>": 128001,
             "<|reserved_special_token_0|>": 128002, "<|reserved_special_token_1|>": 128003,
             "<|finetune_right_pad_id|>": 128004, "<|step_id|>": 128005,
             "<|start_header_id|>": 128006, "<|end_header_id|>": 128007, "<|eom_id|>": 128008,
             "<|eot_id|>": 128009, "<|python_tag|>": 128010, "<|video|>": 128012}  # fmt: skip
    reserved = {f"<|reserved_special_token_{2 + i}|>": 128013 + i for i in range(243)}
    return {**named, **reserved}


LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + "
    "'<|end_header_id|>\\n\\n' + m['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)
QWEN_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TOKENS = {
    "llama": {"specials": _llama3_specials(), "bos": "<|begin_of_text|>", "eos": "<|eot_id|>",
              "pad": "<|finetune_right_pad_id|>", "template": LLAMA3_TEMPLATE},
    "qwen2": {"specials": {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645},
              "bos": None, "eos": "<|im_end|>", "pad": "<|endoftext|>", "template": QWEN_TEMPLATE},
}  # fmt: skip


def _byte_chars() -> dict[int, str]:
    """GPT-2's byte-to-character table, the alphabet of byte-level BPE."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]  # fmt: skip
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def write_tokenizer(family: str, dest: Path) -> None:
    """A byte-level tokenizer (256 byte tokens with ids 0-255, no merges) with the family's
    special tokens at their real ids and its chat template: tokenizer.json for transformers,
    and for Llama the same vocabulary as the tiktoken file torchtune reads
    (original/tokenizer.model), so both engines make the same tokens."""
    import base64

    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    t = TOKENS[family]
    vocab = {c: b for b, c in _byte_chars().items()} | t["specials"]
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(s, special=True, normalized=False)
                             for s in t["specials"]])  # fmt: skip
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=t["bos"], eos_token=t["eos"], pad_token=t["pad"]
    )
    tok.chat_template = t["template"]
    tok.save_pretrained(dest)
    if family == "llama":
        (dest / "original").mkdir(exist_ok=True)
        lines = "".join(f"{base64.b64encode(bytes([i])).decode()} {i}\n" for i in range(256))
        (dest / "original" / "tokenizer.model").write_text(lines)


WORDS = ["the", "model", "learns", "to", "answer", "questions", "about", "tables,",
         "weights,", "kernels", "and", "tokens;", "every", "batch", "carries", "rows", "of",
         "lengths"]  # fmt: skip


def write_rows(path: Path, n: int, max_seq_len: int, seed: int) -> None:
    """`n` chats (the prepared `messages` rows both engines read) of 1/8 .. 15/16 of
    max_seq_len bytes, a quarter of it the question."""
    rng = random.Random(seed)

    def text(length: int) -> str:
        words: list[str] = []
        while sum(len(w) + 1 for w in words) < length:
            words.append(rng.choice(WORDS))
        return " ".join(words)[:length]

    with path.open("w") as fh:
        for _ in range(n):
            total = rng.randint(max_seq_len // 8, max_seq_len * 15 // 16 - 48)  # template room
            q = max(total // 4, 8)
            fh.write(json.dumps({"messages": [
                {"role": "user", "content": text(q)},
                {"role": "assistant", "content": text(total - q)}]}) + "\n")  # fmt: skip


def make_weights(cfg: dict) -> dict:
    """Random weights for the model's config, drawn on the device in bf16, written as
    safetensors with the tokenizer files."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    dest = Path(cfg["dest"])
    dest.mkdir(parents=True, exist_ok=True)
    config_dict = dict(cfg["config"])
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    device = "cuda" if cfg["device"] == "cuda" else "cpu"
    start = time.perf_counter()
    torch.manual_seed(cfg["seed"])
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    drawn = time.perf_counter() - start
    model.save_pretrained(dest, max_shard_size="5GB")
    write_tokenizer(MODELS[cfg["model"]]["family"], dest)
    params = sum(p.numel() for p in model.parameters())  # tied weights once
    return {"parameters": params, "draw_seconds": round(drawn, 2),
            "write_seconds": round(time.perf_counter() - start - drawn, 2)}  # fmt: skip
