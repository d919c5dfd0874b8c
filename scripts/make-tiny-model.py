#!/usr/bin/env python3
"""Make a tiny random Llama-3-architecture model, offline, in Meta and/or Hugging Face layout.

Both layouts hold the same weights, so a checkpoint trained from one can be compared with the
other. The tokenizer is a tiktoken file of the 256 single bytes; Llama 3's special tokens sit
at ids 128000+ as in the real tokenizer, hence the vocabulary of 128256.

    python scripts/make-tiny-model.py --out /tmp/tiny            # /tmp/tiny/{meta,hf}
    python scripts/make-tiny-model.py --out /tmp/tiny --layers 4 --dim 128
"""

from __future__ import annotations

import argparse
import base64
import json
import math
from pathlib import Path

VOCAB = 128256


def tokenizer_lines() -> str:
    return "".join(f"{base64.b64encode(bytes([i])).decode()} {i}\n" for i in range(256))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="writes <out>/meta and <out>/hf")
    ap.add_argument("--layout", choices=["meta", "hf", "both"], default="both")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--untied", action="store_true", help="separate output projection")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    from safetensors.torch import save_file
    from torchtune.models import convert_weights

    multiple_of, ffn_mult = 32, 1.5
    hidden = multiple_of * math.ceil(int(ffn_mult * int(8 * args.dim / 3)) / multiple_of)
    tied = not args.untied
    gen = torch.Generator().manual_seed(args.seed)

    def normal(*shape, std=0.02):
        return torch.randn(*shape, generator=gen) * std

    head_dim = args.dim // args.heads
    # Larger embeddings than real models: LoRA leaves the (tied) head frozen, and with 0.02 a
    # 64-wide model could never put more than ~1 logit of margin on any token.
    sd = {
        "model.embed_tokens.weight": normal(VOCAB, args.dim, std=0.25),
        "model.norm.weight": torch.ones(args.dim),
    }
    for i in range(args.layers):
        p = f"model.layers.{i}."
        sd |= {
            p + "self_attn.q_proj.weight": normal(args.heads * head_dim, args.dim),
            p + "self_attn.k_proj.weight": normal(args.kv_heads * head_dim, args.dim),
            p + "self_attn.v_proj.weight": normal(args.kv_heads * head_dim, args.dim),
            p + "self_attn.o_proj.weight": normal(args.dim, args.heads * head_dim),
            p + "mlp.gate_proj.weight": normal(hidden, args.dim),
            p + "mlp.up_proj.weight": normal(hidden, args.dim),
            p + "mlp.down_proj.weight": normal(args.dim, hidden),
            p + "input_layernorm.weight": torch.ones(args.dim),
            p + "post_attention_layernorm.weight": torch.ones(args.dim),
        }
    if not tied:
        sd["lm_head.weight"] = normal(VOCAB, args.dim)

    if args.layout in ("hf", "both"):
        hf = args.out / "hf"
        (hf / "original").mkdir(parents=True, exist_ok=True)
        save_file(sd, hf / "model.safetensors", metadata={"format": "pt"})
        config = {  # the keys of the published Llama 3.2 config.json
            "architectures": ["LlamaForCausalLM"],
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": 128000,
            "eos_token_id": 128001,
            "head_dim": head_dim,
            "hidden_act": "silu",
            "hidden_size": args.dim,
            "initializer_range": 0.02,
            "intermediate_size": hidden,
            "max_position_embeddings": 131072,
            "mlp_bias": False,
            "model_type": "llama",
            "num_attention_heads": args.heads,
            "num_hidden_layers": args.layers,
            "num_key_value_heads": args.kv_heads,
            "pretraining_tp": 1,
            "rms_norm_eps": 1e-05,
            "rope_scaling": {
                "factor": 32.0 if tied else 8.0,
                "high_freq_factor": 4.0,
                "low_freq_factor": 1.0,
                "original_max_position_embeddings": 8192,
                "rope_type": "llama3",
            },
            "rope_theta": 500000.0,
            "tie_word_embeddings": tied,
            "torch_dtype": "float32",
            "vocab_size": VOCAB,
        }
        (hf / "config.json").write_text(json.dumps(config, indent=2))
        (hf / "original" / "tokenizer.model").write_text(tokenizer_lines())
        print(f"wrote {hf}")

    if args.layout in ("meta", "both"):
        meta = args.out / "meta"
        meta.mkdir(parents=True, exist_ok=True)
        tune = convert_weights.hf_to_tune(
            dict(sd), num_heads=args.heads, num_kv_heads=args.kv_heads, dim=args.dim
        )
        msd = convert_weights.tune_to_meta(tune)
        if tied:  # Meta checkpoints of tied models still store output.weight
            msd["output.weight"] = msd["tok_embeddings.weight"]
        torch.save(msd, meta / "consolidated.00.pth")
        params = {  # the keys of the published Llama 3.2 params.json
            "dim": args.dim,
            "ffn_dim_multiplier": ffn_mult,
            "multiple_of": multiple_of,
            "n_heads": args.heads,
            "n_kv_heads": args.kv_heads,
            "n_layers": args.layers,
            "norm_eps": 1e-05,
            "rope_theta": 500000.0,
            "use_scaled_rope": True,
            "vocab_size": VOCAB,
        }
        if not tied:
            params["tie_word_embeddings"] = False
        (meta / "params.json").write_text(json.dumps(params, indent=2))
        (meta / "tokenizer.model").write_text(tokenizer_lines())
        print(f"wrote {meta}")


if __name__ == "__main__":
    main()
