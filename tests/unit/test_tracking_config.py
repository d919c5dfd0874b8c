"""logger_config -> TrackingSpec: the pure checks at submit (core.tracking)."""

from __future__ import annotations

import pytest

from llama_stack_provider_kfp.boundary.tracking_checks import check_writable
from llama_stack_provider_kfp.core.errors import InvalidRequest
from llama_stack_provider_kfp.core.tracking import (
    DEFAULT_EXPERIMENT,
    looks_secret,
    parse_logger_config,
)


def test_empty_means_no_tracking():
    assert parse_logger_config({}, "local") is None
    assert parse_logger_config(None, "local") is None


def test_several_trackers_with_defaults(tmp_path):
    spec = parse_logger_config(
        {
            "mlflow": {"tracking_uri": "https://mlflow.example/prefix"},
            "tensorboard": {},
            "wandb": {"mode": "offline", "dir": str(tmp_path / "new" / "wandb")},
        },
        "local",
    )
    assert spec is not None and spec.mlflow is not None and spec.wandb is not None
    assert spec.mlflow.experiment_name == DEFAULT_EXPERIMENT and spec.mlflow.run_name is None
    assert spec.tensorboard is not None and spec.tensorboard.log_dir is None
    assert spec.wandb.mode == "offline"


@pytest.mark.parametrize(
    ("key", "secret"),
    [("token", True), ("api_key", True), ("apiKey", True), ("accessToken", True),
     ("MLFLOW_TRACKING_PASSWORD", True), ("auth", True), ("tokenizer", False),
     ("author", False), ("tracking_uri", False), ("project", False)],
)  # fmt: skip
def test_secret_looking_keys(key, secret):
    assert looks_secret(key) is secret


def test_secret_anywhere_is_refused_without_echoing_it():
    for raw in (
        {"mlflow": {"tracking_uri": "http://h", "tags": {"api_token": "v4lue"}}},
        {"mlflow": {"tracking_uri": "http://u:v4lue@h"}},
        {"mlflow": {"tracking_uri": "http://h/?token=v4lue"}},
        {"password": "v4lue"},
    ):
        with pytest.raises(InvalidRequest) as err:
            parse_logger_config(raw, "local")
        assert "credential" in str(err.value) and "v4lue" not in str(err.value)


@pytest.mark.parametrize(
    "uri", ["sqlite:///x.db", "databricks", "mlflow.example:5000", "http://", "http://h:99999",
            "file:relative/dir"],
)  # fmt: skip
def test_unsupported_or_malformed_tracking_uri(uri):
    with pytest.raises(InvalidRequest, match="tracking_uri"):
        parse_logger_config({"mlflow": {"tracking_uri": uri}}, "local")


def test_file_store_must_be_writable(tmp_path):
    spec = parse_logger_config({"mlflow": {"tracking_uri": f"file://{tmp_path}/runs"}}, "local")
    assert spec is not None
    check_writable(spec)
    blocker = tmp_path / "file"
    blocker.write_text("")
    blocked = parse_logger_config({"mlflow": {"tracking_uri": f"file://{blocker}/runs"}}, "local")
    with pytest.raises(InvalidRequest, match="not writable"):
        check_writable(blocked)
    check_writable(None)


def test_local_directories_refused_in_remote_mode(tmp_path):
    for raw in (
        {"tensorboard": {"log_dir": str(tmp_path)}},
        {"mlflow": {"tracking_uri": f"file://{tmp_path}"}},
        {"wandb": {"dir": str(tmp_path)}},
    ):
        with pytest.raises(InvalidRequest, match="inside the step's pod"):
            parse_logger_config(raw, "remote")
    assert parse_logger_config({"tensorboard": {}}, "remote") is not None


def test_missing_and_mistyped_fields():
    with pytest.raises(InvalidRequest, match=r"logger_config\.mlflow\.tracking_uri"):
        parse_logger_config({"mlflow": {}}, "local")
    with pytest.raises(InvalidRequest, match="must be an object"):
        parse_logger_config({"tensorboard": "/tmp/tb"}, "local")
