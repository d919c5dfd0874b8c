"""Provider configuration (the `config:` block of the provider entry in run.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .core.errors import InvalidRequest
from .core.http_policy import HttpPolicy
from .core.mappings import deep_merge


class RemoteResources(BaseModel):
    """Kubernetes resources of the train step (prepare-data gets a small fixed share)."""

    cpu_request: str | None = Field(default="2", description="e.g. '2' or '500m'")
    cpu_limit: str | None = None
    memory_request: str | None = Field(default="8Gi", description="e.g. '16Gi'")
    memory_limit: str | None = None
    gpu_count: int = Field(
        default=0,
        ge=0,
        description="accelerators for the train step; with more than one the step trains "
        "with one rank per GPU (torchrun; DDP or FSDP) on the huggingface engine",
    )
    nodes: int = Field(
        default=1,
        ge=1,
        description="machines each job trains on; with more than one the train step hands "
        "training to a Kubeflow Trainer v2 TrainJob (numNodes = nodes, each node with "
        "gpu_count GPUs and these cpu/memory settings) and follows it",
    )
    accelerator: str = Field(
        default="nvidia.com/gpu", description="resource name of the accelerator, e.g. amd.com/gpu"
    )
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, str]] = Field(
        default_factory=list, description="items with key, operator, value, effect"
    )


class RemoteConfig(BaseModel):
    """How to reach a KFP v2 cluster and its object storage (mode: remote)."""

    url: str | None = Field(
        default=None,
        description="KFP API endpoint. Empty on OpenShift: discovered from the "
        "DataSciencePipelinesApplication of the namespace.",
    )
    namespace: str | None = Field(
        default=None,
        description="default: the namespace of the current kubeconfig context, or the pod's "
        "own namespace when the server runs in the cluster",
    )
    service_account_dir: Path = Field(
        default=Path("/var/run/secrets/kubernetes.io/serviceaccount"),
        description="where a pod finds its service account's token, namespace and CAs; used "
        "in the cluster (KUBERNETES_SERVICE_HOST set, no kubeconfig)",
    )
    inspect_pods: bool = Field(
        default=True,
        description="read the runs' pods and events through the Kubernetes API (when "
        "reachable) to say why a run waits or failed; needs get/list on pods and events",
    )
    token_env: str = Field(
        default="KFP_TOKEN", description="environment variable holding a bearer token"
    )
    token_file: Path | None = Field(
        default=None,
        description="file holding a bearer token, read again at every reconnection (a rotated "
        "token is picked up without a restart)",
    )
    ca_bundle: Path | None = Field(default=None, description="CA bundle for the endpoint's TLS")
    verify_ssl: bool = True
    experiment: str = "llama-stack-post-training"
    image: str = Field(
        default="llama-stack-provider-kfp:0.1.0",
        description="component image built from the repo's Containerfile",
    )
    image_pull_secrets: list[str] = Field(default_factory=list)
    service_account: str | None = None
    s3_bucket: str | None = Field(default=None, description="bucket for inputs and outputs")
    s3_prefix: str = "llama-stack-post-training"
    s3_endpoint_url: str | None = Field(default=None, description="MinIO / ODF / Ceph endpoint")
    s3_ca_bundle: Path | None = Field(
        default=None, description="CA bundle for the S3 endpoint's TLS, for the server"
    )
    s3_ca_bundle_configmap: str | None = Field(
        default=None,
        description="<configmap>/<key> holding that CA bundle, mounted into the steps "
        "(key default: ca.crt)",
    )
    s3_credentials_secret: str | None = Field(
        default=None,
        description="Kubernetes Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
        "mounted as env vars into the steps",
    )
    hf_token_secret: str | None = Field(
        default=None, description="Kubernetes Secret with HF_TOKEN, for gated models"
    )
    tracking_secret: str | None = Field(
        default=None,
        description="Kubernetes Secret whose MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_USERNAME, "
        "MLFLOW_TRACKING_PASSWORD and WANDB_API_KEY (any of them) become the train step's env, "
        "for a request's logger_config",
    )
    resources: RemoteResources = Field(default_factory=RemoteResources)
    scratch_size: str = Field(
        default="100Gi",
        description="a volume of this size (generic ephemeral volume, the namespace's default "
        "storage class unless scratch_storage_class) holds the train step's downloaded weights "
        "and checkpoints before upload; empty: the container's own disk",
    )
    scratch_storage_class: str | None = None
    training_runtime: str = Field(
        default="torch-distributed",
        description="ClusterTrainingRuntime of Kubeflow Trainer v2 that runs a job's nodes "
        "(resources.nodes > 1); it must be a torch runtime (torchrun reads its PET_* env)",
    )
    trainjob_api_grace_seconds: float = Field(
        default=300.0,
        gt=0,
        description="a train step following a TrainJob fails it when the Kubernetes API has "
        "not answered for this long",
    )
    request_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="read timeout of every KFP and Kubernetes API call (connect: at most 5 s): "
        "an endpoint that stops answering fails the call instead of hanging it",
    )
    pending_timeout_seconds: float = Field(
        default=1800.0,
        gt=0,
        description="a run still PENDING after this long fails with the reason and is "
        "terminated (unschedulable GPU requests, image pulls, quota)",
    )
    poll_seconds: float = Field(
        default=5.0, gt=0, description="how often queued/finished runs are checked with KFP"
    )
    train_retries: int = Field(
        default=0,
        ge=0,
        description="KFP retries of a failed train step (set_retry): a retried step continues "
        "from the newest checkpoint in the job's output, not from step 0",
    )


class OptimizerDefaults(BaseModel):
    """What a request that omits `optimizer_config` trains with (llama-stack's own
    inline::huggingface provider uses the same values)."""

    optimizer_type: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(default=2e-5, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_ratio: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="Warm-up as a share of the job's optimizer steps (rounded down), so a "
        "one-step job trains at the full learning rate.",
    )


class DPODefaults(BaseModel):
    """How preference_optimize trains: llama-stack 0.6.1's DPO request has no LoRA fields."""

    full: bool = Field(
        default=False,
        description="Full-parameter DPO against a frozen copy of the model, instead of LoRA "
        "(whose reference is the model with the adapter switched off).",
    )
    lora_rank: int = Field(default=8, ge=1)
    lora_alpha: float = Field(default=16.0, gt=0)
    lora_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj", "output_proj"])
    apply_lora_to_mlp: bool = True


