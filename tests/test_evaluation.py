"""The evaluate stage on its own (no server, no KFP): real torch, transformers and lm-eval on
tiny models made here. Held-out metrics against a hand computation; the base against itself
(every delta 0) with a custom lm-eval task on a Meta-layout tiktoken model; a LoRA checkpoint
trained by the project's own torchtune engine, every epoch, merged weights vs base + adapter;
a Hugging Face layout model with its own tokenizer; task files checked at submit and names
checked against lm-eval's index before training."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from eval_task import MC_TASK, write_task

from harness import tiny_families
from harness.demo_data import instruct_rows
from llama_stack_provider_kfp.boundary.data_uri import write_jsonl
from llama_stack_provider_kfp.boundary.eval_task_files import read_task_file
from llama_stack_provider_kfp.boundary.model_source import inspect_model_dir
from llama_stack_provider_kfp.core.errors import InvalidRequest
from llama_stack_provider_kfp.core.eval_tasks import check_evaluation, lm_eval_problem
from llama_stack_provider_kfp.core.spec import (
    DataSpec,
    EvaluationSpec,
    JobSpec,
    LoraSpec,
    OptimSpec,
    TrainSpec,
)
from llama_stack_provider_kfp.training.evaluation import evaluate_job
from llama_stack_provider_kfp.training.evaluation.checkpoint import as_hf
from llama_stack_provider_kfp.training.evaluation.held_out import measure, read_rows
from llama_stack_provider_kfp.training.evaluation.models import load
from llama_stack_provider_kfp.training.evaluation.tasks import sandboxed_templates
from llama_stack_provider_kfp.training.prepare import prepare
from llama_stack_provider_kfp.training.steps import prepare_data_step, train_step

EOT = 128009  # Llama 3's <|eot_id|>


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    return write_task(tmp_path_factory.mktemp("task"))


def _rows(n: int, path: Path) -> Path:
    rows = [{"messages": [*json.loads(r["chat_completion_input"]),
                          {"role": "assistant", "content": r["expected_answer"]}]}
            for r in instruct_rows(n, seed=1)]  # fmt: skip
    return write_jsonl(rows, path)


def _spec(model_dir: Path, out: Path, evaluation: EvaluationSpec, *, data: Path | None = None,
          epochs: int = 1, output_format: str | None = None) -> JobSpec:  # fmt: skip
    model = inspect_model_dir("tiny", model_dir)
    return JobSpec(
        job_uuid="e",
        model=model,
        data=DataSpec(uri=str(data or out / "none.jsonl"), data_format="instruct"),
        train=TrainSpec(epochs=epochs, max_steps_per_epoch=3, gradient_accumulation_steps=1,
                        batch_size=4, shuffle=False, train_on_input=False, dtype="fp32",
                        packed=False, max_validation_steps=None, max_seq_len=64, seed=7,
                        device="cpu"),
        lora=LoraSpec(rank=4, alpha=8, attn_modules=["q_proj", "v_proj"], apply_to_mlp=False,
                      apply_to_output=False),
        optim=OptimSpec(type="adamw", lr=2e-2, weight_decay=0.0, warmup_steps=0),
        output_format=output_format or model.layout,
        output_uri=str(out),
        evaluation=evaluation,
    )  # fmt: skip


def test_held_out_metrics_match_a_hand_computation(tiny_models, tmp_path):
    row = [{"role": "user", "content": "Greet Ada."},
           {"role": "assistant", "content": "Hello, Ada!"}]  # fmt: skip
    loaded = load(as_hf(tiny_models / "hf", tmp_path), "cpu", torch.float32)
    got = measure(loaded, [row], max_len=64, train_on_input=False, batch_size=2)
    assert got is not None

    # By hand: Llama 3's chat format; the learned tokens are the answer's bytes and
    # <|eot_id|> (the tiny tokenizer has one token per byte), predicted from the token before.
    text = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nGreet Ada.<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n")  # fmt: skip
    ids = loaded.tokenizer(text, add_special_tokens=False).input_ids
    answer = [*b"Hello, Ada!", EOT]
    ids = ids + answer
    with torch.no_grad():
        logits = loaded.model(torch.tensor([ids])).logits[0].double()
    start = len(ids) - len(answer)
    logp = torch.log_softmax(logits[start - 1 : -1], -1)
    nll = -logp[torch.arange(len(answer)), torch.tensor(answer)]
    right = (logits[start - 1 : -1].argmax(-1) == torch.tensor(answer)).double()
    assert got.tokens == len(answer)
    assert got.loss == pytest.approx(float(nll.mean()), rel=1e-5)
    assert got.perplexity == pytest.approx(math.exp(got.loss))
    assert got.token_accuracy == pytest.approx(float(right.mean()))


def test_preference_rows_are_measured_on_prompt_and_chosen(tmp_path):
    prompt = [{"role": "user", "content": "Hi"}]
    chosen = [{"role": "assistant", "content": "Hello!"}]
    path = write_jsonl([{"prompt": prompt, "chosen": chosen,
                         "rejected": [{"role": "assistant", "content": "Go away"}]}] * 3,
                       tmp_path / "val.jsonl")  # fmt: skip
    assert read_rows(str(path), max_rows=2) == [prompt + chosen] * 2
    assert read_rows("", max_rows=2) == []


def test_base_against_itself_on_a_meta_checkpoint_with_a_custom_task(tiny_models, task_dir,
                                                                      tmp_path):  # fmt: skip
    # A "tuned" checkpoint that is the base itself, in the Meta layout with only a tiktoken
    # tokenizer: every delta is 0, and lm-eval runs on the tokenizer made for it.
    checkpoint = tmp_path / "out" / "checkpoints" / "epoch_1"
    shutil.copytree(tiny_models / "meta", checkpoint / "merged")
    val = _rows(6, tmp_path / "val.jsonl")
    evaluation = EvaluationSpec(max_rows=5, task_files=[str(task_dir / "tiny_mc.yaml")],
                                samples=2, max_new_tokens=4, batch_size=4)  # fmt: skip
    spec = _spec(tiny_models / "meta", tmp_path / "out", evaluation)
    result = evaluate_job(spec, [str(checkpoint)], str(val))

    assert result.checkpoint == str(checkpoint) and result.epoch == 1
    assert result.held_out_rows == 5 and result.notes == []
    assert set(result.results) == {"held_out", "tiny_mc"}
    for metric in ("loss", "perplexity", "token_accuracy"):
        c = result.results["held_out"][metric]
        assert c.base is not None and c.delta == pytest.approx(0.0, abs=1e-6), metric
    acc = result.results["tiny_mc"]["acc"]
    assert 0.0 <= acc.base <= 1.0 and acc.delta == 0.0
    assert [s.base for s in result.samples] == [s.tuned for s in result.samples]
    assert len(result.samples) == 2 and result.samples[0].reference
    assert set(result.phases) == {"load", "held_out", "lm_eval", "samples"}
    assert result.flat()["tiny_mc/acc/delta"] == 0.0


@pytest.fixture(scope="module")
def lora_job(tiny_models, tmp_path_factory) -> tuple[JobSpec, Path]:
    """Two epochs of LoRA on the tiny Llama by the project's own train step (torchtune)."""
    work = tmp_path_factory.mktemp("lora")
    data = write_jsonl(instruct_rows(24), work / "rows.jsonl")
    spec = _spec(tiny_models / "hf", work / "out", EvaluationSpec(samples=1, max_new_tokens=3),
                 data=data, epochs=2)  # fmt: skip
    prepare(spec, str(work / "train.jsonl"), str(work / "val.jsonl"))
    train_step(spec.model_dump_json(), spec.model.path, spec.output_uri,
               str(work / "train.jsonl"), str(work / "val.jsonl"))  # fmt: skip
    return spec, work


