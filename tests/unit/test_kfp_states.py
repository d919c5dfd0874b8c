"""Every KFP run state maps to a job status; the terminal ones to terminal statuses."""

from __future__ import annotations

from kfp_server_api.models.v2beta1_runtime_state import V2beta1RuntimeState

from llama_stack_provider_kfp.backends.kfp.backend import STATE_MAP, TERMINAL_STATES
from llama_stack_provider_kfp.jobs.record import TERMINAL


def test_every_state_of_the_api_is_mapped():
    assert set(STATE_MAP) == set(V2beta1RuntimeState.allowable_values)


def test_terminal_states_are_exactly_the_terminal_statuses():
    for state, status in STATE_MAP.items():
        assert (state in TERMINAL_STATES) == (status in TERMINAL), state
    assert STATE_MAP["SUCCEEDED"] == "completed" and STATE_MAP["CANCELED"] == "cancelled"
    # CANCELING is still running: the job is cancelled once KFP says CANCELED.
    assert STATE_MAP["CANCELING"] == "in_progress"