class OSFTConfig(BaseModel):
    unfreeze_rank_ratio: float = Field(
        default=0.25,
        gt=0,
        le=1,
        description="OSFT: the fraction of each target matrix's singular directions that "
        "train, in (0, 1]; the rest (the top ones) stay frozen. Lower keeps more of what the "
        "model knows; 1 trains every direction (like full fine-tuning).",
    )
    target_modules: list[str] | None = Field(
        default=None,
        description="Matrices OSFT decomposes, named as for LoRA (q_proj, o_proj or "
        "output_proj, gate_proj, ..., or any matrix's path below the layer index). None: every "
        "attention and MLP projection.",
    )
    freeze_non_targets: bool = Field(
        default=False,
        description="Also freeze every parameter outside the target matrices (embeddings, "
        "norms, biases, an untied lm_head). False trains them freely, as mini-trainer does.",
    )


class EvaluationConfig(BaseModel):
    """The evaluate stage (core.spec.EvaluationSpec): base and tuned model on the same
    held-out rows and lm-eval tasks, after training."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="run the evaluate stage after training")
    held_out: bool = Field(
        default=True,
        description="loss, perplexity and token accuracy over the held-out rows "
        "(validation_dataset_id, else validation_fraction)",
    )
    max_rows: int | None = Field(default=200, ge=1, description="held-out rows evaluated")
    tasks: list[str] = Field(
        default_factory=list,
        description="lm-eval tasks: built-in names (their data must be reachable from the "
        "step) or names defined by task_files",
    )
    task_files: list[str] = Field(
        default_factory=list,
        description="lm-eval task YAML files (local path, s3://, https://)",
    )
    allow_task_code: bool = Field(
        default=False,
        description="accept task YAML that runs code (!function); always off with auth on",
    )
    limit: int | None = Field(default=None, ge=1, description="lm-eval documents per task")
    samples: int = Field(
        default=3, ge=0, description="held-out prompts answered by base and tuned (greedy)"
    )
    max_new_tokens: int = Field(default=64, ge=1, le=4096)
    every_epoch: bool = Field(default=False, description="evaluate each epoch's checkpoint")
    batch_size: int = Field(default=4, ge=1)


class RegistryGate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str = Field(
        description="held_out/loss, held_out/perplexity, held_out/token_accuracy or "
        "<task>/<metric> of an lm-eval task"
    )
    higher_is_better: bool | None = Field(
        default=None, description="None: lower is better for loss and perplexity"
    )
    min_delta: float = Field(default=0.0, ge=0)


class RegistryConfig(BaseModel):
    """The register stage: hand the tuned model to the registry users already run."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["none", "mlflow", "kubeflow"] = Field(
        default="none",
        description="mlflow: MLflow Model Registry (registered model + version); kubeflow: "
        "Kubeflow Model Registry (registered model, version, artifact)",
    )
    uri: str | None = Field(
        default=None,
        description="MLflow tracking URI (default: the request's MLflow tracking_uri) or the "
        "Kubeflow Model Registry address (https://host:port)",
    )
    model_name: str | None = Field(
        default=None,
        description="registered model's name; default: <base model name>-<algorithm> "
        "(a new version per job under it)",
    )
    alias: str | None = Field(default="candidate", description="MLflow alias of the version")
    gate: RegistryGate | None = Field(
        default=None, description="register only when the tuned model beats the base"
    )
    token_env: str = Field(
        default="MODEL_REGISTRY_TOKEN",
        description="Kubeflow: environment variable holding the registry's bearer token",
    )
    token_file: Path | None = Field(
        default=None, description="Kubeflow: file holding the bearer token (read in the step)"
    )
    token_secret: str | None = Field(
        default=None,
        description="remote: Kubernetes Secret whose MODEL_REGISTRY_TOKEN becomes the register "
        "step's env",
    )
    author: str | None = None
    probe_timeout_seconds: float = Field(
        default=3.0,
        ge=0,
        description="the registry must answer a plain HTTP GET within this long at submit "
        "(else 503); 0 skips the probe (in-cluster registries the server cannot reach)",
    )