def test_trained_lora_checkpoints_every_epoch(lora_job, tmp_path):
    spec, _ = lora_job
    spec = spec.model_copy(update={"evaluation": EvaluationSpec(every_epoch=True, samples=1,
                                                                max_new_tokens=3)})  # fmt: skip
    epochs = [str(Path(spec.output_uri) / "checkpoints" / f"epoch_{n}") for n in (1, 2)]
    val = _rows(8, tmp_path / "val.jsonl")  # the training rows' kind: training helped on them
    result = evaluate_job(spec, epochs, str(val))

    assert result.epoch == 2 and [e["epoch"] for e in result.epochs] == [1]
    loss = result.results["held_out"]["loss"]
    first = result.epochs[0]["results"]["held_out"]["loss"]
    assert first["base"] == loss.base  # the base is evaluated once, for every epoch
    assert loss.tuned < loss.base and first["tuned"] < first["base"]
    assert result.results["held_out"]["perplexity"].tuned == pytest.approx(math.exp(loss.tuned))


def test_lora_adapter_evaluates_as_its_merged_weights(lora_job, tmp_path):
    spec, _ = lora_job
    epoch = Path(spec.output_uri) / "checkpoints" / "epoch_2"
    only_adapter = tmp_path / "epoch_2"
    shutil.copytree(epoch / "adapter", only_adapter / "adapter")
    val = _rows(4, tmp_path / "val.jsonl")
    spec = spec.model_copy(update={"evaluation": EvaluationSpec(samples=0)})
    merged = evaluate_job(spec, [str(epoch)], str(val)).results["held_out"]
    adapter = evaluate_job(spec, [str(only_adapter)], str(val)).results["held_out"]
    assert adapter["loss"].delta != 0.0
    assert adapter["loss"].tuned == pytest.approx(merged["loss"].tuned, abs=1e-4)
    assert adapter["token_accuracy"].tuned == pytest.approx(merged["token_accuracy"].tuned)


