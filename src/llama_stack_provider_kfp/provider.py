"""Entry point llama-stack looks up for `module: llama_stack_provider_kfp` in run.yaml."""

from llama_stack_api import Api, ProviderSpec, RemoteProviderSpec


def get_provider_spec() -> ProviderSpec:
    return RemoteProviderSpec(
        api=Api.post_training,
        adapter_type="kfp",
        provider_type="remote::kfp",
        module="llama_stack_provider_kfp",
        config_class="llama_stack_provider_kfp.config.KFPPostTrainingConfig",
        api_dependencies=[Api.datasetio, Api.datasets],
        pip_packages=["llama-stack-provider-kfp"],
        description="Supervised fine-tuning as Kubeflow Pipelines runs (kfp.local or KFP v2).",
    )
