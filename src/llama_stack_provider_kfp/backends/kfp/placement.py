"""Kubernetes placement of the pipeline's tasks in remote mode (kfp-kubernetes).

Secrets are referenced by name and mounted as environment variables: their values never
enter the pipeline, its parameters or a job record.
"""

from __future__ import annotations

from ...boundary.storage import STEP_ENV
from ...config import RemoteConfig
from ...core.locations import parse
from ...core.spec import JobSpec
from ...core.tracking import CREDENTIAL_ENV
from ...kube.trainjob import PLAN_ENV, NodePlan

# Secret key -> env name in the step. Not the AWS_* names: KFP's launcher runs in the same
# container and would send the pipeline root's artifact traffic with them.
_S3_SECRET_ENV = {
    "AWS_ACCESS_KEY_ID": STEP_ENV["access_key"],
    "AWS_SECRET_ACCESS_KEY": STEP_ENV["secret_key"],
}
CA_MOUNT = "/etc/llama-stack-kfp/s3-ca"
# The key of registry.token_secret that holds the Kubeflow Model Registry's bearer token.
REGISTRY_TOKEN_KEY = "MODEL_REGISTRY_TOKEN"
SCRATCH_MOUNT = "/scratch"
# Who submitted the job (llama-stack's principal), on every pod of its run: KFP v2 runs have no
# labels, and a label value cannot hold every principal (an e-mail, a service account).
OWNER_ANNOTATION = "llama-stack.io/owner"


def with_owner(apply, principal: str | None):
    """`apply` that also annotates each task's pod with the job's owner."""
    if principal is None:
        return apply
    from kfp import kubernetes

    def apply_owned(task, step: str) -> None:
        if apply is not None:
            apply(task, step)
        kubernetes.add_pod_annotation(task, OWNER_ANNOTATION, principal)

    return apply_owned


def remote_placement(cfg: RemoteConfig):
    """A function of the job's spec returning `apply(task, step)` for build_pipeline."""

    def for_job(spec: JobSpec | None = None):
        return _placement(cfg, spec)

    return for_job


def _placement(cfg: RemoteConfig, spec: JobSpec | None):
    from kfp import kubernetes

    res = cfg.resources
    model = parse(spec.model.path) if spec else None
    pvc = model if model is not None and model.scheme == "pvc" else None
    data_claims = _data_claims(spec) if spec else {}

    plan = node_plan(cfg) if res.nodes > 1 else None

    def apply(task, step: str) -> None:
        if cfg.s3_credentials_secret:
            kubernetes.use_secret_as_env(
                task,
                secret_name=cfg.s3_credentials_secret,
                secret_key_to_env=dict(_S3_SECRET_ENV),
            )
        if cfg.hf_token_secret:
            kubernetes.use_secret_as_env(
                task, secret_name=cfg.hf_token_secret, secret_key_to_env={"HF_TOKEN": "HF_TOKEN"}
            )
        if cfg.s3_endpoint_url:
            task.set_env_variable(STEP_ENV["endpoint"], cfg.s3_endpoint_url)
        if cfg.s3_ca_bundle_configmap:
            name, _, key = cfg.s3_ca_bundle_configmap.partition("/")
            kubernetes.use_config_map_as_volume(task, config_map_name=name, mount_path=CA_MOUNT)
            task.set_env_variable(STEP_ENV["ca_bundle"], f"{CA_MOUNT}/{key or 'ca.crt'}")
        if cfg.image_pull_secrets:
            kubernetes.set_image_pull_secrets(task, list(cfg.image_pull_secrets))
        for key, value in res.node_selector.items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for t in res.tolerations:
            kubernetes.add_toleration(
                task,
                key=t.get("key"),
                operator=t.get("operator", "Equal"),
                value=t.get("value"),
                effect=t.get("effect"),
            )
        if step == "evaluate":
            _evaluate(task, cfg, pvc)
            return
        if step == "register":
            _register_secrets(task, cfg, spec)
        if step == "prepare-data":
            # pvc:// datasets: the step reads them where Location.path says (the server
            # cannot read them, so prepare-data checks every row).
            for claim, mount_path in data_claims.items():
                kubernetes.mount_pvc(task, pvc_name=claim, mount_path=mount_path)
        if step != "train" or plan is not None:
            # Several nodes: the train step only stages the inputs and follows the TrainJob,
            # whose nodes get the resources; it needs no GPU.
            task.set_cpu_request("1").set_memory_request("2Gi")
        if step != "train":
            return
        if plan is not None:
            task.set_env_variable(PLAN_ENV, plan.model_dump_json())
        if cfg.tracking_secret:
            # Optional: a Secret may hold only the keys its tracker needs (a missing key
            # leaves that variable unset).
            kubernetes.use_secret_as_env(
                task,
                secret_name=cfg.tracking_secret,
                secret_key_to_env={k: k for k in CREDENTIAL_ENV},
                optional=True,
            )
        if pvc is not None:
            kubernetes.mount_pvc(task, pvc_name=pvc.root, mount_path=pvc.mount_path)
        if plan is not None:
            if cfg.scratch_size:  # the weights pass through it when they are staged to S3
                _scratch(task, cfg)
            return
        if cfg.scratch_size:
            _scratch(task, cfg)
        _resources(task, cfg, res.gpu_count, cpu_limit=True)
        if res.gpu_count > 1:
            # One rank per GPU: NCCL and the ranks' data exchange use shared memory, which a
            # container gets only 64 MiB of unless /dev/shm is a memory volume.
            kubernetes.empty_dir_mount(task, volume_name="shm", mount_path="/dev/shm",
                                       medium="Memory")  # fmt: skip
        if cfg.train_retries:
            # A retried step finds its own checkpoints in the job's output and continues.
            task.set_retry(num_retries=cfg.train_retries, backoff_duration="30s")

    return apply