def test_hf_layout_model_with_its_own_tokenizer(tmp_path, task_dir):
    base = tiny_families.make("smollm2", tmp_path / "base")
    checkpoint = tmp_path / "out" / "checkpoints" / "epoch_1"
    shutil.copytree(base, checkpoint / "merged")
    from safetensors.torch import load_file, save_file

    weights = checkpoint / "merged" / "model.safetensors"
    state = load_file(weights)
    gen = torch.Generator().manual_seed(1)
    save_file({k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in state.items()},
              weights, metadata={"format": "pt"})  # fmt: skip
    evaluation = EvaluationSpec(tasks=["tiny_mc"], task_files=[str(task_dir / "tiny_mc.yaml")],
                                samples=1, limit=4)  # fmt: skip
    spec = _spec(base, tmp_path / "out", evaluation)
    result = evaluate_job(spec, [str(checkpoint)], "")
    assert result.notes == ["no held-out rows"] and result.held_out_rows == 0
    assert list(result.results) == ["tiny_mc"] and result.samples == []
    acc = result.results["tiny_mc"]["acc"]
    assert acc.base is not None and acc.tuned is not None
    assert acc.delta == pytest.approx(acc.tuned - acc.base)
    assert result.phases["held_out"] == 0.0 and result.phases["lm_eval"] > 0.0


# --- task files and names: at submit (core, no lm-eval) and before training (lm-eval's index)


def _files(tmp_path: Path, **texts: str) -> list[str]:
    out = []
    for name, text in texts.items():
        path = tmp_path / name.replace("__", ".")
        path.write_text(text)
        out.append(str(path))
    return out


FUNCTION_TASK = MC_TASK.replace("task: tiny_mc", "task: coded\nprocess_docs: !function utils.keep")


def test_task_code_is_refused_unless_allowed(tmp_path):
    files = _files(tmp_path, coded__yaml=FUNCTION_TASK, utils__py="def keep(d):\n    return d\n")
    with pytest.raises(InvalidRequest, match=r"coded\.yaml runs code .*!function utils\.keep"):
        check_evaluation(EvaluationSpec(task_files=files[:1]), read_task_file)
    with pytest.raises(InvalidRequest, match=r"utils\.py is Python code"):
        check_evaluation(EvaluationSpec(task_files=files[1:]), read_task_file)
    allowed = EvaluationSpec(task_files=files, allow_task_code=True)
    assert check_evaluation(allowed, read_task_file) == ["coded"]
    escaping = MC_TASK.replace("{{question}}", "{{ question.__class__.__mro__ }}")
    with pytest.raises(InvalidRequest, match="reaches for private attributes"):
        check_evaluation(
            EvaluationSpec(task_files=_files(tmp_path, esc__yaml=escaping)), read_task_file
        )


def test_templates_render_in_a_sandbox_unless_code_is_allowed():
    from jinja2.exceptions import SecurityError
    from lm_eval.utils import apply_template

    template = "{{ question.__class__.__name__ }}"
    assert apply_template(template, {"question": "q"}) == "str"
    with sandboxed_templates(True), pytest.raises(SecurityError):
        apply_template(template, {"question": "q"})
    assert apply_template("{{ question | upper }}", {"question": "q"}) == "Q"


