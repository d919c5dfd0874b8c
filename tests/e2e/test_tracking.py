"""Experiment tracking from a request's logger_config, through the real server: a real MLflow
tracking server on loopback (`mlflow server`, SQLite store), TensorBoard event files read back
with tensorboard's own reader, W&B in offline mode (its run directory). One torchtune job logs
to all three; one Hugging Face engine job logs to MLflow. Bad logger_configs are refused with
400, an MLflow server nobody answers for with 503, before anything is created."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
from pathlib import Path

import pytest
from llama_stack_client import APIStatusError
from mlflow_server import MLflowServer, free_port

from harness.demo_data import instruct_rows
from harness.tiny_families import make

from .helpers import LORA, new_id, register_rows, submit, training_config, wait_done

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
PARAMS = {"model", "engine", "algorithm", "lr", "epochs", "batch_size", "lora_rank", "optimizer"}


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory):
    srv = MLflowServer(tmp_path_factory.mktemp("mlflow"))
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def mlflow_server(mlflow) -> str:
    return mlflow.url


@pytest.fixture(scope="module")
def data(client, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tracking")
    return {
        "tmp": tmp,
        "train": register_rows(client, tmp, instruct_rows(16, seed=7)),
        "validation": register_rows(client, tmp, instruct_rows(4, seed=8)),
    }


def _mlflow_run(url: str, status: dict, steps: int):
    from mlflow import MlflowClient

    tracked = status["resources_allocated"]["tracking"]["mlflow"]
    assert "warning" not in tracked, tracked
    mc = MlflowClient(tracking_uri=url)
    run = mc.get_run(tracked["run_id"])
    assert run.info.experiment_id == tracked["experiment_id"]
    assert run.info.status == "FINISHED"
    assert PARAMS - {"lora_rank"} <= set(run.data.params)
    loss = mc.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in loss] == list(range(1, steps + 1))  # one point per optimizer step
    progress = dict(map(tuple, status["resources_allocated"]["loss_history"]))
    assert all(m.value == pytest.approx(progress[m.step], abs=1e-5) for m in loss)
    assert len(mc.get_metric_history(run.info.run_id, "train/lr")) == steps
    assert len(mc.get_metric_history(run.info.run_id, "train/tokens_per_second")) == steps
    return mc, run


def test_torchtune_job_logs_to_mlflow_tensorboard_and_wandb(client, tiny_models, data,
                                                            mlflow_server, tmp_path):  # fmt: skip
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    job = new_id("tracked-tt")
    tb_dir = tmp_path / "tb"
    tc = training_config(data["train"], n_epochs=2,
                         data_config={"validation_dataset_id": data["validation"]})  # fmt: skip
    logger_config = {
        "mlflow": {"tracking_uri": mlflow_server, "experiment_name": "e2e-tracking",
                   "run_name": job, "tags": {"team": "e2e"}},
        "tensorboard": {"log_dir": str(tb_dir)},
        "wandb": {"project": "e2e-tracking", "mode": "offline", "tags": ["e2e"]},
    }  # fmt: skip
    submit(client, job, str(tiny_models / "hf"), data["train"], training_config=tc,
           logger_config=logger_config)  # fmt: skip
    status = wait_done(client, job)
    res = status["resources_allocated"]
    assert status["status"] == "completed", res
    assert res["engine"]["name"] == "torchtune"
    steps = res["progress"]["total_steps"]
    assert steps == 8  # 16 rows / batch 4, 2 epochs

    # MLflow: params, per-step metrics, per-epoch validation, checkpoint locations, the run id
    # in the status.
    mc, run = _mlflow_run(mlflow_server, status, steps)
    assert run.info.run_name == job and run.data.tags["team"] == "e2e"
    assert run.data.params["engine"] == "torchtune"
    assert run.data.params["lora_rank"] == str(LORA["rank"])
    val = mc.get_metric_history(run.info.run_id, "validation/loss")
    assert [m.step for m in val] == [4, 8]
    ckpts = {c["epoch"]: c for c in status["checkpoints"]}
    for epoch in (1, 2):
        assert run.data.tags[f"checkpoint.epoch_{epoch}"] == ckpts[epoch]["path"]
        assert val[epoch - 1].value == pytest.approx(
            ckpts[epoch]["training_metrics"]["validation_loss"], rel=1e-6
        )
    assert run.data.metrics["result/final_loss"] == pytest.approx(res["result"]["final_loss"])

    # TensorBoard: the event files, read with tensorboard's reader.
    assert res["tracking"]["tensorboard"] == {"log_dir": str(tb_dir)}
    events = EventAccumulator(str(tb_dir))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, steps + 1))
    assert [e.step for e in events.Scalars("validation/loss")] == [4, 8]
    (params,) = events.Tensors("params/text_summary")
    assert f"| lora_rank | {LORA['rank']} |".encode() in params.tensor_proto.string_val[0]
    (ckpt_text,) = events.Tensors("checkpoints/epoch_2/text_summary")
    assert ckpt_text.tensor_proto.string_val[0].decode() == ckpts[2]["path"]

    # W&B offline: its run directory under the job's output, with config and metrics.
    wb = res["tracking"]["wandb"]
    run_dir = Path(wb["dir"])
    assert run_dir.name.startswith("offline-run-") and wb["run_id"] in run_dir.name
    assert run_dir.is_relative_to(Path(res["job_dir"]))
    config, history, summary = _wandb_log(run_dir)
    assert config["lora_rank"] == LORA["rank"] and config["engine"] == "torchtune"
    assert [row["_step"] for row in history if "train/loss" in row] == list(range(1, steps + 1))
    assert [row["_step"] for row in history if "validation/loss" in row] == [4, 8]
    assert history[-1]["train/loss"] == pytest.approx(res["progress"]["loss"], abs=1e-5)
    assert summary["validation/loss"] == pytest.approx(val[-1].value, rel=1e-6)
    assert summary["checkpoint/epoch_2"] == ckpts[2]["path"]


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)  # "train/loss" is stored as a nested key


def _wandb_log(run_dir: Path) -> tuple[dict, list[dict], dict]:
    """(config, history rows, final summary) of an offline run, from its `.wandb` file: W&B's
    records (its protobuf) framed as a LevelDB log (7-byte file header, 32 KiB blocks, records
    of checksum / length / type + data). wandb 0.31 ships no Python reader for it."""
    from wandb.proto import wandb_internal_pb2

    (log,) = run_dir.glob("*.wandb")
    data = log.read_bytes()
    assert data[:4] == b":W&B"
    config: dict = {}
    history: list[dict] = []
    summary: dict = {}
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a record header: padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk  # full / first, else middle / last
        if kind not in (1, 4):
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(buf)
        kind_name = record.WhichOneof("record_type")
        if kind_name == "run":
            config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind_name == "history":
            history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind_name == "summary":
            summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
    config = {k: v.get("value", v) if isinstance(v, dict) else v for k, v in config.items()}
    return config, history, summary


def test_huggingface_job_logs_to_mlflow_and_registers_there(client, data, mlflow_server,
                                                            tmp_path):  # fmt: skip
    # Full fine-tuning of a Qwen2 model runs on the Hugging Face engine: the same hook in
    # training.progress. Then the stages: evaluated on the validation rows, registered in the
    # same MLflow server's Model Registry when it beats the base on held-out loss.
    base = make("qwen2", tmp_path / "qwen2")
    job = new_id("tracked-hf")
    # A rate full fine-tuning of this model learns with (2e-2, the LoRA tests', diverges).
    tc = training_config(data["train"], n_epochs=1, optimizer_config={"lr": 2e-3},
                         data_config={"validation_dataset_id": data["validation"]})  # fmt: skip
    stages = {
        "kfp": {
            "evaluation": {"enabled": True, "samples": 1, "max_new_tokens": 4},
            "registry": {"kind": "mlflow", "gate": {"metric": "held_out/loss"}},
        }
    }
    submit(client, job, str(base), data["train"], algorithm_config=None,
           training_config=tc, hyperparam_search_config=stages,
           logger_config={"mlflow": {"tracking_uri": mlflow_server}})  # fmt: skip
    status = wait_done(client, job)
    res = status["resources_allocated"]
    assert status["status"] == "completed", res
    assert res["engine"]["name"] == "huggingface"
    _, run = _mlflow_run(mlflow_server, status, res["progress"]["total_steps"])
    assert run.data.params["algorithm"] == "full" and run.data.params["engine"] == "huggingface"
    assert run.info.run_name == job  # default: the job's id
    assert run.data.tags["checkpoint.epoch_1"] == status["checkpoints"][0]["path"]

    assert [st["status"] for st in res["stages"]] == ["completed"] * 4
    loss = res["evaluation"]["results"]["held_out"]["loss"]
    reg = res["registry"]
    assert reg["registered"] and reg["gate"]["passed"], reg
    assert reg["gate"]["tuned"] == pytest.approx(loss["tuned"]) and loss["tuned"] < loss["base"]
    from mlflow import MlflowClient

    mc = MlflowClient(tracking_uri=mlflow_server)
    version = mc.get_model_version(reg["name"], reg["version"])
    assert reg["name"] == "qwen2-full" and version.run_id == run.info.run_id
    assert mc.get_model_version_by_alias(reg["name"], "candidate").version == version.version
    assert float(version.tags["eval/held_out/loss/tuned"]) == pytest.approx(loss["tuned"])
    assert version.tags["job_uuid"] == job
    # The evaluation joined the job's run too.
    logged = mc.get_run(run.info.run_id).data.metrics
    assert logged["evaluation/held_out/loss/delta"] == pytest.approx(loss["delta"])

    # Register again without training: a gate the tuned model cannot pass registers nothing,
    # and the job still completes, saying why (DESIGN.md "Stage outcomes").
    again = new_id("re-register")
    stages = {
        "kfp": {
            "stages": ["evaluate", "register"],
            "evaluation": {"samples": 0},
            "registry": {
                "kind": "mlflow",
                "uri": mlflow_server,
                "gate": {"metric": "held_out/loss", "min_delta": 1e6},
            },
        }
    }
    tuned = status["checkpoints"][0]["path"]
    submit(client, again, str(base), data["train"], algorithm_config=None, training_config=tc,
           checkpoint_dir=tuned, hyperparam_search_config=stages)  # fmt: skip
    st = wait_done(client, again)
    reg = st["resources_allocated"]["registry"]
    assert st["status"] == "completed", st["resources_allocated"].get("error")
    assert reg["registered"] is False and not reg["gate"]["passed"]
    assert "1e+06" in reg["gate"]["reason"] or "1000000" in reg["gate"]["reason"], reg
    assert len(mc.search_model_versions(f"name='{reg['name']}'")) == 1


# ---- refused before anything is created ------------------------------------------------------


def _refused(client, server, data, tiny_models, logger_config, code: int) -> str:
    job = new_id("bad-tracking")
    with pytest.raises(APIStatusError) as err:
        submit(client, job, str(tiny_models / "hf"), data["train"], logger_config=logger_config)
    assert err.value.status_code == code, err.value
    assert not (server.work_dir / "jobs" / job).exists()
    assert server.alive()
    return str(err.value)


@pytest.mark.parametrize(
    ("logger_config", "words"),
    [
        ({"mlflow": {"tracking_uri": "http://x", "experiment": "e"}},
         ["logger_config.mlflow", "'experiment'", "experiment_name"]),
        ({"neptune": {"project": "p"}}, ["neptune", "mlflow", "tensorboard", "wandb"]),
        ({"mlflow": {"tracking_uri": "http//no-scheme"}}, ["tracking_uri", "http"]),
        ({"mlflow": {"tracking_uri": "http://:5000"}}, ["tracking_uri", "not a url"]),
        ({"tensorboard": {"log_dir": "relative/dir"}}, ["log_dir", "absolute"]),
        ({"wandb": {"mode": "sometimes"}}, ["logger_config.wandb.mode", "offline"]),
    ],
)  # fmt: skip
def test_bad_logger_config_is_400(client, server, data, tiny_models, logger_config, words):
    text = _refused(client, server, data, tiny_models, logger_config, 400).lower()
    for w in words:
        assert w.lower() in text, (w, text)


def test_log_dir_the_server_cannot_write_is_400(client, server, data, tiny_models):
    blocker = data["tmp"] / "a-file"
    blocker.write_text("")
    cfg = {"tensorboard": {"log_dir": str(blocker / "tb")}}
    text = _refused(client, server, data, tiny_models, cfg, 400)
    assert "not writable" in text and "is not a directory" in text


SECRET = "s3cr3t-tracking-value"


@pytest.mark.parametrize(
    "logger_config",
    [
        {"mlflow": {"tracking_uri": "http://127.0.0.1:5000", "token": SECRET}},
        {"wandb": {"mode": "offline", "api_key": SECRET}},
        {"mlflow": {"tracking_uri": f"http://user:{SECRET}@127.0.0.1:5000"}},
    ],
)
def test_credential_in_logger_config_is_400(client, server, data, tiny_models, logger_config):
    text = _refused(client, server, data, tiny_models, logger_config, 400)
    assert "credential" in text and "MLFLOW_TRACKING_TOKEN" in text and "tracking_secret" in text
    assert SECRET not in text
    assert SECRET not in server.log.read_text()


def test_mlflow_server_nobody_answers_is_503(client, server, data, tiny_models):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    text = _refused(client, server, data, tiny_models, {"mlflow": {"tracking_uri": uri}}, 503)
    assert uri in text and "does not answer" in text


class Relay:
    """A loopback TCP relay in front of a server: `stop` makes that server vanish for the
    relay's clients (connections reset, new ones refused) while it keeps serving others."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = [self.listener]
        self.lock, self.stopped = threading.Lock(), False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                return
            with self.lock:
                self.sockets += [client, upstream]
                if self.stopped:  # accepted while stopping: drop it too
                    client.close()
                    upstream.close()
                    return
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


