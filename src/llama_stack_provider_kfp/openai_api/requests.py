"""OpenAI's request bodies (the `openai` SDK's JobCreateParams), checked as OpenAI checks them:
an unknown field, a wrong type or a value out of range is a 400 naming the field."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Auto = Literal["auto"]


class SupervisedHyperparameters(_Strict):
    batch_size: Auto | int | None = Field(default=None)
    learning_rate_multiplier: Auto | float | None = None
    n_epochs: Auto | int | None = None

    @field_validator("batch_size", "n_epochs")
    @classmethod
    def _positive_int(cls, v: object) -> object:
        if isinstance(v, int) and not 1 <= v <= 256 and v is not True:
            raise ValueError("must be 'auto' or an integer from 1 to 256")
        return v

    @field_validator("learning_rate_multiplier")
    @classmethod
    def _positive(cls, v: object) -> object:
        if isinstance(v, int | float) and not v > 0:
            raise ValueError("must be 'auto' or a number greater than 0")
        return v


class DpoHyperparameters(SupervisedHyperparameters):
    beta: Auto | float | None = None

    @field_validator("beta")
    @classmethod
    def _beta(cls, v: object) -> object:
        if isinstance(v, int | float) and not 0 < v <= 2:
            raise ValueError("must be 'auto' or a number in (0, 2]")
        return v


class Supervised(_Strict):
    hyperparameters: SupervisedHyperparameters | None = None


class Dpo(_Strict):
    hyperparameters: DpoHyperparameters | None = None


class Method(_Strict):
    type: str
    supervised: Supervised | None = None
    dpo: Dpo | None = None
    reinforcement: dict | None = None


class WandbIntegration(_Strict):
    project: str
    name: str | None = None
    entity: str | None = None
    tags: list[str] | None = None


class Integration(_Strict):
    type: str
    wandb: WandbIntegration


class CreateJob(_Strict):
    model: str = Field(min_length=1)
    training_file: str = Field(min_length=1)
    validation_file: str | None = None
    hyperparameters: SupervisedHyperparameters | None = None  # legacy, supervised only
    method: Method | None = None
    suffix: str | None = Field(default=None, max_length=64)
    seed: int | None = Field(default=None, ge=0, le=2147483647)
    metadata: dict[str, str] | None = None
    integrations: list[Integration] | None = None
    # This server's extension (the SDK's extra_body={"kfp": {...}}): the provider's
    # per-request settings, as hyperparam_search_config["kfp"] on the llama-stack face
    # (algorithm: osft, osft, stages, evaluation, registry, ...).
    kfp: dict | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is None:
            return v
        if len(v) > 16:
            raise ValueError(f"at most 16 pairs (got {len(v)})")
        for key, value in v.items():
            if len(key) > 64:
                raise ValueError(f"key {key[:20]!r}... is longer than 64 characters")
            if len(value) > 512:
                raise ValueError(f"the value of {key!r} is longer than 512 characters")
        return v

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, v: str | None) -> str | None:
        if v is not None and (":" in v or not v.strip()):
            raise ValueError(
                "must be non-empty and hold no ':' (it becomes part of the model name)"
            )
        return v
