"""llama-stack post-training provider that runs fine-tuning as Kubeflow Pipelines."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import KFPPostTrainingConfig

__all__ = ["KFPPostTrainingConfig", "get_adapter_impl", "get_provider_impl"]


def __getattr__(name: str) -> Any:
    # The config class is loaded when asked for: the job's processes (worker, pipeline steps)
    # import this package on every start and never need it (0.1 s of pydantic models).
    if name == "KFPPostTrainingConfig":
        from .config import KFPPostTrainingConfig

        return KFPPostTrainingConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


async def get_adapter_impl(
    config: KFPPostTrainingConfig, deps: dict[Any, Any], policy: list[Any] | None = None
) -> Any:
    """llama-stack passes the server's access_policy as `policy` (it looks for the name)."""
    from llama_stack_api import Api

    from .api.impl import KFPPostTrainingImpl

    return KFPPostTrainingImpl(config, deps[Api.datasetio], deps[Api.datasets], policy)


# Same factory when the provider is declared inline (providers.d/inline/...).
get_provider_impl = get_adapter_impl
