"""A llama-stack request -> JobSpec: the checks (pure functions) and the translation.

Everything here runs before anything is created; a problem is an InvalidRequest (400) or
Unsupported (501) whose message says what to change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from llama_stack_api import (
    AlgorithmConfig,
    DPOAlignmentConfig,
    LoraFinetuningConfig,
    QATFinetuningConfig,
    SupervisedFineTuneRequest,
    TrainingConfig,
)

from ..config import DPODefaults, KFPPostTrainingConfig, OSFTConfig
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
    EngineChoice,
    JobSpec,
    LoraSpec,
    ModelArch,
    ModelSpec,
    OptimSpec,
    OSFTSpec,
    TrainSpec,
    algorithm,
)
from ..core.tracking import TrackingSpec
from ..jobs.backend import StagedInputs
from . import stages


def descriptor_repo(model: str) -> str | None:
    """The Hugging Face repo llama-stack's model registry lists for a descriptor."""
    from llama_stack.models.llama.sku_list import resolve_model as resolve_sku

    sku = resolve_sku(model)
    return getattr(sku, "huggingface_repo", None) if sku else None


def model_name(request: SupervisedFineTuneRequest) -> str:
    name = request.model or request.checkpoint_dir
    if not name:
        raise InvalidRequest(
            "name the base model: model='Llama3.2-1B-Instruct', a Hugging Face repo id or "
            "a directory, or checkpoint_dir=<directory with the weights>"
        )
    return name


def check_algorithm(algo: AlgorithmConfig | None) -> LoraFinetuningConfig | None:
    """The LoRA settings, or None for full-parameter fine-tuning (no algorithm_config, as
    llama-stack's inline::huggingface provider reads it)."""
    if algo is None:
        return None
    if isinstance(algo, QATFinetuningConfig):
        raise Unsupported("QAT fine-tuning is not supported yet; use LoRA or full fine-tuning")
    return algo


EXTENSION = 'hyperparam_search_config["kfp"]'


def check_algorithm_choice(algo: AlgorithmConfig | None, extension: object) -> None:
    """The request names its algorithm once: algorithm_config, or the extension's
    `algorithm` (DESIGN.md "Per-request extensions": both -> 400)."""
    if algo is None or not isinstance(extension, dict):
        return
    named = [k for k in ("algorithm", "osft") if k in extension]
    if not named:
        return
    qlora = " (OSFT trains full-precision factors: quantize_base does not apply)" if getattr(
        algo, "quantize_base", False) else ""  # fmt: skip
    raise InvalidRequest(
        f"the request names its algorithm twice: algorithm_config ({algo.type}) and "
        f"{EXTENSION}.{named[0]}{qlora}; send one of them (for OSFT: no algorithm_config, and "
        f'{EXTENSION} = {{"algorithm": "osft", "osft": {{"unfreeze_rank_ratio": ...}}}})'
    )


def check_osft_settings(config: KFPPostTrainingConfig, osft: bool, extension: object) -> None:
    """OSFT settings in a request that does not train OSFT are a mistake, not a no-op."""
    if not osft and isinstance(extension, dict) and "osft" in extension:
        raise InvalidRequest(
            f"{EXTENSION}.osft applies to OSFT, and this request trains "
            f'{config.algorithm or "with its default algorithm"}; add "algorithm": "osft" '
            "beside it"
        )


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


