"""What `status`, `watch` and `plot` show of a job's stages, evaluation and registration, from
statuses built with the server's own result models (the CLI reads them as plain dicts)."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console

from llama_stack_provider_kfp.cli import render
from llama_stack_provider_kfp.cli.plot import comparisons, figure
from llama_stack_provider_kfp.cli.watch import follow, headline
from llama_stack_provider_kfp.core.stage_results import (
    Comparison,
    Evaluation,
    GateDecision,
    Registration,
    Sample,
    StageRecord,
    stage_table,
)

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def stage(name: str, status: str, seconds: float | None = None, **kw: Any) -> dict[str, Any]:
    times = {"started_at": T0, "finished_at": T0 + timedelta(seconds=seconds)} if seconds else {}
    return StageRecord(name=name, status=status, **times, **kw).model_dump(mode="json")


EVALUATION = Evaluation(
    checkpoint="/jobs/j1/checkpoints/epoch_1",
    epoch=1,
    base_model="/models/tiny",
    held_out_rows=40,
    results={
        "held_out": {
            "loss": Comparison.of(2.5, 1.75),
            "perplexity": Comparison.of(12.18, 5.75),
            "token_accuracy": Comparison.of(0.40, 0.35),
        },
        "my_task": {"exact_match": Comparison.of(0.1, 0.3)},
    },
    samples=[Sample(prompt="What is [red]2+2[/red]?", reference="4", base="five " * 60, tuned="4")],
    notes=["lm-eval limit 5: a smoke test, not a benchmark"],
    seconds=12.34,
).model_dump(mode="json")

GATE = GateDecision(
    metric="held_out/loss",
    base=2.5,
    tuned=2.6,
    delta=0.1,
    higher_is_better=False,
    passed=False,
    reason="held_out/loss did not improve (2.5 -> 2.6)",
)


def status(state: str = "completed", **resources: Any) -> dict[str, Any]:
    return {
        "job_uuid": "j1",
        "status": state,
        "checkpoints": [{"epoch": 1, "path": "/jobs/j1/checkpoints/epoch_1"}],
        "resources_allocated": {
            "progress": {"step": 3, "total_steps": 3, "epoch": 1, "total_epochs": 1, "loss": 1.5},
            **resources,
        },
    }


def shown(fn: Any, *args: Any) -> tuple[str, str]:
    """What `fn(console, *args)` prints: plain (without the tables' padding at line ends),
    and with its ANSI colours."""
    console = Console(record=True, width=200, color_system="standard", file=io.StringIO())
    fn(console, *args)
    plain = console.export_text(clear=False)
    return "\n".join(line.rstrip() for line in plain.splitlines()), console.export_text(styles=True)


GREEN, RED = "\x1b[32m", "\x1b[31m"


def registered(**kw: Any) -> dict[str, Any]:
    fields = {
        "kind": "mlflow",
        "registered": True,
        "name": "tiny-lora",
        "version": "3",
        "uri": "/jobs/j1/checkpoints/epoch_1",
        **kw,
    }
    return Registration(**fields).model_dump(mode="json", exclude_none=True)


def labels(plain: str) -> list[str]:
    """The first word of each row of the status table (up to the evaluation)."""
    rows = plain.split("\nevaluation")[0].splitlines()
    return [row.split()[0] for row in rows if row.strip()]


def test_status_shows_stages_evaluation_samples_and_registry():
    st = status(
        "in_progress",
        stages=[
            stage("prepare-data", "completed", 2.1),
            stage("train", "completed", 30.2),
            stage("evaluate", "running"),
            stage("register", "pending"),
        ],
        evaluation=EVALUATION,
        registry=Registration(
            kind="mlflow", registered=False, name="tiny-lora", gate=GATE
        ).model_dump(mode="json", exclude_none=True),
    )
    plain, ansi = shown(render.status, st)
    assert (
        "stages       prepare-data ✓ 2.1s, train ✓ 30.2s, evaluate running, register pending"
        in plain
    )
    assert (
        "registry     mlflow: not registered: held_out/loss did not improve (2.5 -> 2.6)" in plain
    )
    assert labels(plain) == ["job", "status", "progress", "stages", "checkpoints", "registry"]
    assert "evaluation of epoch 1 (40 held-out rows, 12.3s)" in plain
    rows = [" ".join(line.replace("│", " ").split()) for line in plain.splitlines()]
    assert "held_out loss 2.5000 1.7500 -0.7500" in rows
    assert "held_out perplexity 12.1800 5.7500 -6.4300" in rows
    assert "held_out token_accuracy 0.4000 0.3500 -0.0500" in rows
    assert "my_task exact_match 0.1000 0.3000 +0.2000" in rows
    # Lower is better for loss and perplexity: their falls are green; accuracy's fall is red.
    assert f"{GREEN}-0.7500" in ansi and f"{GREEN}-6.4300" in ansi
    assert f"{RED}-0.0500" in ansi and f"{GREEN}+0.2000" in ansi
    assert "note: lm-eval limit 5: a smoke test, not a benchmark" in plain
    # The samples: the model's text as it is (never read as markup), long answers cut.
    assert "What is [red]2+2[/red]?" in plain
    assert plain.count("five") < 40 and "five…" in plain


def test_a_failed_stage_is_red_with_its_error_and_the_error_names_the_stage():
    st = status(
        "failed",
        stages=[
            stage("prepare-data", "completed", 1.0),
            stage("train", "completed", 9.0),
            stage("evaluate", "failed", 3.0, error="lm-eval: unknown task 'nope'"),
            stage("register", "skipped"),
        ],
        error={"message": "ValueError: unknown task 'nope'", "stage": "evaluate"},
    )
    plain, ansi = shown(render.status, st)
    assert (
        "prepare-data ✓ 1.0s, train ✓ 9.0s, evaluate ✗ 3.0s (lm-eval: unknown task 'nope'), "
        "register skipped" in plain
    )
    assert "\x1b[1;31mevaluate ✗ 3.0s" in ansi
    assert "error        [evaluate] ValueError: unknown task 'nope'" in plain
    assert f"{RED}[evaluate] ValueError" in ansi


def test_the_registered_entry_and_its_gate():
    gate = GATE.model_copy(
        update={
            "tuned": 2.0,
            "delta": -0.5,
            "passed": True,
            "reason": "held_out/loss improved by 0.5",
        }
    )
    reg = registered(url="http://mlflow:5000/#/models/tiny-lora/versions/3", gate=gate)
    plain, _ = shown(render.status, status(registry=reg))
    assert (
        "registry     mlflow: tiny-lora version 3 (/jobs/j1/checkpoints/epoch_1, "
        "http://mlflow:5000/#/models/tiny-lora/versions/3); gate passed: held_out/loss "
        "improved by 0.5" in plain
    )


def test_a_status_without_the_new_fields_renders_as_before():
    """An older server's answer: no stages, evaluation or registry."""
    plain, _ = shown(render.status, status())
    assert labels(plain) == ["job", "status", "progress", "checkpoints"]
    assert "stages" not in plain and "registry" not in plain and "evaluation" not in plain
    plain, _ = shown(render.outcome, status())
    assert plain.splitlines() == [
        "job j1: completed",
        "checkpoint epoch 1: /jobs/j1/checkpoints/epoch_1",
    ]


def test_osft_shows_the_svd_while_it_runs_then_what_it_froze():
    running = status("in_progress", osft={"matrices": 168, "decomposed": 40, "svd_seconds": 61.5})
    plain, _ = shown(render.status, running)
    assert "osft         SVD 40/168 matrices, 61.5 s" in plain
    done = {"unfreeze_rank_ratio": 0.25, "matrices": 14, "svd_seconds": 0.4, "svd_device": "cpu",
            "peak_memory_mb": 900.0, "frozen_directions": 672, "directions": 896,
            "trainable_parameters": 250, "model_parameters": 1000}  # fmt: skip
    plain, _ = shown(render.status, status(osft=done))
    assert labels(plain) == ["job", "status", "progress", "osft", "checkpoints"]
    assert ("14 matrices, 672/896 singular directions frozen (unfreeze_rank_ratio 0.25), 25% "
            "of the parameters train; SVD 0.4 s") in plain  # fmt: skip


def test_a_job_without_configured_stages_shows_prepare_data_and_train():
    """Records written before stages existed have no stage records: the server's stage_table
    calls their stages completed, without times."""
    table = stage_table(["prepare-data", "train"], {}, "completed", None)
    st = status(stages=[s.model_dump(mode="json") for s in table])
    plain, _ = shown(render.status, st)
    assert "stages       prepare-data ✓, train ✓\n" in plain


def test_an_evaluation_without_results_says_why():
    ev = Evaluation(checkpoint="c", base_model="m", notes=["no held-out rows"])
    plain, _ = shown(render.status, status(evaluation=ev.model_dump(mode="json")))
    assert "evaluation: no results" in plain and "note: no held-out rows" in plain


def test_outcome_after_watch_prints_stages_evaluation_and_registry():
    done = [stage(n, "completed", 1.5) for n in ("prepare-data", "train", "evaluate", "register")]
    st = status(
        stages=done,
        evaluation=EVALUATION,
        registry=registered(),
        result={"first_loss": 2.9, "final_loss": 1.2},
    )
    plain, _ = shown(render.outcome, st)
    lines = plain.splitlines()
    assert lines[:4] == [
        "job j1: completed",
        "stages: prepare-data ✓ 1.5s, train ✓ 1.5s, evaluate ✓ 1.5s, register ✓ 1.5s",
        "first_loss 2.9, final_loss 1.2",
        "checkpoint epoch 1: /jobs/j1/checkpoints/epoch_1",
    ]
    assert "evaluation of epoch 1" in plain and "-0.7500" in plain
    assert lines[-1] == "registry: mlflow: tiny-lora version 3 (/jobs/j1/checkpoints/epoch_1)"


def test_outcome_of_a_failed_evaluate_keeps_the_checkpoints():
    st = status(
        "failed",
        stages=[
            stage("prepare-data", "completed"),
            stage("train", "completed"),
            stage("evaluate", "failed"),
        ],
        error={
            "message": "RuntimeError: out of memory",
            "stage": "evaluate",
            "log_tail": ["evaluating base", "RuntimeError: out of memory"],
        },
    )
    plain, _ = shown(render.outcome, st)
    assert plain.splitlines() == [
        "job j1: failed",
        "stages: prepare-data ✓, train ✓, evaluate ✗",
        "[evaluate] RuntimeError: out of memory",
        "  evaluating base",
        "  RuntimeError: out of memory",
        "checkpoint epoch 1: /jobs/j1/checkpoints/epoch_1",
    ]


# ---- watch -------------------------------------------------------------------------------

TRAINING = {"step": 1, "total_steps": 4, "epoch": 1, "total_epochs": 2, "loss": 2.0}


@pytest.mark.parametrize(
    ("stages", "progress", "state", "line"),
    [
        ([("prepare-data", "running"), ("train", "pending")], None, "in_progress", "prepare-data"),
        (
            [("prepare-data", "completed"), ("train", "running")],
            TRAINING,
            "in_progress",
            "train epoch 1/2",
        ),
        ([("train", "completed"), ("evaluate", "running")], TRAINING, "in_progress", "evaluate"),
        (None, TRAINING, "in_progress", "epoch 1/2"),  # an older server: as before
        (None, None, "scheduled", "scheduled"),
    ],
)
def test_the_live_line_names_the_running_stage(stages, progress, state, line):
    res: dict[str, Any] = {"progress": progress} if progress else {}
    if stages:
        res["stages"] = [stage(name, st) for name, st in stages]
    assert headline({"status": state, "resources_allocated": res}) == line


def test_watch_shows_the_stage_it_stops_in():
    """`watch --timeout` ends while evaluate runs: its last frame says so."""
    answer = status(
        "in_progress", stages=[stage("train", "completed"), stage("evaluate", "running")]
    )
    answer["resources_allocated"]["progress"] = {**TRAINING, "step": 4}
    client = SimpleNamespace(get=lambda path, cast_to: answer)
    out = io.StringIO()
    got = follow(client, "j1", Console(file=out, width=100), interval=0, timeout=0)
    assert got is answer
    assert out.getvalue().startswith("evaluate ") and "4/4" in out.getvalue()


# ---- plot --------------------------------------------------------------------------------


def test_plot_puts_base_vs_tuned_beside_the_loss_curve():
    import matplotlib.pyplot as plt

    history = [[1, 3.0], [2, 2.0], [3, 1.5]]
    assert [c[0] for c in comparisons(EVALUATION)] == [
        "held_out/loss",
        "held_out/perplexity",
        "held_out/token_accuracy",
        "my_task/exact_match",
    ]
    fig = figure(history, EVALUATION, "j1")
    try:
        loss, bars = fig.axes
        assert list(loss.lines[0].get_ydata()) == [3.0, 2.0, 1.5]
        heights = [round(p.get_height(), 4) for p in bars.patches]
        assert heights == [2.5, 12.18, 0.4, 0.1, 1.75, 5.75, 0.35, 0.3]  # base bars, tuned bars
        assert [t.get_text() for t in bars.get_legend().get_texts()] == ["base", "tuned"]
        assert bars.get_yscale() == "log"  # perplexity ~12 beside accuracy ~0.1
    finally:
        plt.close(fig)
    fig = figure(history, None, "j1")  # no evaluation: the loss curve alone, as before
    try:
        assert len(fig.axes) == 1 and fig.axes[0].get_ylabel() == "training loss"
    finally:
        plt.close(fig)
    only = {"results": {"held_out": {"loss": Comparison.of(2.0, 1.0).model_dump()}}}
    fig = figure([], only, "j1")  # evaluate without train: the bars alone
    try:
        (bars,) = fig.axes
        assert [p.get_height() for p in bars.patches] == [2.0, 1.0]
        assert bars.get_yscale() == "linear"
    finally:
        plt.close(fig)


def test_the_plot_command_draws_an_evaluated_job(monkeypatch, tmp_path, capsys):
    """An evaluate-only job (no training, so no loss history) still gets its figure."""
    from llama_stack_provider_kfp.cli import main

    answer = {"job_uuid": "j1", "status": "completed", "resources_allocated": {
        "evaluation": EVALUATION, "stages": [stage("evaluate", "completed")]}}  # fmt: skip
    client = SimpleNamespace(get=lambda path, cast_to: answer)
    monkeypatch.setattr(main, "make_client", lambda target: client)
    out = tmp_path / "j1.png"
    args = ["--endpoint", "http://stack:1", "post_training", "plot", "--job-uuid", "j1"]
    assert main.main([*args, "--out", str(out), "--output", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "job_uuid": "j1", "path": str(out), "points": 0,
        "compared": ["held_out/loss", "held_out/perplexity", "held_out/token_accuracy",
                     "my_task/exact_match"],
    }  # fmt: skip
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    answer["resources_allocated"] = {}  # nothing to draw: says so
    assert main.main(args) == 4
    assert "nothing to plot yet: no loss history, no evaluation" in capsys.readouterr().err


def test_sample_answers_keep_their_line_breaks_visible():
    from llama_stack_provider_kfp.cli.render import _clip

    assert _clip("\n\n\n") == "⏎⏎⏎"  # a model answering blank lines did answer
    assert _clip("Hello \n  Bo!") == "Hello⏎Bo!"
    assert _clip("x" * 500).endswith("…") and len(_clip("x" * 500)) == 160
