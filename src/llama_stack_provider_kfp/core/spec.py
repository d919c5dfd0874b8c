"""The job specification: plain pydantic, no llama-stack, KFP or torch types.

A JobSpec is everything a pipeline run needs. It never holds a secret value.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .http_policy import HttpPolicy
from .tracking import TrackingSpec

Layout = Literal["meta", "huggingface"]
# preference: prompt / chosen / rejected rows (DPO), whatever data_format the request named.
DataFormat = Literal["instruct", "dialog", "preference"]
OptimizerType = Literal["adam", "adamw", "sgd"]
DType = Literal["fp32", "bf16", "fp16"]


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
    tokenizer_file: str = Field(
        description="tiktoken tokenizer.model relative to path; empty when the model has none."
    )
    hf_tokenizer: bool = Field(
        default=False, description="tokenizer.json / tokenizer_config.json are there."
    )
    tied: bool | None = Field(
        default=None, description="Output projection tied to the embeddings; None: unknown."
    )
    modules: list[str] = Field(
        default_factory=list,
        description="Paths of the model's weight matrices below the layer index "
        "(self_attn.q_proj, mlp.up_proj, lm_head, ...); empty when unknown at submit.",
    )
    # Llama-3 dimensions (what torchtune builds); None for other families and unread weights.
    arch: ModelArch | None

    @property
    def is_tied(self) -> bool:
        if self.tied is not None:
            return self.tied
        return bool(self.arch and self.arch.tie_word_embeddings)


class DataSpec(_Strict):
    uri: str = Field(
        description="Training rows: local path, file://, s3://, https://, http://, hf://, "
        "huggingface://, pvc:// (remote), data:."
    )
    data_format: DataFormat
    validation_uri: str | None = None
    # Used only when validation_uri is None.
    validation_fraction: float = 0.0
    # Only the first max_rows rows of the training dataset (before the validation split).
    max_rows: int | None = None
    # How https:// and http:// datasets are read (no secret: a token by its variable's name).
    http: HttpPolicy = HttpPolicy()


class LoraSpec(_Strict):
    rank: int
    alpha: float
    # torchtune's names (q_proj, k_proj, v_proj, output_proj): what the torchtune engine builds.
    attn_modules: list[str]
    apply_to_mlp: bool
    apply_to_output: bool
    use_dora: bool = False
    # QLoRA: the frozen base weights are quantized (torchtune: NF4).
    quantize_base: bool = False
    # As the request named them (either spelling); the train step resolves them again against
    # the loaded model, so nothing is dropped when the weights were unreadable at submit.
    requested_modules: list[str] = []
    # The model's own module paths (PEFT target_modules) as resolved at submit.
    target_modules: list[str] = []


class OptimSpec(_Strict):
    type: OptimizerType
    lr: float
    weight_decay: float
    # Warm-up in optimizer steps; None: `warmup_ratio` of the job's steps (omitted optimizer).
    warmup_steps: int | None
    warmup_ratio: float = 0.0

    def warmup(self, total_steps: int) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return int(self.warmup_ratio * total_steps)


class TrainSpec(_Strict):
    epochs: int
    max_steps_per_epoch: int | None
    gradient_accumulation_steps: int
    batch_size: int
    shuffle: bool
    train_on_input: bool
    # Several samples per max_seq_len row, each attending only to itself.
    packed: bool = False
    dtype: DType
    max_validation_steps: int | None
    max_seq_len: int
    seed: int
    device: Literal["auto", "cpu", "cuda"]
    enable_activation_checkpointing: bool = False
    enable_activation_offloading: bool = False
    # Processes training together (one per device), each on its share of every batch.
    ranks: int = 1
    # Ask for FSDP with several ranks: torchtune's distributed recipe, and on the Hugging Face
    # engine FSDP2 instead of DDP (training/huggingface/sharding.py says when it shards unasked).
    fsdp_cpu_offload: bool = False
    memory_efficient_fsdp_wrap: bool = False
    # How the Hugging Face engine spreads the model over several ranks: "auto" picks DDP or
    # FSDP (training/huggingface/sharding.py); "ddp" always replicates it, as every job did
    # before FSDP existed there (records from then keep training as they were started).
    sharding: Literal["ddp", "auto"] = "ddp"
    # A checkpoint with training state every N optimizer steps (besides each epoch's); the
    # newest `keep_step_checkpoints` of them are kept. None: per epoch only.
    checkpoint_every_steps: int | None = None
    keep_step_checkpoints: int = 2
    # Machines training together, `ranks` processes each (a Kubeflow Trainer TrainJob).
    nodes: int = 1
    # Gradients clipped to this total L2 norm before each optimizer step; None: no clipping
    # (what records written before clipping existed trained with, so they resume unclipped).
    max_grad_norm: float | None = None
    # An epoch whose micro-batches leave its last accumulation group short (fewer than
    # gradient_accumulation_steps): "step" (every engine) makes that group an optimizer step of
    # its own, averaged over its own label tokens, so every row trains every epoch and one
    # request counts the same steps on either engine (JobSpec.steps_per_epoch). "engine": each
    # engine's own rule, what records from before this field trained with (torchtune: no step
    # for it, its gradients carried into the next epoch's first step; Hugging Face: "step").
    short_last_group: Literal["step", "engine"] = "engine"


class EngineChoice(_Strict):
    """Which training engine runs the job, and why it was chosen (shown in the status)."""

    name: str
    reason: str


# Records written before engines were selectable were all trained by torchtune.
_LEGACY_ENGINE = EngineChoice(name="torchtune", reason="the only engine when the job was made")


class DPOSpec(_Strict):
    beta: float
    loss_type: Literal["sigmoid", "hinge", "ipo"]


class OSFTSpec(_Strict):
    """Orthogonal Subspace Fine-Tuning: the top singular directions of each target matrix
    stay frozen, the rest train (training/huggingface/osft.py)."""

    # The fraction of each matrix's singular directions that train, in (0, 1].
    unfreeze_rank_ratio: float
    # As the request or provider config named them (either spelling); empty: every attention
    # and MLP projection.
    requested_modules: list[str] = []
    # The model's own module paths, resolved at submit or by the train step that fetched the
    # weights.
    target_modules: list[str] = []
    # Freeze the embeddings, norms and biases too (default: they train freely).
    freeze_non_targets: bool = False


def algorithm(
    lora: LoraSpec | None, dpo: DPOSpec | None = None, osft: OSFTSpec | None = None
) -> str:
    """The engines' name for what a job trains: lora, dora, qlora, full, osft, or dpo-<one of
    those>."""
    if osft is not None:
        base = "osft"
    elif lora is None:
        base = "full"
    else:
        base = "qlora" if lora.quantize_base else "dora" if lora.use_dora else "lora"
    return f"dpo-{base}" if dpo is not None else base


Stage = Literal["train", "evaluate", "register"]


class EvaluationSpec(_Strict):
    """The evaluate stage: base and tuned model on the same held-out rows and tasks."""

    # Loss, perplexity and token accuracy over the held-out rows (the job's validation rows).
    held_out: bool = True
    # At most this many held-out rows are evaluated (the first ones); None: all of them.
    max_rows: int | None = 200
    # lm-eval tasks by name: built-in ones (their data must be reachable) or ones that
    # `task_files` define.
    tasks: list[str] = []
    # Locations (local path, s3://, https://) of lm-eval task YAML files; a file's `dataset_path`
    # / `data_files` may name any location this project reads.
    task_files: list[str] = []
    # Task YAML that runs code (`!function`) is refused unless this is set.
    allow_task_code: bool = False
    # lm-eval's `limit`: at most this many documents per task; None: all.
    limit: int | None = None
    # Held-out prompts answered by base and tuned (greedy), for a person to read.
    samples: int = 3
    max_new_tokens: int = 64
    # Evaluate every epoch's checkpoint, not only the last one.
    every_epoch: bool = False
    batch_size: int = 4


class GateSpec(_Strict):
    """Register only when the tuned model beats the base on `metric` by `min_delta`."""

    # "held_out/loss", "held_out/token_accuracy", or "<task>/<metric>" of an lm-eval task.
    metric: str
    # None: lower is better for loss and perplexity, higher for everything else.
    higher_is_better: bool | None = None
    min_delta: float = 0.0


class RegistrySpec(_Strict):
    """The register stage: where the tuned model is registered. No secret values here: the
    Kubeflow Model Registry token is read in the step from `token_env` or `token_file`."""

    kind: Literal["mlflow", "kubeflow"]
    # MLflow: its tracking URI; Kubeflow Model Registry: the server's address (https://host:port).
    uri: str
    model_name: str
    # Kubeflow: the version's name (a new one per job, never an overwrite); MLflow numbers its own.
    version_name: str
    # MLflow: the alias set on the registered version.
    alias: str | None = "candidate"
    gate: GateSpec | None = None
    token_env: str | None = None
    token_file: str | None = None
    # Remote: the Kubernetes Secret (its name: a reference, never a value) whose
    # MODEL_REGISTRY_TOKEN key becomes the register step's `token_env` variable.
    token_secret: str | None = None
    author: str | None = None
    description: str | None = None


class JobSpec(_Strict):
    job_uuid: str
    engine: EngineChoice = _LEGACY_ENGINE
    model: ModelSpec
    data: DataSpec
    train: TrainSpec
    # None: full-parameter fine-tuning (or OSFT, when `osft` is set).
    lora: LoraSpec | None
    # Set for preference optimization (preference_optimize): DPO on top of `lora` or full.
    dpo: DPOSpec | None = None
    optim: OptimSpec
    output_format: Layout | None = Field(description="None: the layout of the input weights.")
    output_uri: str = Field(description="Where the job's results go; chosen by the provider.")
    # The request's logger_config: where the train step logs params and metrics.
    tracking: TrackingSpec | None = None
    # A checkpoint folder of this provider (training_state.json) that this job continues;
    # `model` is then the base model that checkpoint names.
    resume_from: str | None = None
    # Stages after training (None: not run). Records written before stages existed have none.
    evaluation: EvaluationSpec | None = None
    registry: RegistrySpec | None = None
    # A finished checkpoint folder (epoch_<N>) of this provider that evaluate/register run on,
    # without training; `model` is then its base model.
    trained_checkpoint: str | None = None
    # Set for OSFT (never with `lora`); records written before OSFT existed have none.
    osft: OSFTSpec | None = None

    @property
    def algorithm(self) -> str:
        return algorithm(self.lora, self.dpo, self.osft)

    def steps_per_epoch(self, micro_batches: int) -> int:
        """Optimizer steps in an epoch of `micro_batches` batches (batch_size rows each, the
        last one possibly short: no row is dropped), the one count every engine and the
        progress total use. A short last accumulation group is a step of its own (the rule of
        transformers' Trainer), except on records that keep torchtune's floor (see
        TrainSpec.short_last_group); max_steps_per_epoch caps it."""
        t = self.train
        accum = t.gradient_accumulation_steps
        legacy = t.short_last_group == "engine" and self.engine.name == "torchtune"
        per_epoch = micro_batches // accum if legacy else -(-micro_batches // accum)
        if t.max_steps_per_epoch is not None:
            per_epoch = min(per_epoch, t.max_steps_per_epoch)
        return per_epoch

    @property
    def stages(self) -> list[str]:
        """The pipeline's stages after prepare-data, in order."""
        out = [] if self.trained_checkpoint else ["train"]
        if self.evaluation is not None:
            out.append("evaluate")
        if self.registry is not None:
            out.append("register")
        return out