def check_training(tc: TrainingConfig, ranks: int = 1) -> None:
    problems = []
    if tc.n_epochs < 1:
        problems.append(f"n_epochs must be >= 1 (got {tc.n_epochs})")
    if tc.max_steps_per_epoch is not None and tc.max_steps_per_epoch < 1:
        problems.append(f"max_steps_per_epoch must be >= 1 (got {tc.max_steps_per_epoch})")
    if tc.gradient_accumulation_steps < 1:
        problems.append(
            f"gradient_accumulation_steps must be >= 1 (got {tc.gradient_accumulation_steps})"
        )
    if tc.max_validation_steps is not None and tc.max_validation_steps < 1:
        problems.append(
            f"max_validation_steps must be >= 1 or null (got {tc.max_validation_steps})"
        )
    if (tc.dtype or "bf16") not in ("bf16", "fp32"):
        problems.append(f"dtype {tc.dtype!r} is not supported: use 'bf16' or 'fp32'")
    dc, oc = tc.data_config, tc.optimizer_config
    if dc is None:
        problems.append("training_config.data_config is required (dataset_id, batch_size, ...)")
    elif dc.batch_size < 1:
        problems.append(f"data_config.batch_size must be >= 1 (got {dc.batch_size})")
    elif dc.batch_size < ranks:
        problems.append(
            f"data_config.batch_size ({dc.batch_size}) is smaller than the {ranks} devices each "
            "job trains on (devices_per_job / remote.resources.gpu_count x nodes): every "
            "device takes its share of each batch; raise batch_size to at least that"
        )
    if oc is not None:
        if not (math.isfinite(oc.lr) and oc.lr > 0):
            problems.append(f"optimizer_config.lr must be a positive number (got {oc.lr})")
        if not (math.isfinite(oc.weight_decay) and oc.weight_decay >= 0):
            problems.append(f"optimizer_config.weight_decay must be >= 0 (got {oc.weight_decay})")
        if oc.num_warmup_steps < 0:
            problems.append(
                f"optimizer_config.num_warmup_steps must be >= 0 (got {oc.num_warmup_steps})"
            )
    if problems:
        raise InvalidRequest("invalid training_config: " + "; ".join(problems))


def check_batch_split(batch_size: int, world: int, engine: str) -> None:
    """torchtune's distributed recipe takes a per-device batch: the global batch must split
    evenly over the devices (the huggingface engine shares out any batch)."""
    if engine == "torchtune" and world > 1 and batch_size % world:
        raise InvalidRequest(
            f"data_config.batch_size ({batch_size}) does not divide over the {world} devices "
            f"each job trains on: the torchtune engine gives every device batch_size / {world} "
            f"rows; use a multiple of {world} (e.g. {batch_size - batch_size % world or world})"
        )


