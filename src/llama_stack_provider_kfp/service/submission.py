"""A training request in no front end's terms, and the pure checks and translation that turn
it into a JobSpec.

Each front end (api/: llama-stack's post-training API; openai_api/: OpenAI's fine-tuning API)
checks its own fields with its own field names, then fills a Submission; everything from there
on is the same for both. A problem is an InvalidRequest (400) or Unsupported (501) whose
message says what to change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import KFPPostTrainingConfig, OSFTConfig
from ..core.engines import ENGINES, JobTraits
from ..core.errors import InvalidRequest, Unsupported
from ..core.locations import parse
from ..core.lora_targets import Targets, resolve, tied_output_problem
from ..core.osft_targets import resolve_osft
from ..core.outputs import MERGED
from ..core.resume import TrainingState
from ..core.spec import (
    DataSpec,
    DPOSpec,
    DType,
    EngineChoice,
    JobSpec,
    LoraSpec,
    ModelArch,
    ModelSpec,
    OptimizerType,
    OptimSpec,
    OSFTSpec,
    TrainSpec,
    algorithm,
)
from ..core.tracking import TrackingSpec
from ..jobs.backend import StagedInputs
from . import stages


@dataclass(frozen=True)
class Optimizer:
    type: OptimizerType
    lr: float
    weight_decay: float
    warmup_steps: int


@dataclass(frozen=True)
class Training:
    """The hyper-parameters of a request (llama-stack's TrainingConfig carries the same)."""

    epochs: int
    batch_size: int
    data_format: str = "instruct"
    max_steps_per_epoch: int | None = None
    gradient_accumulation_steps: int = 1
    max_validation_steps: int | None = None
    dtype: DType = "bf16"
    shuffle: bool = True
    packed: bool = False
    train_on_input: bool = False
    optimizer: Optimizer | None = None  # None: the provider's optimizer_defaults
    activation_checkpointing: bool = False
    activation_offloading: bool = False
    fsdp_cpu_offload: bool = False
    memory_efficient_fsdp_wrap: bool = False


@dataclass(frozen=True)
class Lora:
    rank: int
    alpha: float
    attn_modules: list[str]
    apply_to_mlp: bool = False
    apply_to_output: bool = False
    use_dora: bool = False
    quantize_base: bool = False


@dataclass(frozen=True)
class Submission:
    """What every submit route has in common once its own fields are checked."""

    job_uuid: str
    model: str
    checkpoint_dir: str | None
    training: Training
    lora: Lora | None  # None: full-parameter training (or OSFT)
    dpo: DPOSpec | None  # set for preference optimization
    tracking: TrackingSpec | None = None
    # The provider config with the request's own settings applied (DESIGN.md's extensions).
    config: KFPPostTrainingConfig = field(default_factory=KFPPostTrainingConfig)
    osft: bool = False  # OSFT with config.osft's settings (lora is then None)
    # Resolves a llama-stack model descriptor to its Hugging Face repo (api/ only).
    descriptor_repo: str | None = None
    # The provider settings the request itself set (its extension's keys; the rest are the
    # provider's).
    named: frozenset[str] = frozenset()

    @property
    def stages(self) -> list[str]:
        return stages.wanted(self.config)

    @property
    def data_format(self) -> str:
        # Preference rows are read as prompt/chosen/rejected whatever data_format says
        # (llama-stack's own DPO test sends `dialog`).
        return "preference" if self.dpo is not None else self.training.data_format


def osft_spec(settings: OSFTConfig, model: ModelSpec) -> OSFTSpec:
    """The OSFT settings resolved against the model's matrices (when known at submit)."""
    requested = list(settings.target_modules or [])
    try:
        targets = resolve_osft(requested, model.modules, model.is_tied)
    except InvalidRequest as e:
        raise InvalidRequest(f"invalid OSFT settings: {e}") from None
    return OSFTSpec(unfreeze_rank_ratio=settings.unfreeze_rank_ratio,
                    requested_modules=requested, target_modules=targets.modules,
                    freeze_non_targets=settings.freeze_non_targets)  # fmt: skip


def check_osft_sharding(sub: Submission) -> None:
    """OSFT's parametrized matrices do not shard: a request that asks for FSDP on several
    ranks cannot have it (one rank shards nothing, so the flags are no-ops there)."""
    t = sub.training
    if sub.osft and sub.config.world() > 1 and (t.fsdp_cpu_offload or
                                                 t.memory_efficient_fsdp_wrap):  # fmt: skip
        raise Unsupported(
            "OSFT does not shard across ranks (FSDP): send efficiency_config without "
            "memory_efficient_fsdp_wrap and fsdp_cpu_offload (OSFT trains a whole copy of the "
            "model on every rank)"
        )


def check_batch_split(batch_size: int, world: int, engine: str) -> None:
    """torchtune's distributed recipe takes a per-device batch: the global batch must split
    evenly over the devices (the huggingface engine shares out any batch)."""
    if engine == "torchtune" and world > 1 and batch_size % world:
        raise InvalidRequest(
            f"data_config.batch_size ({batch_size}) does not divide over the {world} devices "
            f"each job trains on: the torchtune engine gives every device batch_size / {world} "
            f"rows; use a multiple of {world} (e.g. {batch_size - batch_size % world or world})"
        )


def lora_targets(lora: Lora, model: ModelSpec) -> Targets:
    """Check the LoRA settings and resolve the modules they name on this model."""
    problems = []
    if lora.rank < 1:
        problems.append(f"rank must be >= 1 (got {lora.rank})")
    if lora.alpha <= 0:
        problems.append(f"alpha must be > 0 (got {lora.alpha})")
    if not (lora.attn_modules or lora.apply_to_mlp or lora.apply_to_output):
        problems.append("no module to adapt: name lora_attn_modules or set apply_lora_to_mlp")
    tied = tied_output_problem(model.name, lora.apply_to_output, model.is_tied)
    if tied:
        problems.append(tied)
    if lora.quantize_base and model.arch is not None:
        problems += _nf4_problems(model.arch)
    try:
        targets = resolve(
            list(lora.attn_modules),
            lora.apply_to_mlp,
            lora.apply_to_output,
            model.modules,
            model.is_tied,
        )
    except InvalidRequest as e:
        problems.append(str(e))
    if problems:
        raise InvalidRequest("invalid LoRA algorithm_config: " + "; ".join(problems))
    return targets


NF4_BLOCK = 64 * 256  # torchao NF4: values per block x scalers per double-quantization block


def _nf4_problems(arch: ModelArch) -> list[str]:
    """QLoRA quantizes every attention and MLP matrix to NF4, which needs whole blocks."""
    kv = arch.num_kv_heads * arch.head_dim
    shapes = {"q_proj": (arch.embed_dim, arch.embed_dim), "k_proj": (kv, arch.embed_dim),
              "v_proj": (kv, arch.embed_dim), "o_proj": (arch.embed_dim, arch.embed_dim),
              "mlp": (arch.intermediate_dim, arch.embed_dim)}  # fmt: skip
    bad = [f"{name} {r}x{c}" for name, (r, c) in shapes.items() if (r * c) % NF4_BLOCK]
    if not bad:
        return []
    return [
        f"quantize_base (NF4) needs matrices of a multiple of {NF4_BLOCK} values, and this "
        f"model has {', '.join(bad)}; send quantize_base=false"
    ]


def optim_spec(training: Training, config: KFPPostTrainingConfig) -> OptimSpec:
    o = training.optimizer
    if o is None:
        d = config.optimizer_defaults
        return OptimSpec(type=d.optimizer_type, lr=d.lr, weight_decay=d.weight_decay,
                         warmup_steps=None, warmup_ratio=d.warmup_ratio)  # fmt: skip
    return OptimSpec(type=o.type, lr=o.lr, weight_decay=o.weight_decay,
                     warmup_steps=o.warmup_steps)  # fmt: skip


def lora_spec(lora: Lora | None, targets: Targets | None) -> LoraSpec | None:
    if lora is None or targets is None:
        return None
    return LoraSpec(
        rank=lora.rank,
        alpha=lora.alpha,
        attn_modules=targets.torchtune_attn or [],
        apply_to_mlp=lora.apply_to_mlp,
        apply_to_output=lora.apply_to_output,
        use_dora=lora.use_dora,
        quantize_base=lora.quantize_base,
        requested_modules=list(lora.attn_modules),
        target_modules=targets.peft,
    )


def resume_engine(
    state: TrainingState, traits: JobTraits, preference: str, where: str
) -> EngineChoice:
    """A resumed job runs on the engine that wrote its checkpoint."""
    if preference not in ("auto", state.engine):
        raise InvalidRequest(
            f"checkpoint_dir {where} was trained by the {state.engine} engine, and the provider "
            f"config sets engine: {preference}; resume it where engine is auto or {state.engine}"
        )
    why = ENGINES[state.engine].refusal(traits)
    if why:
        raise InvalidRequest(f"checkpoint_dir {where} cannot be resumed by this request: "
                             f"the {state.engine} engine {why}")  # fmt: skip
    return EngineChoice(name=state.engine, reason=f"resumes {where}, which it trained")


def check_finished_checkpoint(checkpoint_dir: str | None) -> None:
    """A request whose stages leave out train evaluates/registers the epoch checkpoint its
    checkpoint_dir names (its `model` is the base to compare with). A local one must hold
    merged/ weights; an s3:// one is checked by the step that reads it."""
    how = ("name the epoch checkpoint to evaluate or register as checkpoint_dir "
           "(<job>/checkpoints/epoch_<N>, as its artifacts list it) and its base model as model, "
           "or add train to the stages")  # fmt: skip
    if not checkpoint_dir:
        raise InvalidRequest(f"no checkpoint to evaluate or register: {how}")
    loc = parse(checkpoint_dir)
    if loc.is_local and not (loc.path / MERGED).is_dir():
        raise InvalidRequest(f"checkpoint_dir {checkpoint_dir} has no {MERGED}/ weights: {how}")


def resumed_clipping(spec: JobSpec, state: TrainingState, named: frozenset[str]) -> JobSpec:
    """A resumed job clips as its checkpoint was trained (records from before clipping existed:
    not at all), unless the request names max_grad_norm itself (check_resume then refuses a
    value other than the checkpoint's)."""
    if "max_grad_norm" in named:
        return spec
    trained = JobSpec.model_validate(state.spec).train.max_grad_norm
    return spec.model_copy(
        update={"train": spec.train.model_copy(update={"max_grad_norm": trained})}
    )


def build_spec(
    sub: Submission,
    lora: LoraSpec | None,
    model: ModelSpec,
    staged: StagedInputs,
    engine: EngineChoice,
    osft: OSFTSpec | None = None,
) -> JobSpec:
    """The JobSpec of a request that passed every check above."""
    config = sub.config
    t = sub.training
    registry = stages.registry_spec(
        config, sub.stages, sub.job_uuid, model.name, algorithm(lora, sub.dpo, osft), sub.tracking
    )
    return JobSpec(
        job_uuid=sub.job_uuid,
        engine=engine,
        model=model,
        data=DataSpec(
            uri=staged.train_uri,
            data_format=sub.data_format,  # type: ignore[arg-type]
            validation_uri=staged.validation_uri,
            validation_fraction=config.validation_fraction,
            max_rows=config.max_rows,
            http=config.data_sources.http_policy(),
        ),
        train=TrainSpec(
            epochs=t.epochs,
            max_steps_per_epoch=t.max_steps_per_epoch,
            gradient_accumulation_steps=t.gradient_accumulation_steps,
            batch_size=t.batch_size,
            shuffle=t.shuffle,
            train_on_input=t.train_on_input,
            packed=t.packed,
            dtype=t.dtype,
            max_validation_steps=t.max_validation_steps,
            max_seq_len=config.max_seq_len,
            seed=config.seed,
            device=config.device,
            ranks=config.ranks(),
            nodes=config.nodes(),
            enable_activation_checkpointing=t.activation_checkpointing,
            enable_activation_offloading=t.activation_offloading,
            fsdp_cpu_offload=t.fsdp_cpu_offload,
            memory_efficient_fsdp_wrap=t.memory_efficient_fsdp_wrap,
            sharding="auto",
            checkpoint_every_steps=config.checkpoint_every_steps,
            keep_step_checkpoints=config.keep_step_checkpoints,
            max_grad_norm=config.max_grad_norm or None,  # 0: off
            short_last_group="step",
        ),
        lora=lora,
        osft=osft,
        dpo=sub.dpo,
        optim=optim_spec(t, config),
        output_format=config.checkpoint_format or model.layout,
        output_uri=staged.output_uri,
        tracking=sub.tracking,
        evaluation=stages.evaluation_spec(config, sub.stages),
        registry=registry,
    )