def test_bad_task_files_and_names_are_refused_naming_them(tmp_path):
    broken = _files(tmp_path, broken__yaml="task: [unclosed\n")
    with pytest.raises(InvalidRequest, match=r"broken\.yaml is not valid YAML"):
        check_evaluation(EvaluationSpec(task_files=broken), read_task_file)
    nameless = _files(tmp_path, nameless__yaml="dataset_path: json\n")
    with pytest.raises(InvalidRequest, match=r"nameless\.yaml defines no task"):
        check_evaluation(EvaluationSpec(task_files=nameless), read_task_file)
    tagged = _files(tmp_path, tagged__yaml="task: t\nx: !python/object foo\n")
    with pytest.raises(InvalidRequest, match=r"tags lm-eval does not read: !python/object"):
        check_evaluation(EvaluationSpec(task_files=tagged), read_task_file)
    with pytest.raises(InvalidRequest, match=r"'my task/1' is neither defined"):
        check_evaluation(EvaluationSpec(tasks=["my task/1"]), read_task_file)
    with pytest.raises(InvalidRequest, match=r"missing\.yaml does not exist"):
        check_evaluation(
            EvaluationSpec(task_files=[str(tmp_path / "missing.yaml")]), read_task_file
        )
    assert check_evaluation(EvaluationSpec(tasks=["arc_easy"]), read_task_file) == ["arc_easy"]


def test_unknown_task_fails_prepare_data_naming_close_matches(tiny_models, task_dir, tmp_path):
    data = write_jsonl(instruct_rows(4), tmp_path / "rows.jsonl")
    evaluation = EvaluationSpec(tasks=["tiny_mcq"], task_files=[str(task_dir / "tiny_mc.yaml")])
    spec = _spec(tiny_models / "hf", tmp_path / "out", evaluation, data=data)
    with pytest.raises(InvalidRequest, match=r"'tiny_mcq' is unknown to lm-eval.*close: tiny_mc"):
        prepare_data_step(spec.model_dump_json(), str(tmp_path / "t.jsonl"),
                          str(tmp_path / "v.jsonl"))  # fmt: skip
    error = json.loads((tmp_path / "out" / "error.json").read_text())
    assert error["step"] == "prepare-data" and "tiny_mcq" in error["message"]


def test_lm_eval_problem_at_submit(tiny_models):
    assert lm_eval_problem(inspect_model_dir("m", tiny_models / "meta")) is None
    assert lm_eval_problem(inspect_model_dir("h", tiny_models / "hf")) is None
    small = inspect_model_dir("h", tiny_models / "hf")
    assert small.arch is not None
    small = small.model_copy(update={"arch": small.arch.model_copy(update={"vocab_size": 300})})
    assert "without room for Llama 3's special tokens" in (lm_eval_problem(small) or "")


def test_metrics_join_the_jobs_mlflow_run_after_it_ended(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from llama_stack_provider_kfp.core.stage_results import Comparison, Evaluation
    from llama_stack_provider_kfp.core.tracking import MLflowTracking, TrackingSpec
    from llama_stack_provider_kfp.training.evaluation.tracking_run import log_to_tracking_run

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("e"))
    client.set_terminated(run.info.run_id, "FINISHED")  # as the train step leaves it
    out = tmp_path / "out"
    out.mkdir()
    (out / "tracking.json").write_text(json.dumps({"mlflow": {"run_id": run.info.run_id,
                                                              "tracking_uri": uri}}))  # fmt: skip
    tracking = TrackingSpec(mlflow=MLflowTracking(tracking_uri=uri))
    spec = JobSpec.model_construct(output_uri=str(out), tracking=tracking)
    result = Evaluation(checkpoint="c", epoch=2, base_model="b",
                        results={"held_out": {"loss": Comparison.of(2.0, 1.5)}})  # fmt: skip
    assert log_to_tracking_run(spec, [result]) is None
    metrics = client.get_run(run.info.run_id).data.metrics
    assert metrics == {"evaluation/held_out/loss/base": 2.0,
                       "evaluation/held_out/loss/tuned": 1.5,
                       "evaluation/held_out/loss/delta": -0.5}  # fmt: skip
    history = client.get_metric_history(run.info.run_id, "evaluation/held_out/loss/delta")
    assert [m.step for m in history] == [2]

    # A run that cannot be reached is a note, never the stage's failure.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    gone = {"mlflow": {"run_id": "x", "tracking_uri": "http://127.0.0.1:9"}}
    (out / "tracking.json").write_text(json.dumps(gone))
    note = log_to_tracking_run(spec, [result])
    assert note is not None and note.startswith("tracking: evaluation metrics not logged")
