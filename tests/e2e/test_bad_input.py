"""Bad input through the real HTTP API: a clear 4xx/501 before any work starts, nothing
half-created, the server still up. A problem found later fails the job with its reason."""

from __future__ import annotations

import concurrent.futures
import copy
import json

import pytest
from llama_stack_client import APIStatusError

from harness.demo_data import instruct_rows
from llama_stack_provider_kfp.client import cancel_job, job_status

from .helpers import LORA, new_id, register_rows, submit, training_config, wait_done

pytestmark = pytest.mark.e2e


def _expect_refusal(client, server, code: int, words: list[str], **submit_kw) -> None:
    job = submit_kw.pop("job_uuid", None) or new_id("bad")
    before = sorted(j.job_uuid for j in client.alpha.post_training.job.list())
    with pytest.raises(APIStatusError) as err:
        submit(client, job, **submit_kw)
    assert err.value.status_code == code, err.value
    text = str(err.value).lower()
    for w in words:
        assert w.lower() in text, (w, text)
    # Nothing half-created, nothing listed, server still serving.
    assert not (server.work_dir / "jobs" / job).exists()
    assert sorted(j.job_uuid for j in client.alpha.post_training.job.list()) == before
    assert server.alive()


@pytest.fixture(scope="module")
def good(client, tiny_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad-input")
    return {
        "tmp": tmp,
        "model": str(tiny_models / "hf"),
        "dataset": register_rows(client, tmp, instruct_rows(20)),
    }


def test_unknown_model(client, server, good):
    _expect_refusal(client, server, 400, ["NoSuchModel-9B", "not found", "checkpoint_dir"],
                    model="NoSuchModel-9B", dataset_id=good["dataset"])  # fmt: skip


def test_weights_not_found(client, server, good):
    _expect_refusal(client, server, 400, ["/nonexistent/weights", "does not exist"],
                    model="Llama3.2-1B-Instruct", dataset_id=good["dataset"],
                    checkpoint_dir="/nonexistent/weights")  # fmt: skip


def test_directory_without_weights(client, server, good):
    empty = good["tmp"] / "no-weights"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "llama"}))
    _expect_refusal(client, server, 400, ["safetensors"],
                    model=str(empty), dataset_id=good["dataset"])  # fmt: skip


def test_not_a_causal_language_model(client, server, good):
    d = good["tmp"] / "encoder"
    d.mkdir()
    (d / "config.json").write_text(
        json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]})
    )
    (d / "model.safetensors").write_bytes(b"")
    (d / "tokenizer.json").write_text("{}")
    _expect_refusal(client, server, 400, ["BertForMaskedLM", "not a causal language model"],
                    model=str(d), dataset_id=good["dataset"])  # fmt: skip


def test_model_without_tokenizer(client, server, good):
    d = good["tmp"] / "no-tokenizer"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    (d / "model.safetensors").write_bytes(b"")
    _expect_refusal(client, server, 400, ["no tokenizer", "tokenizer.json"],
                    model=str(d), dataset_id=good["dataset"])  # fmt: skip


def test_unknown_dataset(client, server, good):
    _expect_refusal(client, server, 400, ["no-such-dataset", "not registered"],
                    model=good["model"], dataset_id="no-such-dataset")  # fmt: skip


def test_empty_dataset(client, server, good):
    empty = register_rows(client, good["tmp"], [])
    _expect_refusal(client, server, 400, ["empty"], model=good["model"], dataset_id=empty)


def test_rows_not_matching_format(client, server, good):
    rows = [{"question": "hi", "answer": "hello"}] * 12
    ds = register_rows(client, good["tmp"], rows)
    _expect_refusal(client, server, 400, ["row 1", "chat_completion_input", "expected_answer"],
                    model=good["model"], dataset_id=ds)  # fmt: skip


def test_dialog_without_answer(client, server, good):
    rows = [{"dialog": json.dumps([{"role": "user", "content": "hi"}])}] * 12
    ds = register_rows(client, good["tmp"], rows)
    tc = training_config(ds, data_config={"data_format": "dialog"})
    _expect_refusal(client, server, 400, ["row 1", "no assistant message"],
                    model=good["model"], dataset_id=ds, training_config=tc)  # fmt: skip


def test_credential_in_dataset_uri(client, server, good):
    client.beta.datasets.register(
        purpose="post-training/messages",
        source={"type": "uri", "uri": "huggingface://acme/data?split=train&token=hf_secret"},
        dataset_id="with-token",
    )
    _expect_refusal(client, server, 400, ["credential", "HF_TOKEN"],
                    model=good["model"], dataset_id="with-token")  # fmt: skip