def test_tracking_failure_mid_run_keeps_training(mlflow, tiny_models, tmp_path, monkeypatch):
    """The MLflow server goes away after the first step (for this job: a relay in front of
    the module's server is stopped): the tracker is dropped with a warning (step log and
    tracking.json), the other trackers and the training loop go on."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from llama_stack_provider_kfp.core.outputs import PROGRESS, TRACKING
    from llama_stack_provider_kfp.training.io import Output
    from llama_stack_provider_kfp.training.progress import ProgressLogger
    from llama_stack_provider_kfp.training.tracking import tracking

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    relay = Relay(mlflow.port)
    spec = _spec(tiny_models, tmp_path, {"mlflow": {"tracking_uri": relay.url},
                                         "tensorboard": {}})  # fmt: skip
    output = Output(str(tmp_path / "out"))
    with tracking(spec, output) as tracker:
        progress = ProgressLogger(str(output.local / PROGRESS))
        progress.attach(output, tracker)
        progress.begin(total_steps=4, steps_per_epoch=4, total_epochs=1)
        progress.log_dict({"loss": 2.0, "lr": 0.1}, 1)
        relay.stop()
        for step in (2, 3, 4):
            progress.log_dict({"loss": 1.0, "lr": 0.1}, step)
        progress.log_epoch(1, {"train_loss": 1.2, "validation_loss": 0.9, "global_step": 4})
        tracker.finish({"final_loss": 1.0, "global_step": 4}, ok=True)
    info = json.loads((output.local / TRACKING).read_text())
    assert info["mlflow"]["run_id"] and "warning" in info["mlflow"], info
    assert "warning" not in info["tensorboard"]
    events = EventAccumulator(str(output.local / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in events.Scalars("validation/loss")] == [4]


def _spec(tiny_models: Path, tmp_path: Path, logger_config: dict):
    from llama_stack_provider_kfp.boundary.model_source import inspect_model_dir
    from llama_stack_provider_kfp.core.spec import DataSpec, JobSpec, OptimSpec, TrainSpec
    from llama_stack_provider_kfp.core.tracking import parse_logger_config

    model = inspect_model_dir("tiny", tiny_models / "hf")
    return JobSpec(
        job_uuid="tracked-in-process",
        model=model,
        data=DataSpec(uri=str(tmp_path / "train.jsonl"), data_format="instruct"),
        train=TrainSpec(epochs=1, max_steps_per_epoch=None, gradient_accumulation_steps=1,
                        batch_size=4, shuffle=False, train_on_input=False, dtype="fp32",
                        max_validation_steps=None, max_seq_len=64, seed=1, device="cpu"),
        lora=None,
        optim=OptimSpec(type="adamw", lr=1e-3, weight_decay=0.0, warmup_steps=0),
        output_format=model.layout,
        output_uri=str(tmp_path / "out"),
        tracking=parse_logger_config(logger_config, "local"),
    )  # fmt: skip
