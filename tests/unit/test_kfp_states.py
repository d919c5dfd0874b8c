"""Every KFP run state maps to a job status; the terminal ones to terminal statuses."""

from __future__ import annotations

import pytest
from kfp_server_api.models.v2beta1_runtime_state import V2beta1RuntimeState

from llama_stack_provider_kfp.backends.kfp.observation import STATE_MAP, TERMINAL_STATES
from llama_stack_provider_kfp.jobs.record import TERMINAL


def test_every_state_of_the_api_is_mapped():
    assert set(STATE_MAP) == set(V2beta1RuntimeState.allowable_values)


def test_terminal_states_are_exactly_the_terminal_statuses():
    for state, status in STATE_MAP.items():
        assert (state in TERMINAL_STATES) == (status in TERMINAL), state
    assert STATE_MAP["SUCCEEDED"] == "completed" and STATE_MAP["CANCELED"] == "cancelled"
    # CANCELING is still running: the job is cancelled once KFP says CANCELED.
    assert STATE_MAP["CANCELING"] == "in_progress"


@pytest.mark.parametrize(
    ("tag", "ok"),
    [("2.5.0", True), ("v2.14.1", True), ("2.5.0-rc.1", True), ("3.0.0", True), (None, True),
     ("2.4.1", False), ("2.3.0", False), ("1.8.5", False)],
)  # fmt: skip
def test_backend_version_check(tag, ok):
    from llama_stack_provider_kfp.backends.kfp.connection import check_backend_version
    from llama_stack_provider_kfp.core.errors import Refused

    if ok:
        check_backend_version(tag, "https://kfp.example")
    else:
        with pytest.raises(Refused, match=f"version {tag}.*>= 2.5"):
            check_backend_version(tag, "https://kfp.example")


def test_gpus_set_the_ranks_remotely_and_devices_per_job_locally():
    from llama_stack_provider_kfp.config import KFPPostTrainingConfig

    remote = {"s3_bucket": "b", "resources": {"gpu_count": 4}}
    assert KFPPostTrainingConfig(mode="remote", remote=remote).ranks() == 4
    assert KFPPostTrainingConfig(mode="remote", remote={"s3_bucket": "b"}).ranks() == 1
    assert KFPPostTrainingConfig(devices_per_job=2).ranks() == 2
    assert KFPPostTrainingConfig().ranks() == 1
