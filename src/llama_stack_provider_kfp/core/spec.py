"""The job specification: plain pydantic, no llama-stack, KFP or torch types.

A JobSpec is everything a pipeline run needs. It never holds a secret value.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Layout = Literal["meta", "huggingface"]
DataFormat = Literal["instruct", "dialog"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelArch(_Strict):
    """Llama-3-architecture dimensions read from params.json / config.json."""

    vocab_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    embed_dim: int
    intermediate_dim: int
    norm_eps: float
    rope_base: float
    # None: plain RoPE (Llama 3.0); a number: Llama 3.1-style scaled RoPE.
    rope_scale_factor: float | None
    tie_word_embeddings: bool

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


class ModelSpec(_Strict):
    name: str = Field(description="What the request named: descriptor, repo id or path.")
    family: str = Field(default="llama", description="Architecture family (HF model_type).")
    path: str = Field(
        description="Where the weights are, as a Location: a local directory, "
        "s3://bucket/key(.tar.gz), hf://<repo id> (downloaded by the step), or "
        "pvc://<claim>/<path> (mounted)."
    )
    layout: Layout | None = Field(description="None until a PVC is mounted by the step.")
    checkpoint_files: list[str]
    tokenizer_file: str = Field(description="tiktoken tokenizer.model, relative to path.")
    # None for weights on a PVC: only the train step can read them.
    arch: ModelArch | None


class DataSpec(_Strict):
    uri: str = Field(description="Training rows: local path, file://, data:, huggingface://.")
    data_format: DataFormat
    validation_uri: str | None = None
    # Used only when validation_uri is None.
    validation_fraction: float = 0.0


class LoraSpec(_Strict):
    rank: int
    alpha: float
    attn_modules: list[Literal["q_proj", "k_proj", "v_proj", "output_proj"]]
    apply_to_mlp: bool
    apply_to_output: bool
    use_dora: bool = False


class OptimSpec(_Strict):
    type: Literal["adam", "adamw", "sgd"]
    lr: float
    weight_decay: float
    warmup_steps: int


class TrainSpec(_Strict):
    epochs: int
    max_steps_per_epoch: int | None
    gradient_accumulation_steps: int
    batch_size: int
    shuffle: bool
    train_on_input: bool
    dtype: Literal["fp32", "bf16", "fp16"]
    max_validation_steps: int | None
    max_seq_len: int
    seed: int
    device: Literal["auto", "cpu", "cuda"]
    enable_activation_checkpointing: bool = False
    enable_activation_offloading: bool = False


class EngineChoice(_Strict):
    """Which training engine runs the job, and why it was chosen (shown in the status)."""

    name: str
    reason: str


# Records written before engines were selectable were all trained by torchtune.
_LEGACY_ENGINE = EngineChoice(name="torchtune", reason="the only engine when the job was made")


class JobSpec(_Strict):
    job_uuid: str
    engine: EngineChoice = _LEGACY_ENGINE
    model: ModelSpec
    data: DataSpec
    train: TrainSpec
    lora: LoraSpec
    optim: OptimSpec
    output_format: Layout | None = Field(description="None: the layout of the input weights.")
    output_uri: str = Field(description="Where the job's results go; chosen by the provider.")