class DataSourcesConfig(BaseModel):
    """Where datasets registered by URI are read from (s3://, https://, http://, hf://,
    pvc://, paths): the limits and credentials of the locations the provider reads."""

    model_config = ConfigDict(extra="forbid")

    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="https/http datasets only from these hosts (exact names or *.example.com; "
        "a comma-separated string is accepted). Empty: any host whose addresses are all public "
        "(loopback, private and link-local addresses need listing)",
    )
    ca_bundle: Path | None = Field(
        default=None,
        description="CA bundle for https datasets (server and local steps); default: the "
        "system's CAs",
    )
    max_bytes: int = Field(
        default=10 * 2**30,
        ge=1,
        description="an https/http dataset larger than this is refused (prepare-data "
        "downloads it whole)",
    )
    token_env: str | None = Field(
        default=None,
        description="NAME of the environment variable holding a bearer token for https "
        "datasets; sent only to allowed_hosts (so it needs them)",
    )
    timeout_seconds: float = Field(
        default=30.0, gt=0, description="connect (at most 5 s) and read timeout of http reads"
    )
    sample_max_bytes: int = Field(
        default=4 * 2**20,
        ge=1024,
        description="bytes the server reads from the head of an s3/https dataset at submit to "
        "check its first submit_sample_rows rows (JSONL, CSV and JSON lists are read from a "
        "prefix; a Parquet file or JSON object only when it is no larger than this, else "
        "only prepare-data checks its rows)",
    )

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _hosts(cls, v: Any) -> Any:
        # run.yaml's ${env.X:=} gives a string: "" (unset) or "a.example.com,b.example.com".
        if isinstance(v, str):
            return [h.strip() for h in v.split(",") if h.strip()]
        return v

    @field_validator("ca_bundle", "token_env", mode="before")
    @classmethod
    def _unset(cls, v: Any) -> Any:
        return None if v == "" else v

    @model_validator(mode="after")
    def _token_needs_hosts(self) -> DataSourcesConfig:
        if self.token_env and not self.allowed_hosts:
            raise ValueError(
                "data_sources.token_env needs data_sources.allowed_hosts: the token is sent "
                "only to listed hosts, never to any host a dataset URI names"
            )
        return self

    def http_policy(self) -> HttpPolicy:
        return HttpPolicy(
            allowed_hosts=list(self.allowed_hosts),
            ca_bundle=str(self.ca_bundle) if self.ca_bundle else None,
            max_bytes=self.max_bytes,
            token_env=self.token_env,
            timeout_seconds=self.timeout_seconds,
        )