def test_no_data_config(client, server, good):
    # Nothing can be trained without data: the one omission that stays a 400.
    tc = training_config(good["dataset"])
    del tc["data_config"]
    _expect_refusal(client, server, 400, ["data_config is required"],
                    model=good["model"], dataset_id=good["dataset"],
                    training_config=tc)  # fmt: skip


def test_qat_not_supported(client, server, good):
    qat = {"type": "QAT", "quantizer_name": "int8", "group_size": 32}
    _expect_refusal(client, server, 501, ["QAT", "full fine-tuning"],
                    model=good["model"], dataset_id=good["dataset"],
                    algorithm_config=qat)  # fmt: skip


def test_quantize_base_on_matrices_too_small_for_nf4(client, server, good):
    algo = {**copy.deepcopy(LORA), "quantize_base": True}
    _expect_refusal(client, server, 400, ["quantize_base", "NF4", "k_proj 32x64"],
                    model=good["model"], dataset_id=good["dataset"],
                    algorithm_config=algo)  # fmt: skip


def test_lora_on_tied_output(client, server, good):
    algo = {**copy.deepcopy(LORA), "apply_lora_to_output": True}
    _expect_refusal(client, server, 400, ["apply_lora_to_output=false"],
                    model=good["model"], dataset_id=good["dataset"],
                    algorithm_config=algo)  # fmt: skip


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"n_epochs": 0}, ["n_epochs"]),
        ({"gradient_accumulation_steps": 0}, ["gradient_accumulation_steps"]),
        ({"max_steps_per_epoch": 0}, ["max_steps_per_epoch"]),
        ({"dtype": "fp16"}, ["fp16", "bf16"]),
        ({"data_config": {"batch_size": 0}}, ["batch_size"]),
        ({"optimizer_config": {"lr": -1.0}}, ["lr"]),
        ({"optimizer_config": {"weight_decay": -0.1}}, ["weight_decay"]),
        ({"optimizer_config": {"num_warmup_steps": -5}}, ["num_warmup_steps"]),
    ],
)
def test_nonsensical_hyperparameters(client, server, good, change, words):
    tc = training_config(good["dataset"], **change)
    _expect_refusal(client, server, 400, words,
                    model=good["model"], dataset_id=good["dataset"],
                    training_config=tc)  # fmt: skip


def test_bad_lora_settings(client, server, good):
    algo = {**copy.deepcopy(LORA), "lora_attn_modules": ["q_proj", "w9"], "rank": 0}
    _expect_refusal(client, server, 400, ["w9", "rank"],
                    model=good["model"], dataset_id=good["dataset"],
                    algorithm_config=algo)  # fmt: skip


@pytest.mark.parametrize(
    ("lora", "extension", "words"),
    [
        (True, {"algorithm": "osft"}, ["names its algorithm twice", "algorithm_config (LoRA)"]),
        (False, {"algorithm": "osft", "osft": {"unfreeze_rank_ratio": 1.5}},
         ['kfp"].osft.unfreeze_rank_ratio', "less than or equal to 1"]),
        (False, {"algorithm": "osft", "osft": {"target_modules": ["q_proj", "w9"]}},
         ["invalid OSFT settings", "['w9'] are not in this model", "self_attn.q_proj"]),
        (False, {"algorithm": "osft", "osft": {"target_modules": ["lm_head"]}},
         ["lm_head", "ties to its embeddings"]),
        (False, {"osft": {"unfreeze_rank_ratio": 0.5}}, ['add "algorithm": "osft"']),
        (False, {"algorithm": "qlora"}, ['kfp"].algorithm: input should be', "osft"]),
    ],
)  # fmt: skip
def test_bad_osft_requests(client, server, good, lora, extension, words):
    """OSFT travels in hyperparam_search_config["kfp"] (the 0.6.1 algorithm_config is LoRA or
    QAT only); each mistake is a 400 naming it, before anything is created."""
    _expect_refusal(client, server, 400, words, model=good["model"], dataset_id=good["dataset"],
                    algorithm_config=copy.deepcopy(LORA) if lora else None,
                    hyperparam_search_config={"kfp": extension})  # fmt: skip


def _damage(folder, how: str) -> str:
    """Damage one file of a copied checkpoint as an interrupted copy or a bad disk would;
    returns the file's name."""
    weights = folder / "model.safetensors"
    if how == "config.json":
        (folder / "config.json").write_text('{"model_type": "llama", "hidden')
        return "config.json"
    if how == "weights cut":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        return "model.safetensors is truncated"
    if how == "header garbled":
        raw = bytearray(weights.read_bytes())
        raw[8:16] = b"\xff\xfe{{{{{{"
        weights.write_bytes(bytes(raw))
        return "model.safetensors is damaged"
    (folder / "training_state.json").write_text('{"engine": "hugging')
    return "training_state.json is damaged"