def _evaluate(task, cfg: RemoteConfig, pvc) -> None:
    """The evaluate step loads the base and the tuned model: the train step's resources on
    one accelerator (lm-eval's hf model runs on one device), its scratch space, the model's
    PVC, and the tracking Secret (it logs its metrics to the job's MLflow run)."""
    from kfp import kubernetes

    res = cfg.resources
    if cfg.tracking_secret:
        kubernetes.use_secret_as_env(task, secret_name=cfg.tracking_secret,
                                     secret_key_to_env={k: k for k in CREDENTIAL_ENV},
                                     optional=True)  # fmt: skip
    if pvc is not None:
        kubernetes.mount_pvc(task, pvc_name=pvc.root, mount_path=pvc.mount_path)
    if cfg.scratch_size:
        _scratch(task, cfg)
    _resources(task, cfg, min(res.gpu_count, 1), cpu_limit=False)


def _resources(task, cfg: RemoteConfig, accelerators: int, cpu_limit: bool) -> None:
    """The configured CPU (limit too when asked), memory and `accelerators` of the
    configured kind."""
    res = cfg.resources
    if res.cpu_request:
        task.set_cpu_request(res.cpu_request)
    if cpu_limit and res.cpu_limit:
        task.set_cpu_limit(res.cpu_limit)
    if res.memory_request:
        task.set_memory_request(res.memory_request)
    if res.memory_limit:
        task.set_memory_limit(res.memory_limit)
    if accelerators:
        task.set_accelerator_type(res.accelerator).set_accelerator_limit(accelerators)


def _register_secrets(task, cfg: RemoteConfig, spec: JobSpec | None) -> None:
    """The register step's credentials, by reference: the Kubeflow Model Registry's bearer
    token from `registry.token_secret` (key MODEL_REGISTRY_TOKEN, into the variable the step
    reads: registry.token_env), and MLflow's from `remote.tracking_secret` (as the train step
    gets them; each key optional)."""
    from kfp import kubernetes

    reg = spec.registry if spec is not None else None
    if reg is not None and reg.kind == "kubeflow" and reg.token_secret:
        env = reg.token_env or REGISTRY_TOKEN_KEY
        kubernetes.use_secret_as_env(
            task, secret_name=reg.token_secret, secret_key_to_env={REGISTRY_TOKEN_KEY: env}
        )
    if cfg.tracking_secret:
        kubernetes.use_secret_as_env(
            task,
            secret_name=cfg.tracking_secret,
            secret_key_to_env={k: k for k in CREDENTIAL_ENV if k.startswith("MLFLOW_")},
            optional=True,
        )


