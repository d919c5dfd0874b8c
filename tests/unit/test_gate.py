"""The register stage's gate (core.gate): a pure function of its settings and the evaluation."""

from __future__ import annotations

import pytest

from llama_stack_provider_kfp.core.errors import InvalidRequest
from llama_stack_provider_kfp.core.gate import decide, lower_is_better
from llama_stack_provider_kfp.core.spec import GateSpec
from llama_stack_provider_kfp.core.stage_results import Comparison, Evaluation


def _evaluation(**results: dict[str, tuple[float | None, float | None]]) -> Evaluation:
    return Evaluation(
        checkpoint="/jobs/j/checkpoints/epoch_1", base_model="m",
        results={task: {k: Comparison.of(*v) for k, v in ms.items()}
                 for task, ms in results.items()},
        notes=["no lm-eval tasks named"],
    )  # fmt: skip


EVAL = _evaluation(
    held_out={"loss": (2.0, 1.5), "perplexity": (7.39, 4.48), "token_accuracy": (0.30, 0.42)},
    my_task={"acc,none": (0.50, 0.48), "exact_match": (0.1, 0.1)},
)


@pytest.mark.parametrize(
    ("metric", "passed", "higher"),
    [
        ("held_out/loss", True, False),  # 1.5 < 2.0: lower is better
        ("held_out/perplexity", True, False),
        ("held_out/token_accuracy", True, True),
        ("my_task/acc", False, True),  # 0.48 < 0.50; lm-eval's ",none" may be left out
        ("my_task/exact_match", False, True),  # equal is not better
    ],
)
def test_direction_is_inferred_from_the_metric(metric, passed, higher):
    d = decide(GateSpec(metric=metric), EVAL)
    assert (d.passed, d.higher_is_better) == (passed, higher)
    assert d.base is not None and d.tuned is not None and d.delta == pytest.approx(d.tuned - d.base)
    assert ("beats" if passed else "does not beat") in d.reason and metric in d.reason


def test_min_delta_must_be_reached():
    assert decide(GateSpec(metric="held_out/loss", min_delta=0.5), EVAL).passed  # 0.5 >= 0.5
    failed = decide(GateSpec(metric="held_out/loss", min_delta=0.6), EVAL)
    assert not failed.passed and "at least 0.6" in failed.reason and failed.min_delta == 0.6


def test_an_explicit_direction_wins():
    d = decide(GateSpec(metric="held_out/loss", higher_is_better=True), EVAL)
    assert not d.passed and d.higher_is_better


def test_a_missing_metric_cannot_be_decided_and_says_what_there_is():
    with pytest.raises(InvalidRequest) as e:
        decide(GateSpec(metric="held_out/accuracy"), EVAL)
    text = str(e.value)
    assert "registry.gate.metric 'held_out/accuracy'" in text
    assert "held_out/token_accuracy" in text and "my_task/acc,none" in text
    assert "no lm-eval tasks named" in text  # the evaluation's own notes say why


def test_a_metric_with_one_side_missing_cannot_be_decided():
    with pytest.raises(InvalidRequest, match="no base and tuned value"):
        decide(GateSpec(metric="t/acc"), _evaluation(t={"acc": (None, 0.5)}))


def test_no_evaluation_cannot_be_decided():
    with pytest.raises(InvalidRequest, match="needs the evaluate stage"):
        decide(GateSpec(metric="held_out/loss"), None)


@pytest.mark.parametrize(
    ("metric", "lower"),
    [("held_out/loss", True), ("held_out/perplexity", True), ("t/word_perplexity,none", True),
     ("t/bits_per_byte", True), ("t/ter", True), ("t/acc", False), ("t/acc_norm", False),
     ("t/exact_match", False), ("t/bleu", False), ("t/f1", False)],
)  # fmt: skip
def test_lower_is_better(metric, lower):
    assert lower_is_better(metric) is lower
