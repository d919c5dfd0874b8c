"""The register stage's gate: register only when the tuned model beats the base.

A pure function of the gate's settings and the evaluation's results, so the server and the
CLI can explain a decision the step made. A metric is named `<task>/<metric>` as the
evaluation keys it: `held_out/loss`, `held_out/perplexity`, `held_out/token_accuracy`, or an
lm-eval task's (`my_task/acc`; lm-eval's `,none` filter suffix may be left out).

"Beats by min_delta": the improvement (tuned - base where higher is better, base - tuned where
lower is) is above 0 and at least `min_delta`. A gate that names a metric the evaluation does
not hold is a configuration mistake, not a verdict on the model: `decide` raises
InvalidRequest naming the metrics there are, and the register stage fails with it.
"""

from __future__ import annotations

import re

from .errors import InvalidRequest
from .spec import GateSpec
from .stage_results import Comparison, Evaluation, GateDecision

# Metric names where lower is better (lm-eval's and the held-out rows'): losses, perplexities,
# bits per byte and error rates. Everything else (accuracy, exact match, BLEU, ...) is higher.
_LOWER_IS_BETTER = re.compile(
    r"(loss|perplexity|bits_per_byte|bpb|(^|_)(ter|wer|cer)$|error|_stderr$)", re.I
)


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of `metric` (`task/name` or `name`) is the better one."""
    name = metric.rsplit("/", 1)[-1].split(",", 1)[0]
    return bool(_LOWER_IS_BETTER.search(name))


def find_metric(evaluation: Evaluation, metric: str) -> Comparison | None:
    """The evaluation's base/tuned comparison for `<task>/<metric>`, or None."""
    for task, metrics in evaluation.results.items():
        if not metric.startswith(f"{task}/"):
            continue
        name = metric[len(task) + 1 :]
        found = metrics.get(name) or metrics.get(f"{name},none")
        if found is not None:
            return found
    return None


def available_metrics(evaluation: Evaluation) -> list[str]:
    return sorted(f"{task}/{name}" for task, ms in evaluation.results.items() for name in ms)


def decide(gate: GateSpec, evaluation: Evaluation | None) -> GateDecision:
    """The gate's decision with its numbers. InvalidRequest when it cannot be decided: no
    evaluation, or no base/tuned value of the metric."""
    where = f"registry.gate.metric {gate.metric!r}"
    if evaluation is None:
        raise InvalidRequest(
            f"{where} needs the evaluate stage, which did not run for this job: enable "
            "evaluation (evaluation.enabled) or drop registry.gate"
        )
    found = find_metric(evaluation, gate.metric)
    if found is None or found.base is None or found.tuned is None:
        have = ", ".join(available_metrics(evaluation)) or "none"
        why = "; ".join(evaluation.notes)
        raise InvalidRequest(
            f"{where} has no base and tuned value in this job's evaluation (it has: {have}"
            f"{'; ' + why if why else ''}); name one of those, or drop registry.gate"
        )
    higher = gate.higher_is_better
    if higher is None:
        higher = not lower_is_better(gate.metric)
    delta = found.tuned - found.base
    improvement = delta if higher else -delta
    passed = improvement > 0 and improvement >= gate.min_delta
    better = "higher" if higher else "lower"
    verdict = "beats" if passed else "does not beat"
    reason = (
        f"tuned {gate.metric} {found.tuned:.6g} vs base {found.base:.6g} ({better} is better): "
        f"the tuned model {verdict} the base by more than 0"
        f"{f' and at least {gate.min_delta:g}' if gate.min_delta else ''} "
        f"(improvement {improvement:.6g})"
    )
    return GateDecision(
        metric=gate.metric, base=found.base, tuned=found.tuned, delta=delta,
        higher_is_better=higher, min_delta=gate.min_delta, passed=passed, reason=reason,
    )  # fmt: skip