def _data_claims(spec: JobSpec) -> dict[str, str]:
    """Claim -> mount path of the job's pvc:// datasets (each claim mounted once)."""
    uris = (spec.data.uri, spec.data.validation_uri)
    locs = [parse(u) for u in uris if u and u.startswith("pvc://")]
    return {loc.root: loc.mount_path for loc in locs}


def _scratch(task, cfg: RemoteConfig) -> None:
    """Weights and checkpoints are tens of GB for 8B models: a sized volume, not the node's
    ephemeral storage (which evicts the pod when it runs out). The step's temporary files go
    there through TMPDIR."""
    from kfp import kubernetes

    kubernetes.add_ephemeral_volume(
        task,
        volume_name="scratch",
        mount_path=SCRATCH_MOUNT,
        access_modes=["ReadWriteOnce"],
        size=cfg.scratch_size,
        storage_class_name=cfg.scratch_storage_class,
    )
    task.set_env_variable("TMPDIR", SCRATCH_MOUNT)


def _secret_env(secret: str, key_to_env: dict[str, str], optional: bool = False) -> list[dict]:
    ref: dict = {"name": secret}
    return [
        {"name": env, "valueFrom": {"secretKeyRef": {**ref, "key": key,
                                                     **({"optional": True} if optional else {})}}}
        for key, env in key_to_env.items()
    ]  # fmt: skip


def node_plan(cfg: RemoteConfig) -> NodePlan:
    """The TrainJob's part the provider config decides: the same image, env (the job's S3
    settings, Secrets by reference), resources per node and scheduling as a one-node step."""
    res = cfg.resources
    env: list[dict] = []
    if cfg.s3_endpoint_url:
        env.append({"name": STEP_ENV["endpoint"], "value": cfg.s3_endpoint_url})
    if cfg.s3_credentials_secret:
        env += _secret_env(cfg.s3_credentials_secret, _S3_SECRET_ENV)
    # No HF_TOKEN: the step stages Hub weights to S3, the nodes read them there.
    if cfg.tracking_secret:
        env += _secret_env(cfg.tracking_secret, {k: k for k in CREDENTIAL_ENV}, optional=True)
    volumes: list[dict] = []
    mounts: list[dict] = []
    if cfg.s3_ca_bundle_configmap:
        name, _, key = cfg.s3_ca_bundle_configmap.partition("/")
        volumes.append({"name": "s3-ca", "configMap": {"name": name}})
        mounts.append({"name": "s3-ca", "mountPath": CA_MOUNT, "readOnly": True})
        env.append({"name": STEP_ENV["ca_bundle"], "value": f"{CA_MOUNT}/{key or 'ca.crt'}"})
    if cfg.scratch_size:
        claim: dict = {"accessModes": ["ReadWriteOnce"],
                       "resources": {"requests": {"storage": cfg.scratch_size}}}  # fmt: skip
        if cfg.scratch_storage_class:
            claim["storageClassName"] = cfg.scratch_storage_class
        volumes.append({"name": "scratch",
                        "ephemeral": {"volumeClaimTemplate": {"spec": claim}}})  # fmt: skip
        mounts.append({"name": "scratch", "mountPath": SCRATCH_MOUNT})
        env.append({"name": "TMPDIR", "value": SCRATCH_MOUNT})
    if res.gpu_count > 1:  # NCCL between a node's ranks needs more than 64 MiB of /dev/shm
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
    requests = {k: v for k, v in (("cpu", res.cpu_request), ("memory", res.memory_request)) if v}
    limits = {k: v for k, v in (("cpu", res.cpu_limit), ("memory", res.memory_limit)) if v}
    if res.gpu_count:
        requests[res.accelerator] = limits[res.accelerator] = str(res.gpu_count)
    resources = {k: v for k, v in (("requests", requests), ("limits", limits)) if v}
    return NodePlan(
        nodes=res.nodes,
        procs_per_node=max(1, res.gpu_count),
        runtime=cfg.training_runtime,
        image=cfg.image,
        resources=resources,
        env=env,
        node_selector=dict(res.node_selector),
        tolerations=[dict(t) for t in res.tolerations],
        image_pull_secrets=list(cfg.image_pull_secrets),
        volumes=volumes,
        volume_mounts=mounts,
        service_account=cfg.service_account,
        api_grace_seconds=cfg.trainjob_api_grace_seconds,
        poll_seconds=cfg.poll_seconds,
    )
