"""The Hugging Face engine versus the torchtune engine on the same Llama model and job.

The tiny Llama-3.2-style model of the other benchmarks gets a Hugging Face tokenizer converted
from its own tiktoken file (transformers' tiktoken converter) with Llama 3's chat template, so
both engines train on the same token sequences. Each repeat runs both engines back to back
(alternating which goes first) through the train step (`training.steps.train_step`, as the
pipeline's step calls it), in fresh processes; reported per engine: label tokens/s (median of
steps 2..N), peak RSS, final loss, and the paired ratio HF / torchtune of label tokens/s
(target: the HF engine within 10% of the faster engine).

    python bench/engines.py [--repeats 5] [--rows 96]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import job_spec, make_tiny, paired_verdict, save, summary

from harness.demo_data import instruct_rows
from llama_stack_provider_kfp.boundary.data_uri import write_jsonl
from llama_stack_provider_kfp.boundary.model_source import inspect_model_dir
from llama_stack_provider_kfp.core.spec import EngineChoice

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + "
    "'<|end_header_id|>\\n\\n' + m['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)
TARGET = 0.90

RUN = """
import json, sys
from pathlib import Path
from llama_stack_provider_kfp.core.spec import JobSpec
from llama_stack_provider_kfp.training.prepare import prepare
from llama_stack_provider_kfp.training.steps import train_step
spec = JobSpec.model_validate_json(sys.argv[1])
work = Path(sys.argv[2])
js = spec.model_dump_json()
prepare(spec, str(work / "t.jsonl"), str(work / "v.jsonl"))
r = train_step(js, spec.model.path, spec.output_uri, str(work / "t.jsonl"), str(work / "v.jsonl"))
print(json.dumps({k: r[k] for k in ("trained_tokens_per_second", "tokens_per_second",
                                    "peak_memory_mb", "final_loss", "global_step")}))
"""


def add_hf_tokenizer(model_dir: Path) -> None:
    """tokenizer.json from the tiktoken file, with Llama 3's special tokens and template."""
    if (model_dir / "tokenizer.json").is_file():
        return
    from tiktoken import Encoding
    from tiktoken.load import load_tiktoken_bpe
    from torchtune.models.llama3._tokenizer import CL100K_PATTERN, LLAMA3_SPECIAL_TOKENS
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.tiktoken import convert_tiktoken_to_fast

    ranks = load_tiktoken_bpe(str(model_dir / "original" / "tokenizer.model"))
    encoding = Encoding("tiny-llama3", pat_str=CL100K_PATTERN, mergeable_ranks=ranks,
                        special_tokens=LLAMA3_SPECIAL_TOKENS)  # fmt: skip
    convert_tiktoken_to_fast(encoding, str(model_dir))
    tok = PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"),
                                  bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                  pad_token="<|finetune_right_pad_id|>")  # fmt: skip
    tok.chat_template = LLAMA3_TEMPLATE
    tok.save_pretrained(model_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rows", type=int, default=96)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    model_dir = make_tiny(tmp / "tiny")
    add_hf_tokenizer(model_dir)
    assert inspect_model_dir("tiny", model_dir).hf_tokenizer
    data = write_jsonl(instruct_rows(args.rows), tmp / "rows.jsonl")
    runs: dict[str, list[dict]] = {"torchtune": [], "huggingface": []}
    paired: list[float] = []
    for r in range(args.repeats):
        order = ("huggingface", "torchtune") if r % 2 else ("torchtune", "huggingface")
        for engine in order:
            work = tmp / f"{engine}-{r}"
            work.mkdir()
            spec = job_spec(model_dir, data, work / "out", epochs=1)
            spec = spec.model_copy(update={"engine": EngineChoice(name=engine, reason="bench")})
            out = subprocess.run([sys.executable, "-c", RUN, spec.model_dump_json(), str(work)],
                                 check=True, capture_output=True, text=True)  # fmt: skip
            runs[engine].append(json.loads(out.stdout.strip().splitlines()[-1]))
            m = runs[engine][-1]
            print(
                f"{engine:12s} run {r}: {m['trained_tokens_per_second']:.0f} label tok/s, "
                f"peak {m['peak_memory_mb']:.0f} MB, final loss {m['final_loss']:.3f}"
            )
        hf, tt = (runs[e][-1]["trained_tokens_per_second"] for e in ("huggingface", "torchtune"))
        paired.append(hf / tt)
    ratio = summary(paired)
    # Within 10% of the faster engine: HF/torchtune >= 0.9 (HF slower) or simply >= 1.
    verdict = paired_verdict(paired, TARGET)
    save("engines", {
        "what": "label tokens/s per optimizer step (median of steps 2..N), same model and rows",
        "rows": args.rows, "repeats": args.repeats,
        **{f"{e}_tokens_per_second": summary([m["trained_tokens_per_second"] for m in runs[e]])
           for e in runs},
        **{f"{e}_peak_rss_mb": summary([m["peak_memory_mb"] for m in runs[e]]) for e in runs},
        **{f"{e}_final_loss": summary([m["final_loss"] for m in runs[e]]) for e in runs},
        "paired_ratios": [round(p, 3) for p in paired],
        "ratio_hf_over_torchtune": ratio,
        "target": ">= 0.90 (within 10% of the faster engine)",
        "verdict": verdict,
    })  # fmt: skip
    print(f"paired HF/torchtune: {[round(p, 3) for p in paired]}; {verdict}")


if __name__ == "__main__":
    main()
