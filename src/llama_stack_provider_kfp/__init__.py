"""llama-stack post-training provider that runs fine-tuning as Kubeflow Pipelines."""

from typing import Any

from .config import KFPPostTrainingConfig

__all__ = ["KFPPostTrainingConfig", "get_adapter_impl", "get_provider_impl"]


async def get_adapter_impl(config: KFPPostTrainingConfig, deps: dict[Any, Any]) -> Any:
    from llama_stack_api import Api

    from .api.impl import KFPPostTrainingImpl

    return KFPPostTrainingImpl(config, deps[Api.datasetio], deps[Api.datasets])


# Same factory when the provider is declared inline (providers.d/inline/...).
get_provider_impl = get_adapter_impl