def lora_targets(lc: LoraFinetuningConfig, model: ModelSpec) -> Targets:
    """Check the LoRA settings and resolve the modules they name on this model."""
    problems = []
    if lc.rank < 1:
        problems.append(f"rank must be >= 1 (got {lc.rank})")
    if lc.alpha <= 0:
        problems.append(f"alpha must be > 0 (got {lc.alpha})")
    if not (lc.lora_attn_modules or lc.apply_lora_to_mlp or lc.apply_lora_to_output):
        problems.append("no module to adapt: name lora_attn_modules or set apply_lora_to_mlp")
    tied = tied_output_problem(model.name, lc.apply_lora_to_output, model.is_tied)
    if tied:
        problems.append(tied)
    if lc.quantize_base and model.arch is not None:
        problems += _nf4_problems(model.arch)
    try:
        targets = resolve(
            list(lc.lora_attn_modules),
            lc.apply_lora_to_mlp,
            lc.apply_lora_to_output,
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


def optim_spec(tc: TrainingConfig, config: KFPPostTrainingConfig) -> OptimSpec:
    oc = tc.optimizer_config
    if oc is None:
        d = config.optimizer_defaults
        return OptimSpec(type=d.optimizer_type, lr=d.lr, weight_decay=d.weight_decay,
                         warmup_steps=None, warmup_ratio=d.warmup_ratio)  # fmt: skip
    return OptimSpec(type=oc.optimizer_type.value, lr=oc.lr, weight_decay=oc.weight_decay,
                     warmup_steps=oc.num_warmup_steps)  # fmt: skip


def lora_spec(lora: LoraFinetuningConfig | None, targets: Targets | None) -> LoraSpec | None:
    if lora is None or targets is None:
        return None
    return LoraSpec(
        rank=lora.rank,
        alpha=lora.alpha,
        attn_modules=targets.torchtune_attn or [],
        apply_to_mlp=lora.apply_lora_to_mlp,
        apply_to_output=lora.apply_lora_to_output,
        use_dora=bool(lora.use_dora),
        quantize_base=bool(lora.quantize_base),
        requested_modules=list(lora.lora_attn_modules),
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


@dataclass(frozen=True)
class Submission:
    """What the two submit routes have in common once their own fields are checked."""

    job_uuid: str
    model: str
    checkpoint_dir: str | None
    training: TrainingConfig
    lora: LoraFinetuningConfig | None  # None: full-parameter training (or OSFT)
    dpo: DPOSpec | None  # set for preference_optimize
    tracking: TrackingSpec | None = None  # the request's logger_config
    # The provider config with the request's hyperparam_search_config["kfp"] applied.
    config: KFPPostTrainingConfig = field(default_factory=KFPPostTrainingConfig)
    osft: bool = False  # OSFT with config.osft's settings (lora is then None)
    # The keys the request's hyperparam_search_config["kfp"] set (the rest are the provider's).
    named: frozenset[str] = frozenset()

    @property
    def stages(self) -> list[str]:
        return stages.wanted(self.config)

    @property
    def data_format(self) -> str:
        # Preference rows are read as prompt/chosen/rejected whatever data_format says
        # (llama-stack's own DPO test sends `dialog`).
        if self.dpo is not None:
            return "preference"
        assert self.training.data_config is not None
        return self.training.data_config.data_format.value


def check_dpo(algo: DPOAlignmentConfig) -> DPOSpec:
    loss = algo.loss_type.value
    if loss not in ("sigmoid", "hinge", "ipo"):
        raise Unsupported(
            f"DPO loss_type {loss!r} is not supported (TRL dropped kto_pair); use sigmoid, "
            "hinge or ipo"
        )
    if not (math.isfinite(algo.beta) and algo.beta > 0):
        raise InvalidRequest(f"beta must be a positive number (got {algo.beta})")
    return DPOSpec(beta=algo.beta, loss_type=loss)


def dpo_lora(defaults: DPODefaults) -> LoraFinetuningConfig | None:
    """The LoRA a DPO job trains (provider config), or None for full DPO."""
    if defaults.full:
        return None
    return LoraFinetuningConfig(
        type="LoRA",
        lora_attn_modules=list(defaults.lora_modules),
        apply_lora_to_mlp=defaults.apply_lora_to_mlp,
        apply_lora_to_output=False,
        rank=defaults.lora_rank,
        alpha=defaults.lora_alpha,
    )


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
    tc = sub.training
    registry = stages.registry_spec(
        config, sub.stages, sub.job_uuid, model.name, algorithm(lora, sub.dpo, osft), sub.tracking
    )
    dc, ec = tc.data_config, tc.efficiency_config
    assert dc is not None  # check_training refused it missing
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
            epochs=tc.n_epochs,
            max_steps_per_epoch=tc.max_steps_per_epoch,
            gradient_accumulation_steps=tc.gradient_accumulation_steps,
            batch_size=dc.batch_size,
            shuffle=dc.shuffle,
            train_on_input=bool(dc.train_on_input),
            packed=bool(dc.packed),
            dtype=tc.dtype or "bf16",
            max_validation_steps=tc.max_validation_steps,
            max_seq_len=config.max_seq_len,
            seed=config.seed,
            device=config.device,
            ranks=config.ranks(),
            nodes=config.nodes(),
            enable_activation_checkpointing=bool(ec and ec.enable_activation_checkpointing),
            enable_activation_offloading=bool(ec and ec.enable_activation_offloading),
            fsdp_cpu_offload=bool(ec and ec.fsdp_cpu_offload),
            memory_efficient_fsdp_wrap=bool(ec and ec.memory_efficient_fsdp_wrap),
            checkpoint_every_steps=config.checkpoint_every_steps,
            keep_step_checkpoints=config.keep_step_checkpoints,
            max_grad_norm=config.max_grad_norm or None,  # 0: off
        ),
        lora=lora,
        osft=osft,
        dpo=sub.dpo,
        optim=optim_spec(tc, config),
        output_format=config.checkpoint_format or model.layout,
        output_uri=staged.output_uri,
        tracking=sub.tracking,
        evaluation=stages.evaluation_spec(config, sub.stages),
        registry=registry,
    )