# Provider-config settings a request may override for its own job, through
# hyperparam_search_config["kfp"] (DESIGN.md "Per-request extensions").
REQUEST_OVERRIDABLE = ("evaluation", "registry", "validation_fraction", "max_rows", "stages",
                       "algorithm", "osft", "max_grad_norm")  # fmt: skip
# ...except where credentials come from: a request naming them could send the registry's
# token (or any file or Secret the step can read) to a registry URI of its own choosing.
SERVER_ONLY = {"registry": ("token_env", "token_file", "token_secret")}


class OpenAIFaceConfig(BaseModel):
    """`llama-stack-kfp serve openai` (openai_api/): OpenAI's fine-tuning API on these jobs."""

    model_config = ConfigDict(extra="forbid")

    keys_file: Path | None = Field(
        default=None,
        description="API keys, one `<key> <owner>` per line (# comments); the file must not "
        "be readable by group or others. None: one user, and the server binds loopback only",
    )
    max_file_bytes: int = Field(
        default=512 * 2**20, ge=1, description="an uploaded file larger than this is a 413"
    )
    lora: bool = Field(
        default=True,
        description="method supervised/dpo train a LoRA adapter (rank/alpha below), as "
        "OpenAI's hosted fine-tuning trains an adapter; false: every parameter",
    )
    lora_rank: int = Field(default=8, ge=1)
    lora_alpha: float = Field(default=16.0, gt=0)
    lora_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])
    default_epochs: int = Field(default=3, ge=1, description='n_epochs "auto"')