@pytest.mark.parametrize("how", ["config.json", "weights cut", "header garbled", "state"])
def test_a_damaged_checkpoint_is_named(client, server, good, tiny_models, tmp_path, how):
    """A corrupted checkpoint named in checkpoint_dir: a 400 naming the file, before anything
    starts (not a crash in the train step)."""
    import shutil

    folder = tmp_path / "damaged"
    shutil.copytree(tiny_models / "hf", folder)
    says = _damage(folder, how)
    _expect_refusal(client, server, 400, [says], model="tiny", dataset_id=good["dataset"],
                    checkpoint_dir=str(folder))  # fmt: skip


@pytest.mark.parametrize("job_uuid", ["../escape", "a/b", ".hidden", "x" * 200])
def test_unsafe_job_uuid(client, server, good, job_uuid):
    _expect_refusal(client, server, 400, ["job_uuid"], job_uuid=job_uuid,
                    model=good["model"], dataset_id=good["dataset"])  # fmt: skip
    assert not (server.work_dir / "escape").exists()


def test_reused_job_uuid_and_cancel(client, server, pauses, good):
    job = new_id("dup")
    pauses.arm(job, "train.step:1")  # it cannot finish before the cancel, however fast
    tc = training_config(good["dataset"], n_epochs=1)
    submit(client, job, good["model"], good["dataset"], training_config=tc)
    record = (server.work_dir / "jobs" / job / "job.json").read_bytes()
    with pytest.raises(APIStatusError) as err:
        submit(client, job, good["model"], good["dataset"])
    assert err.value.status_code == 400 and "already used" in str(err.value)
    # The first job's record is untouched.
    assert (server.work_dir / "jobs" / job / "job.json").read_bytes() == record

    cancel_job(client, job)
    status = wait_done(client, job, timeout=60)
    assert status["status"] == "cancelled"
    with pytest.raises(APIStatusError) as err:
        cancel_job(client, job)
    assert err.value.status_code == 400 and "already ended" in str(err.value)


def test_a_job_uuid_is_taken_from_its_reservation_on(client, server, pauses, good):
    """Two submits of one id at once: the second is refused while the first, held right after
    reserving the id (a pause point), has recorded nothing yet."""
    job = new_id("race")
    for point in ("submit.reserved", "train.step:1"):
        pauses.arm(job, point)
    tc = training_config(good["dataset"], n_epochs=1)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(submit, client, job, good["model"], good["dataset"],
                            training_config=tc)  # fmt: skip
        pauses.wait(job, "submit.reserved", going=lambda: not first.done())
        with pytest.raises(APIStatusError) as err:
            submit(client, job, good["model"], good["dataset"], training_config=tc)
        assert err.value.status_code == 400 and "already used" in str(err.value)
        assert job not in [j.job_uuid for j in client.alpha.post_training.job.list()]
        with pytest.raises(APIStatusError) as err:
            job_status(client, job)
        assert err.value.status_code == 404
        pauses.release(job, "submit.reserved")
        first.result(timeout=60)
    assert job in [j.job_uuid for j in client.alpha.post_training.job.list()]
    cancel_job(client, job)
    assert wait_done(client, job, timeout=60)["status"] == "cancelled"


def test_unknown_job_is_404(client):
    for call in (job_status, cancel_job):
        with pytest.raises(APIStatusError) as err:
            call(client, "no-such-job")
        assert err.value.status_code == 404


def test_bad_row_beyond_sample_fails_job_with_reason(client, good):
    # Submit checks the first 100 rows; prepare-data checks all and names the bad ones.
    rows = instruct_rows(130)
    rows[114] = {"chat_completion_input": "not json", "expected_answer": "x"}
    ds = register_rows(client, good["tmp"], rows)
    job = new_id("late")
    submit(client, job, good["model"], ds)
    status = wait_done(client, job, timeout=120)
    assert status["status"] == "failed"
    error = status["resources_allocated"]["error"]
    assert "row 115" in error["message"] and "not valid JSON" in error["message"]
    assert error["step"] == "prepare-data"
    assert error["log_tail"]
    assert status["checkpoints"] == []


def test_dataset_uri_that_does_not_exist(client, server, good):
    # The shared server reads S3 with the standard AWS environment (conftest: data_s3).
    client.beta.datasets.register(
        purpose="post-training/messages",
        source={"type": "uri", "uri": "s3://user-data/nowhere/train.jsonl"},
        dataset_id="s3-missing",
    )
    _expect_refusal(client, server, 400,
                    ["s3-missing", "s3://user-data/nowhere/train.jsonl", "does not exist"],
                    model=good["model"], dataset_id="s3-missing")  # fmt: skip
