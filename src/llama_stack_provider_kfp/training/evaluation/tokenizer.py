"""A Hugging Face tokenizer for every checkpoint, so transformers and lm-eval's `hf` model type
can read it: the model's own tokenizer files, or one made here from a Llama 3 tiktoken file.

Meta-layout checkpoints and Llama 3 repos trained by torchtune carry only the tiktoken
`tokenizer.model` (`base64(bytes) rank` per line). transformers' TikTokenConverter turns it into
a byte-level BPE `tokenizer.json`; Llama 3's 256 special tokens sit at ids 128000-128255 as in
Meta's tokenizer (and torchtune's), whatever the size of the byte-pair vocabulary, and the chat
template is Llama 3's (what torchtune's Llama3Tokenizer renders: a header per message, the
content stripped, <|eot_id|> after it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..huggingface import data

LLAMA3_SPECIAL_START = 128000
LLAMA3_SPECIAL_COUNT = 256
_NAMED = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
    "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
]  # fmt: skip
LLAMA3_SPECIAL_TOKENS = _NAMED + [
    f"<|reserved_special_token_{i}|>" for i in range(3, 3 + LLAMA3_SPECIAL_COUNT - len(_NAMED))
]
# Meta's Llama 3 Instruct template (tokenizer_config.json of the published repos).
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + "
    "message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
_HF_FILES = ("tokenizer.json", "tokenizer_config.json")
TIKTOKEN_FILES = ("original/tokenizer.model", "tokenizer.model")


def has_hf_tokenizer(model_dir: Path) -> bool:
    return any((model_dir / name).is_file() for name in _HF_FILES)


def tiktoken_file(model_dir: Path) -> Path | None:
    for name in TIKTOKEN_FILES:
        path = model_dir / name
        if path.is_file():
            return path
    return None


def write_llama3_tokenizer(tiktoken_path: Path, out: Path, vocab_size: int | None = None) -> Path:
    """`out` with tokenizer.json + tokenizer_config.json made from a Llama 3 tiktoken file."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    converter = TikTokenConverter(vocab_file=str(tiktoken_path))
    vocab, merges = converter.extract_vocab_merges_from_model(str(tiktoken_path))
    if len(vocab) > LLAMA3_SPECIAL_START:
        raise ValueError(
            f"{tiktoken_path}: {len(vocab)} byte-pair tokens overlap Llama 3's special tokens "
            f"(ids {LLAMA3_SPECIAL_START}+); this is not a Llama 3 tokenizer"
        )
    if vocab_size is not None and vocab_size < LLAMA3_SPECIAL_START + LLAMA3_SPECIAL_COUNT:
        raise ValueError(
            f"the model's vocabulary ({vocab_size}) has no room for Llama 3's special tokens "
            f"(ids {LLAMA3_SPECIAL_START}-{LLAMA3_SPECIAL_START + LLAMA3_SPECIAL_COUNT - 1})"
        )
    # The special tokens keep their ids: put them in the model's vocabulary first, then mark
    # them special (an added token already in the vocabulary keeps its id).
    for i, token in enumerate(LLAMA3_SPECIAL_TOKENS):
        vocab[token] = LLAMA3_SPECIAL_START + i
    tok = Tokenizer(BPE(vocab, merges, fuse_unk=False, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(converter.pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True)
                            for t in LLAMA3_SPECIAL_TOKENS])  # fmt: skip
    bos = LLAMA3_SPECIAL_TOKENS[0]
    # Text encoded without a template starts with <|begin_of_text|>, as Meta's tokenizer.json.
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                      special_tokens=[(bos, LLAMA3_SPECIAL_START)]),
    ])  # fmt: skip
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
        model_max_length=131072,
    )
    fast.chat_template = LLAMA3_CHAT_TEMPLATE
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    return out


def load_tokenizer(model_dir: Path, scratch: Path, vocab_size: int | None = None) -> Any:
    """The model's tokenizer, with a chat template and a padding token: its own files, else
    one written under `scratch` from its tiktoken file."""
    from transformers import AutoTokenizer

    if has_hf_tokenizer(model_dir):
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    else:
        found = tiktoken_file(model_dir)
        if found is None:
            raise ValueError(f"{model_dir}: no tokenizer (tokenizer.json or tiktoken file)")
        tokenizer = AutoTokenizer.from_pretrained(
            write_llama3_tokenizer(found, scratch, vocab_size)
        )
    if not tokenizer.chat_template:
        tokenizer.chat_template = data.FALLBACK_CHAT_TEMPLATE
    if tokenizer.pad_token_id is None:  # GPT-2 family: padding is masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
