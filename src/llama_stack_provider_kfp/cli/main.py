"""`llama-stack-kfp post_training ...`: upstream's commands (llama-stack-client 0.6.1's
`post_training` group, same names and options), working against the routes 0.6.x serves, plus
`preference_optimize`, `watch`, `logs` and `plot`.

Exit codes: 0 success (for `watch`: the job completed), 1 the job failed, 2 it was cancelled,
3 `watch --timeout` ran out while it still runs, 4 the command could not do its work (server
unreachable, unknown job, request refused), 64 wrong usage (click's own 2 would read as
"cancelled").
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from llama_stack_client import APIConnectionError, APIStatusError, LlamaStackClient
from rich.console import Console

from ..client import cancel_job, job_artifacts, job_status, register_jsonl
from . import configs, render
from .connection import CommandError, Target, explain, make_client, resolve
from .plot import comparisons, save_plot
from .watch import STILL_RUNNING, exit_code, follow

ERROR = 4
USAGE = 64


class Session:
    """The server this invocation talks to; the client is made on first use."""

    def __init__(self, endpoint: str, api_key: str, config: str | None) -> None:
        self._args = (endpoint or None, api_key or None, config)
        self._target: Target | None = None
        self._client: LlamaStackClient | None = None

    @property
    def target(self) -> Target:
        if self._target is None:
            self._target = resolve(*self._args)
        return self._target

    @contextlib.contextmanager
    def talking(self, job_uuid: str | None = None) -> Iterator[LlamaStackClient]:
        """The client; its failures come out as CommandError that say what to check."""
        if self._client is None:
            self._client = make_client(self.target)
        try:
            yield self._client
        except (APIConnectionError, APIStatusError) as e:
            raise explain(e, self.target, job_uuid) from None


def command(fn: Callable[..., int]) -> Callable[..., int]:
    """A subcommand body: the Session as first argument; CommandError -> message, exit 4."""

    @click.pass_obj
    @functools.wraps(fn)
    def wrapper(session: Session, *args: Any, **kwargs: Any) -> int:
        try:
            return fn(session, *args, **kwargs)
        except CommandError as e:
            click.echo(f"error: {e}", err=True)
            return ERROR
        except configs.ConfigError as e:
            raise click.UsageError(str(e)) from None

    return wrapper


def output_option(fn: Callable) -> Callable:
    return click.option(
        "--output",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="json: the server's answer as JSON, for scripts",
    )(fn)


def job_option(required: bool = True) -> Callable[[Callable], Callable]:
    return click.option("--job-uuid", required=required, help="Job UUID")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="llama-stack-provider-kfp", prog_name="llama-stack-kfp")
@click.option("--endpoint", default="", help="llama-stack server URL [default: from the config]")
@click.option("--api-key", default="", help="API key, sent as a bearer token")
@click.option(
    "--config",
    default=None,
    help="client config file [default: ~/.llama/client/config.yaml, if present]",
)
@click.pass_context
def cli(ctx: click.Context, endpoint: str, api_key: str, config: str | None) -> None:
    """Post-training on a llama-stack 0.6.x server (llama-stack-client's CLI, working)."""
    if config and endpoint:
        raise click.UsageError("give --endpoint or --config, not both")
    ctx.obj = Session(endpoint, api_key, config)


@cli.group("post_training")
def post_training() -> None:
    """Post-training jobs: submit, follow, inspect, cancel."""


# ---- submit ------------------------------------------------------------------------------


def training_options(fn: Callable) -> Callable:
    """Flags for the common fields; each overrides the same field of --training-config."""
    options = [
        click.option("--dataset-id", help="registered training dataset"),
        click.option(
            "--data",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="JSONL rows on the server's machine: registered as dataset <job>-train",
        ),
        click.option("--validation-dataset-id", help="registered validation dataset"),
        click.option(
            "--validation-data",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="JSONL rows: registered as dataset <job>-validation",
        ),
        click.option("--data-format", type=click.Choice(["instruct", "dialog"])),
        click.option("--batch-size", type=int),
        click.option("--epochs", type=int, help="n_epochs"),
        click.option(
            "--max-steps-per-epoch",
            type=int,
            help="llama-stack's default is 1: set it for a whole epoch",
        ),
        click.option("--grad-accum", type=int, help="gradient_accumulation_steps"),
        click.option("--dtype", type=click.Choice(["bf16", "fp32"])),
        click.option("--lr", type=float, help="learning rate"),
        click.option("--optimizer", type=click.Choice(["adam", "adamw", "sgd"])),
        click.option("--weight-decay", type=float),
        click.option("--warmup-steps", type=int),
        click.option("--watch", is_flag=True, help="follow the job; exit codes as `watch`"),
        click.option("--interval", type=float, default=1.0, show_default=True, hidden=True),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def stage_options(fn: Callable) -> Callable:
    """Flags for hyperparam_search_config["kfp"], the provider settings a request overrides
    (one per key); each merges over the same field of --hyperparam-search-config."""
    options = [
        click.option(
            "--hyperparam-search-config",
            help='JSON, or @file: the whole dict; the flags below merge into its "kfp"',
        ),
        click.option(
            "--evaluation",
            help="JSON, or @file: the evaluate stage's settings (enabled, held_out, max_rows, "
            "tasks, task_files, limit, samples, max_new_tokens, every_epoch, batch_size, ...)",
        ),
        click.option(
            "--evaluate/--no-evaluate",
            default=None,
            help="evaluation.enabled: base vs tuned after training",
        ),
        click.option(
            "--eval-task",
            "eval_tasks",
            multiple=True,
            metavar="NAME",
            help="lm-eval task (repeatable): evaluation.tasks; turns evaluation on",
        ),
        click.option(
            "--eval-task-file",
            "eval_task_files",
            multiple=True,
            metavar="LOC",
            help="lm-eval task YAML: path, s3://, https:// (repeatable): evaluation.task_files",
        ),
        click.option(
            "--registry",
            help="JSON, or @file: the register stage's settings (kind, uri, model_name, "
            "alias, gate {metric, higher_is_better, min_delta}, token_env, ...)",
        ),
        click.option(
            "--register",
            type=click.Choice(["mlflow", "kubeflow", "none"]),
            help="registry.kind: register the tuned model there",
        ),
        click.option("--registry-uri", help="registry.uri: MLflow tracking server, or KF registry"),
        click.option(
            "--validation-fraction",
            type=click.FloatRange(0, 1, max_open=True),
            help="training rows held out (when no validation dataset is named)",
        ),
        click.option(
            "--max-rows", type=click.IntRange(min=1), help="train on the first N rows at most"
        ),
        click.option(
            "--algorithm",
            type=click.Choice(["full", "osft"]),
            help="what to train when no --algorithm-config / --lora-rank is given: full "
            "fine-tuning, or OSFT (Orthogonal Subspace Fine-Tuning)",
        ),
        click.option(
            "--osft-ratio",
            type=click.FloatRange(0, 1, min_open=True),
            help="osft.unfreeze_rank_ratio: the fraction of each matrix's singular directions "
            "that train (sets --algorithm osft)",
        ),
        click.option(
            "--osft-modules",
            metavar="LIST",
            help="osft.target_modules, e.g. q_proj,v_proj,down_proj [default: every attention "
            "and MLP projection] (sets --algorithm osft)",
        ),
        click.option(
            "--max-grad-norm",
            type=click.FloatRange(min=0),
            help="clip gradients to this total norm before each step [server default: 1.0]; "
            "0: no clipping",
        ),
        click.option(
            "--stages",
            metavar="LIST",
            help="e.g. train,evaluate,register; without train (supervised_fine_tune): "
            "evaluate/register the epoch checkpoint --checkpoint-dir names",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _extension(text: str | None, flags: dict[str, Any]) -> dict[str, Any]:
    """hyperparam_search_config from --hyperparam-search-config and the stage flags (taken
    out of `flags`); {} when none is given."""
    return configs.hyperparam_search_config(
        configs.load(text, "--hyperparam-search-config"),
        evaluation=configs.load(flags.pop("evaluation"), "--evaluation"),
        evaluate=flags.pop("evaluate"),
        eval_tasks=flags.pop("eval_tasks"),
        eval_task_files=flags.pop("eval_task_files"),
        registry=configs.load(flags.pop("registry"), "--registry"),
        register=flags.pop("register"),
        registry_uri=flags.pop("registry_uri"),
        validation_fraction=flags.pop("validation_fraction"),
        max_rows=flags.pop("max_rows"),
        stages=configs.stage_list(flags.pop("stages")),
        algorithm=flags.pop("algorithm"),
        osft_ratio=flags.pop("osft_ratio"),
        osft_modules=configs.name_list(flags.pop("osft_modules")),
        max_grad_norm=flags.pop("max_grad_norm"),
    )


def _training(
    session: Session, job_uuid: str, base: str | None, default_format: str, flags: dict[str, Any]
) -> dict[str, Any]:
    for source, target in (("data", "dataset_id"), ("validation_data", "validation_dataset_id")):
        if flags[source] is not None and flags[target] is not None:
            raise click.UsageError(f"give --{source.replace('_', '-')} or a dataset id, not both")
    loaded = configs.load(base, "--training-config")  # a bad config: before anything is sent
    with session.talking() as client:
        if flags["data"] is not None:
            flags["dataset_id"] = f"{job_uuid}-train"
            register_jsonl(client, flags["dataset_id"], str(flags["data"].resolve()))
        if flags["validation_data"] is not None:
            flags["validation_dataset_id"] = f"{job_uuid}-validation"
            path = str(flags["validation_data"].resolve())
            register_jsonl(client, flags["validation_dataset_id"], path)
    cfg = configs.training_config(
        loaded,
        epochs=flags["epochs"],
        max_steps_per_epoch=flags["max_steps_per_epoch"],
        gradient_accumulation_steps=flags["grad_accum"],
        dtype=flags["dtype"],
        dataset_id=flags["dataset_id"],
        validation_dataset_id=flags["validation_dataset_id"],
        data_format=flags["data_format"],
        default_data_format=default_format,
        batch_size=flags["batch_size"],
        lr=flags["lr"],
        optimizer=flags["optimizer"],
        weight_decay=flags["weight_decay"],
        warmup_steps=flags["warmup_steps"],
    )
    if problem := configs.missing_data(cfg):
        raise click.UsageError(problem)
    if "max_steps_per_epoch" not in cfg:
        click.echo(
            "note: max_steps_per_epoch is not set; llama-stack's default is 1 step per epoch "
            "(--max-steps-per-epoch N)",
            err=True,
        )
    return cfg


def _submitted(session: Session, job_uuid: str, watch: bool, interval: float, output: str) -> int:
    if not watch:
        if output == "json":
            render.as_json({"job_uuid": job_uuid})
        else:
            click.echo(job_uuid)  # upstream prints the id alone
        return 0
    click.echo(f"submitted job {job_uuid}", err=True)
    return _watch(session, job_uuid, interval, None, output)


@post_training.command("supervised_fine_tune")
@click.option("--job-uuid", help="Job UUID [default: sft-<random>]")
@click.option("--model", required=True, help="Model: descriptor, HF repo id, or directory")
@click.option("--algorithm-config", help="JSON, or @file.json / @file.yaml [default: full]")
@click.option("--training-config", help="JSON, or @file.json / @file.yaml")
@click.option("--checkpoint-dir", default=None, help="where the base weights are read from")
@click.option(
    "--logger-config",
    help='JSON, or @file: experiment tracking, e.g. {"mlflow": {"tracking_uri": ...}}',
)
@click.option("--lora-rank", type=int, help="LoRA rank (starts a LoRA config if none given)")
@click.option("--lora-alpha", type=int, help="LoRA alpha [default: 2 x rank]")
@training_options
@stage_options
@output_option
@command
def supervised_fine_tune(
    session: Session,
    job_uuid: str | None,
    model: str,
    algorithm_config: str | None,
    training_config: str | None,
    checkpoint_dir: str | None,
    logger_config: str | None,
    lora_rank: int | None,
    lora_alpha: int | None,
    hyperparam_search_config: str | None,
    watch: bool,
    interval: float,
    output: str,
    **flags: Any,
) -> int:
    """Submit a supervised fine-tuning job; prints its id."""
    job_uuid = job_uuid or f"sft-{uuid.uuid4().hex[:8]}"
    algorithm = configs.lora_config(
        configs.load(algorithm_config, "--algorithm-config"), rank=lora_rank, alpha=lora_alpha
    )
    extension = _extension(hyperparam_search_config, flags)
    training = _training(session, job_uuid, training_config, "instruct", flags)
    with session.talking() as client:
        client.alpha.post_training.supervised_fine_tune(
            job_uuid=job_uuid,
            model=model,
            algorithm_config=algorithm,  # type: ignore[arg-type]  # checked by the server
            training_config=training,  # type: ignore[arg-type]
            checkpoint_dir=checkpoint_dir,
            hyperparam_search_config=extension,
            logger_config=configs.load(logger_config, "--logger-config") or {},
        )
    return _submitted(session, job_uuid, watch, interval, output)


@post_training.command("preference_optimize")
@click.option("--job-uuid", help="Job UUID [default: dpo-<random>]")
@click.option("--finetuned-model", required=True, help="Model to align (as --model above)")
@click.option("--algorithm-config", help="JSON, or @file: {beta, loss_type}")
@click.option("--training-config", help="JSON, or @file.json / @file.yaml")
@click.option("--beta", type=float, help="DPO beta [default: 0.1]")
@click.option("--loss-type", type=click.Choice(["sigmoid", "hinge", "ipo"]), help="[sigmoid]")
@click.option(
    "--logger-config",
    help='JSON, or @file: experiment tracking, e.g. {"mlflow": {"tracking_uri": ...}}',
)
@training_options
@stage_options
@output_option
@command
def preference_optimize(
    session: Session,
    job_uuid: str | None,
    finetuned_model: str,
    algorithm_config: str | None,
    training_config: str | None,
    beta: float | None,
    loss_type: str | None,
    logger_config: str | None,
    hyperparam_search_config: str | None,
    watch: bool,
    interval: float,
    output: str,
    **flags: Any,
) -> int:
    """Submit a preference-optimization (DPO) job; prints its id."""
    job_uuid = job_uuid or f"dpo-{uuid.uuid4().hex[:8]}"
    algorithm = configs.dpo_config(
        configs.load(algorithm_config, "--algorithm-config"), beta=beta, loss_type=loss_type
    )
    extension = _extension(hyperparam_search_config, flags)
    training = _training(session, job_uuid, training_config, "dialog", flags)
    with session.talking() as client:
        client.alpha.post_training.preference_optimize(
            job_uuid=job_uuid,
            finetuned_model=finetuned_model,
            algorithm_config=algorithm,  # type: ignore[arg-type]  # checked by the server
            training_config=training,  # type: ignore[arg-type]
            hyperparam_search_config=extension,
            logger_config=configs.load(logger_config, "--logger-config") or {},
        )
    return _submitted(session, job_uuid, watch, interval, output)


# ---- read --------------------------------------------------------------------------------


@post_training.command("list")
@output_option
@command
def list_jobs(session: Session, output: str) -> int:
    """Show the server's post-training jobs."""
    with session.talking() as client:
        jobs = [j.job_uuid for j in client.alpha.post_training.job.list()]
    if output == "json":
        render.as_json([{"job_uuid": j} for j in jobs])
    else:
        for j in jobs:
            click.echo(j)
    return 0


@post_training.command("status")
@job_option()
@output_option
@command
def status(session: Session, job_uuid: str, output: str) -> int:
    """Show a job's status, progress and error."""
    with session.talking(job_uuid) as client:
        st = job_status(client, job_uuid)
    if output == "json":
        render.as_json(st)
    else:
        render.status(render.stdout(), st)
    return 0


@post_training.command("artifacts")
@job_option()
@output_option
@command
def artifacts(session: Session, job_uuid: str, output: str) -> int:
    """Show a job's checkpoints."""
    with session.talking(job_uuid) as client:
        found = job_artifacts(client, job_uuid)
    if output == "json":
        render.as_json(found)
    else:
        render.checkpoints(render.stdout(), job_uuid, found.get("checkpoints") or [])
    return 0


@post_training.command("cancel")
@job_option()
@command
def cancel(session: Session, job_uuid: str) -> int:
    """Cancel a job (its processes or KFP run are stopped)."""
    with session.talking(job_uuid) as client:
        cancel_job(client, job_uuid)
    click.echo(f"cancel requested for {job_uuid}", err=True)
    return 0


@post_training.command("watch")
@job_option()
@click.option("--interval", type=float, default=1.0, show_default=True, help="seconds")
@click.option("--timeout", type=float, help="stop watching after this many seconds (exit 3)")
@output_option
@command
def watch(
    session: Session, job_uuid: str, interval: float, timeout: float | None, output: str
) -> int:
    """Follow a job to its end with a live bar (loss, ETA).

    Exit code: 0 completed, 1 failed, 2 cancelled, 3 still running at --timeout.
    """
    return _watch(session, job_uuid, interval, timeout, output)


def _watch(
    session: Session, job_uuid: str, interval: float, timeout: float | None, output: str
) -> int:
    with session.talking(job_uuid) as client:
        try:
            st = follow(client, job_uuid, Console(stderr=True), interval, timeout, output == "text")
        except KeyboardInterrupt:
            click.echo(f"stopped watching; job {job_uuid} goes on", err=True)
            return 130
    if output == "json":
        render.as_json(st)
    else:
        render.outcome(render.stdout(), st)
    code = exit_code(st)
    if code == STILL_RUNNING:
        click.echo(f"job {job_uuid} is still {st['status']} after {timeout}s", err=True)
    return code


@post_training.command("logs")
@job_option()
@click.option("--lines", type=int, default=50, show_default=True, help="at most the last N")
@output_option
@command
def logs(session: Session, job_uuid: str, lines: int, output: str) -> int:
    """Print the last lines of a job's log (the status carries the last 50)."""
    with session.talking(job_uuid) as client:
        st = job_status(client, job_uuid)
    res = st.get("resources_allocated") or {}
    tail = (res.get("log_tail") or (res.get("error") or {}).get("log_tail") or [])[-lines:]
    if output == "json":
        render.as_json({"job_uuid": job_uuid, "status": st["status"], "log_tail": tail})
    else:
        for line in tail:
            click.echo(line)
    return 0


@post_training.command("plot")
@job_option()
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="PNG file [default: <job>-loss.png]",
)
@output_option
@command
def plot(session: Session, job_uuid: str, out: Path | None, output: str) -> int:
    """Save a job's training-loss curve as a PNG, with base vs tuned beside it when the job
    was evaluated."""
    with session.talking(job_uuid) as client:
        st = job_status(client, job_uuid)
    res = st.get("resources_allocated") or {}
    history = res.get("loss_history") or []
    compared = comparisons(res.get("evaluation"))
    if not history and not compared:
        raise CommandError(
            f"job {job_uuid} has nothing to plot yet: no loss history, no evaluation "
            f"(status: {st['status']})"
        )
    path = save_plot(history, res.get("evaluation"), out or Path(f"{job_uuid}-loss.png"), job_uuid)
    if output == "json":
        answer: dict[str, Any] = {"job_uuid": job_uuid, "path": str(path), "points": len(history)}
        if compared:
            answer["compared"] = [name for name, _, _ in compared]
        render.as_json(answer)
    else:
        click.echo(str(path))
    return 0


# ---- servers --------------------------------------------------------------------------------


@cli.group("serve")
def serve() -> None:
    """Run a server on this machine (the one part of this command that is not a client)."""


@serve.command("openai")
@click.option("--config", "config_file", required=True, type=click.Path(exists=True,
              dir_okay=False, path_type=Path), help="llama-stack run.yaml with the kfp "
              "post_training provider")  # fmt: skip
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--provider-id", default=None, help="the provider entry, when there are several")
def serve_openai(config_file: Path, host: str, port: int, provider_id: str | None) -> int:
    """OpenAI's fine-tuning API (/v1/fine_tuning/jobs, /v1/files, /v1/models) on this
    provider's jobs."""
    import importlib

    # The server package is loaded by name, here only: the rest of the CLI stays a pure
    # client (pyproject.toml's import contract; `serve` needs the server's dependencies).
    server = importlib.import_module("llama_stack_provider_kfp.openai_api.serve")
    try:
        return int(server.serve(config_file, host, port, provider_id))
    except ValueError as e:  # core.errors.InvalidRequest: a setting to change
        raise click.UsageError(str(e)) from None


# ---- entry point -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    # The client logs each retry at INFO; the message after the last one says it all.
    for name in ("llama_stack_client", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        code = cli.main(args=argv, prog_name="llama-stack-kfp", standalone_mode=False)
    except click.UsageError as e:
        e.show()
        return USAGE
    except click.ClickException as e:
        e.show()
        return ERROR
    except click.Abort:
        click.echo("aborted", err=True)
        return 130
    return code if isinstance(code, int) else 0


def run() -> None:
    sys.exit(main())