class KFPPostTrainingConfig(BaseModel):
    openai: OpenAIFaceConfig = Field(
        default_factory=OpenAIFaceConfig,
        description="the OpenAI-compatible face (`llama-stack-kfp serve openai`)",
    )
    mode: Literal["local", "remote"] = Field(
        default="local",
        description="`local` runs the pipeline with kfp.local on this machine; `remote` "
        "compiles it and runs it on a KFP v2 cluster (see `remote`).",
    )
    remote: RemoteConfig = Field(
        default_factory=RemoteConfig, description="settings used when mode is `remote`"
    )
    dpo: DPODefaults = Field(default_factory=DPODefaults, description="preference_optimize")
    optimizer_defaults: OptimizerDefaults = Field(
        default_factory=OptimizerDefaults,
        description="Used when a request has no optimizer_config.",
    )
    algorithm: Literal["full", "osft"] | None = Field(
        default=None,
        description="What a request without algorithm_config trains (the 0.6.1 request's "
        "algorithm_config is LoRA or QAT only): `full`, or `osft` (Orthogonal Subspace "
        "Fine-Tuning, settings in `osft`). None: full fine-tuning, and for "
        "preference_optimize what `dpo.full` says. A request's algorithm_config wins.",
    )
    osft: OSFTConfig = Field(default_factory=OSFTConfig, description="algorithm: osft")
    engine: Literal["auto", "torchtune", "huggingface"] = Field(
        default="auto",
        description="Training engine: `auto` picks by model family and algorithm (the choice "
        "and its reason appear in the job's status).",
    )
    work_dir: Path = Field(
        default=Path("~/.llama/kfp-post-training"),
        description="Where job records, logs, pipeline artifacts and checkpoints are written.",
    )
    checkpoint_format: Literal["meta", "huggingface"] | None = Field(
        default=None,
        description="Layout of the merged weights written per epoch. "
        "None keeps the layout of the input weights.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="`auto` trains on CUDA when available, else on the CPU."
    )
    devices_per_job: int = Field(
        default=1,
        ge=1,
        description="Local mode: ranks each job trains with (torchrun on this machine; one "
        "per GPU, or CPU processes with device cpu). Remote mode: remote.resources.gpu_count "
        "sets it. The huggingface engine trains a whole copy per rank (DDP), or shards the "
        "model (FSDP) when the request's efficiency_config asks or a whole copy would not fit "
        "half a GPU.",
    )
    model_dirs: list[Path] = Field(
        default_factory=lambda: [Path("~/.llama/checkpoints")],
        validate_default=True,
        description="Directories searched for `<model descriptor>/` when a request names a "
        "llama-stack descriptor and no checkpoint_dir.",
    )
    max_seq_len: int = Field(
        default=2048, ge=8, description="Samples are truncated to this many tokens."
    )
    seed: int = Field(default=42, description="Seed for weights init, shuffling and dropout.")
    max_grad_norm: float | None = Field(
        default=1.0,
        ge=0,
        allow_inf_nan=False,
        description="Gradients are clipped to this total L2 norm before each optimizer step "
        "(both engines; TRL's and llama-stack's own recipe's default is 1.0). 0 or None: no "
        "clipping. The norm before clipping is reported as grad_norm in progress and metrics.",
    )
    validation_fraction: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Fraction of the training rows held out for validation when a request "
        "names no validation_dataset_id.",
    )
    observation_max_age_seconds: float | None = Field(
        default=None,
        ge=0,
        description="A status call answers from the scheduler's last observation of the job "
        "while it is younger than this (remotely: no call to the cluster per status call). "
        "None: the backend's own (local 0.1 s: file reads; remote `remote.poll_seconds`).",
    )
    max_concurrent_jobs: int = Field(
        default=1,
        ge=1,
        description="Jobs that train at the same time; later ones wait as `scheduled`, in "
        "submission order. One suits a CPU or a single GPU.",
    )
    allowed_path_roots: list[Path] | None = Field(
        default=None,
        description="With the server's auth on: the directories under which a request may name "
        "local paths (model, checkpoint_dir, dataset files, evaluation task files). None: "
        "model_dirs and the Hugging Face cache. Inside work_dir only the folders of jobs the "
        "access policy lets the user read, whatever this says.",
    )
    allowed_claims: list[str] = Field(
        default_factory=list,
        description="With the server's auth on: the PersistentVolumeClaims a request may name "
        "(pvc://<claim>/...: models, checkpoint_dir, datasets); any other claim is a 403. "
        "Without auth, any claim of the namespace.",
    )
    max_jobs_per_user: int | None = Field(
        default=None,
        ge=1,
        description="With the server's auth on: jobs one user may have queued or running at "
        "once; a submit beyond it is a 429. None: no limit (without auth there is no user).",
    )
    cancel_jobs_on_shutdown: bool = Field(
        default=False,
        description="Cancel running and queued jobs when the server stops. By default they "
        "keep running and are tracked again when the server starts.",
    )
    tracking_probe_timeout_seconds: float = Field(
        default=3.0,
        ge=0,
        description="A request's MLflow tracking server must answer GET /health within this "
        "long at submit (else 503); 0 skips the probe (e.g. a server outside the cluster that "
        "cannot resolve an in-cluster tracking URI).",
    )
    checkpoint_every_steps: int | None = Field(
        default=None,
        ge=1,
        description="Also checkpoint (weights + training state) every N optimizer steps, as "
        "`step_<N>` checkpoints (huggingface engine). None: once per epoch only.",
    )
    keep_step_checkpoints: int = Field(
        default=2,
        ge=1,
        description="Step checkpoints kept per job (the newest; each is full size). Epoch "
        "checkpoints are all kept.",
    )
    save_on_cancel: bool = Field(
        default=False,
        description="A cancel lets the train step save a checkpoint first (as on SIGTERM), "
        "instead of stopping it at once.",
    )
    stop_grace_seconds: float = Field(
        default=30.0,
        ge=0,
        description="Local mode, with save_on_cancel: how long a cancelled train step may take "
        "to checkpoint after SIGTERM before it is killed (remotely the pod's "
        "terminationGracePeriodSeconds, 30 s by default, is the limit).",
    )
    max_rows: int | None = Field(
        default=None,
        ge=1,
        description="Train on at most this many rows of the dataset (the first ones, before "
        "the validation split); None: all.",
    )
    evaluation: EvaluationConfig = Field(
        default_factory=EvaluationConfig, description="the evaluate stage"
    )
    registry: RegistryConfig = Field(
        default_factory=RegistryConfig, description="the register stage"
    )
    stages: list[Literal["train", "evaluate", "register"]] | None = Field(
        default=None,
        description="The stages after prepare-data. None: train, then evaluate when "
        "evaluation.enabled and register when registry.kind is set. A request naming only "
        "evaluate/register runs them on the finished checkpoint named by checkpoint_dir.",
    )
    submit_sample_rows: int = Field(
        default=100,
        ge=1,
        description="Rows checked against the data format at submit time; prepare-data checks "
        "every row.",
    )
    data_sources: DataSourcesConfig = Field(
        default_factory=DataSourcesConfig,
        description="Dataset locations: https/http hosts, CA, size caps, token by reference",
    )

    @field_validator("remote", mode="before")
    @classmethod
    def _no_empty_paths(cls, v: Any) -> Any:
        # run.yaml's ${env.X:=} gives "" for an unset variable: that is no file.
        if isinstance(v, dict):
            empty = ("token_file", "ca_bundle", "s3_ca_bundle", "s3_ca_bundle_configmap",
                     "scratch_storage_class")  # fmt: skip
            v = {**v, **{k: None for k in empty if v.get(k) == ""}}
        return v

    @field_validator(
        "checkpoint_every_steps",
        "observation_max_age_seconds",
        "algorithm",
        "max_jobs_per_user",
        "max_grad_norm",
        mode="before",
    )
    @classmethod
    def _unset(cls, v: Any) -> Any:
        return None if v == "" else v  # ${env.X:=} of an unset variable

    @field_validator("work_dir", mode="after")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return v.expanduser()

    @field_validator("model_dirs", mode="after")
    @classmethod
    def _expand_all(cls, v: list[Path]) -> list[Path]:
        return [p.expanduser() for p in v]

    def ranks(self) -> int:
        """How many processes train each job together on one machine (or node)."""
        if self.mode == "remote":
            return max(1, self.remote.resources.gpu_count)
        return self.devices_per_job

    def nodes(self) -> int:
        """Machines each job trains on (remote mode only: a Kubeflow Trainer TrainJob)."""
        return self.remote.resources.nodes if self.mode == "remote" else 1

    def world(self) -> int:
        """Every rank of a job, over all its nodes."""
        return self.ranks() * self.nodes()

    def for_request(self, extension: Any) -> KFPPostTrainingConfig:
        """This config with a request's `hyperparam_search_config["kfp"]` applied: a dict
        whose keys are names of REQUEST_OVERRIDABLE settings; nested settings merge key by
        key. An unknown key or a bad value is an InvalidRequest naming it."""
        if extension is None:
            return self
        where = 'hyperparam_search_config["kfp"]'
        if not isinstance(extension, dict):
            raise InvalidRequest(f"{where} must be an object of settings (got {extension!r})")
        unknown = sorted(set(extension) - set(REQUEST_OVERRIDABLE))
        if unknown:
            raise InvalidRequest(
                f"{where} has unknown key(s) {', '.join(map(repr, unknown))}; a request may "
                f"set: {', '.join(REQUEST_OVERRIDABLE)}"
            )
        for section, keys in SERVER_ONLY.items():
            named = extension.get(section)
            taken = sorted(set(named) & set(keys)) if isinstance(named, dict) else []
            if taken:
                raise InvalidRequest(
                    f"{where}.{section} may not set {', '.join(taken)}: where credentials come "
                    "from is the server's setting (provider config), never a request's"
                )
        merged = deep_merge(self.model_dump(), extension)
        try:
            return type(self).model_validate(merged)
        except ValidationError as e:
            problems = [
                f"{where}.{'.'.join(map(str, err['loc']))}: {err['msg']}"
                for err in e.errors(include_url=False)
            ]
            raise InvalidRequest("; ".join(problems)) from None

    @classmethod
    def sample_run_config(cls, __distro_dir__: str = "", **kwargs: Any) -> dict[str, Any]:
        return {
            "mode": "${env.KFP_MODE:=local}",
            "work_dir": "${env.KFP_WORK_DIR:=~/.llama/kfp-post-training}",
            "device": "${env.KFP_DEVICE:=auto}",
        }
