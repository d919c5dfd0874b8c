"""The Hugging Face engine: any AutoModelForCausalLM with its own tokenizer, trained by a plain
loop with transformers + PEFT (LoRA, DoRA), on every parameter (full fine-tuning), or on the
low singular subspaces of its matrices (OSFT, training/huggingface/osft.py).

Outputs follow core.outputs like the torchtune engine's: per epoch `merged/` (full weights,
config, tokenizer) and, for LoRA, `adapter/` (PEFT's own adapter_config.json +
adapter_model.safetensors), the training state (OSFT: with its factors), metrics.json last.
Every `checkpoint_every_steps` optimizer steps, and on SIGTERM (training.stop), a step
checkpoint of the same layout.

Resuming (training.resume) restores weights, optimizer, scheduler, RNGs, the epoch's shuffle
generator and the position within the epoch, so a resumed run takes the same steps with the
same batches as one that was never interrupted.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...core.lora_targets import module_paths, resolve
from ...core.outputs import ADAPTER, MERGED, PROGRESS, epoch_dir, step_dir
from ...core.resume import TrainingState, check_rows
from ...core.spec import JobSpec
from .. import resume as resuming
from ..checkpoints import checkpoint_writer, epoch_writer, prune_step_checkpoints
from ..context import TrainingContext
from ..device import peak_memory_mb, resolve_device
from ..io import Output
from ..progress import ProgressLogger
from ..result import summary
from ..stop import GracefulStop, TrainingStopped
from . import clipping, data, kernels, logits, osft, preference, sharding

_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


def _load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if not tokenizer.chat_template:
        tokenizer.chat_template = data.FALLBACK_CHAT_TEMPLATE
    if tokenizer.pad_token_id is None:  # GPT-2 family: padding is masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _matrix_paths(model: torch.nn.Module) -> list[str]:
    shapes: dict[str, list[int]] = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor):
            shapes[f"{name}.weight"] = list(weight.shape)
    return module_paths(list(shapes), shapes)


def _with_lora(model: Any, spec: JobSpec) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = spec.lora
    assert lora is not None
    # Resolved once, against the weights' module paths: at submit, or by the train step when
    # it fetched the weights (training.steps.reinspected). Only a spec without them (a record
    # from before targets were resolved, or weights never inspected) resolves on the model.
    peft_targets = lora.target_modules if spec.model.modules else []
    if not peft_targets:
        targets = resolve(
            lora.requested_modules or lora.attn_modules,
            lora.apply_to_mlp,
            lora.apply_to_output,
            _matrix_paths(model),
            spec.model.is_tied,
        )
        for note in targets.notes:
            print(f"lora: {note}")
        peft_targets = targets.peft
    config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,  # type: ignore[arg-type]  # PEFT annotates int, takes float
        target_modules=peft_targets,
        lora_dropout=0.0,
        bias="none",
        use_dora=lora.use_dora,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


class HuggingFaceEngine:
    name = "huggingface"

    def train(self, ctx: TrainingContext) -> dict[str, Any]:
        with GracefulStop(ctx.output, ctx.spec.job_uuid) as stop:
            with tempfile.TemporaryDirectory(prefix="resume-") as scratch:
                found = resuming.find(ctx.spec, ctx.output, Path(scratch))
                run = _Run(ctx, found, stop)
            return run.run()


class _Run:
    def __init__(
        self,
        ctx: TrainingContext,
        resume: resuming.Resume | None = None,
        stop: GracefulStop | None = None,
    ) -> None:
        from transformers import AutoModelForCausalLM

        ctx.imports_done()
        self.phases = ctx.phases
        spec, model_dir, output = ctx.spec, ctx.model_dir, ctx.output
        train_path, val_path = ctx.train_path, ctx.val_path
        t = spec.train
        random.seed(t.seed)
        torch.manual_seed(t.seed)
        self.spec, self.model_dir, self.output = spec, model_dir, output
        self.resume, self.stop = resume, stop or GracefulStop(output)
        self.ranks = ctx.ranks
        self.device = self.ranks.device(resolve_device(t.device))
        if self.ranks.main:
            self.progress = ProgressLogger(str(output.local / PROGRESS))
            self.progress.attach(output, ctx.tracker, spec.job_uuid, ctx.phases)
        else:  # the other ranks publish nothing
            self.progress = ProgressLogger(str(Path(tempfile.mkdtemp()) / PROGRESS))
        self.tokenizer = _load_tokenizer(model_dir)
        # A resumed full fine-tuning (or OSFT) continues from its checkpoint's weights; LoRA
        # trains on the base weights with the checkpoint's adapter loaded below.
        full = spec.lora is None
        trained_dir = resume.folder / MERGED if resume is not None and full else model_dir
        model: Any = AutoModelForCausalLM.from_pretrained(trained_dir, dtype=_DTYPES[t.dtype])
        self.plan = sharding.choose(spec, self.ranks, self.device, model)
        if not self.plan.fsdp:  # FSDP moves each rank's shards to the device itself
            model = model.to(self.device)
        if (liger := kernels.apply_liger(model, self.device)) is not None:
            print(liger)
        if t.enable_activation_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        if t.enable_activation_offloading:
            print(
                "efficiency: activation offloading is a torchtune feature; "
                "this engine trains without it"
            )
        # Full DPO compares with a frozen copy of the base; LoRA DPO with the adapter off.
        self.reference: Any = None
        if spec.dpo is not None and full:
            base: Any = (
                copy.deepcopy(model)
                if trained_dir == model_dir
                else AutoModelForCausalLM.from_pretrained(model_dir, dtype=_DTYPES[t.dtype])
            )
            base = base.eval().requires_grad_(False)
            if self.plan.fsdp:  # sharded as the trained model is
                sharding.shard(base, self.plan, self.device, _DTYPES[t.dtype])
            self.reference = base if self.plan.fsdp else base.to(self.device)
        self.osft: osft.OSFT | None = None
        self._export: Any = None  # FSDP: the main rank's whole copy for saving
        if spec.osft is not None:
            self.osft = self._with_osft(model, resume)
        self.model: Any = _with_lora(model, spec) if spec.lora else model
        if resume is not None and spec.lora is not None:  # LoRA: the adapter on the base
            _load_adapter(self.model, resume.folder / ADAPTER)
        ctx.phases.mark("model_loaded")
        # What the training forward goes through: DDP averages the ranks' gradients; FSDP
        # shards the model in place and reduce-scatters them.
        self.train_model: Any = self.model
        if self.plan.fsdp:
            sharding.shard(self.model, self.plan, self.device, _DTYPES[t.dtype])
        elif self.ranks.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            # OSFT's frozen factors are buffers that never change: synced once (osft.broadcast)
            self.train_model = DistributedDataParallel(
                self.model, broadcast_buffers=self.osft is None
            )
        held = sharding.per_rank(self.ranks, sharding.parameter_bytes(self.model))
        self.sharding = {"strategy": self.plan.strategy, "reason": self.plan.reason,
                         "cpu_offload": self.plan.cpu_offload,
                         "parameter_bytes_per_rank": held}  # fmt: skip
        if self.ranks.main:
            print(f"sharding: {self.plan.strategy} ({self.plan.reason}); parameter bytes per "
                  f"rank: {held}", flush=True)  # fmt: skip
        self.train_set: list[Any]
        self.val_set: list[Any]
        if spec.dpo is not None:
            self.train_set = preference.load(train_path, self.tokenizer, t.max_seq_len)
            self.val_set = preference.load(val_path, self.tokenizer, t.max_seq_len, "validation")
            self.train_rows = len(self.train_set)
        else:
            self.train_set = data.load(train_path, self.tokenizer, t.max_seq_len, t.train_on_input)
            self.val_set = data.load(
                val_path, self.tokenizer, t.max_seq_len, t.train_on_input, "validation"
            )
            self.train_rows = len(self.train_set)
            if t.packed:  # packed once, in file order; epochs shuffle the packed rows
                self.train_set = data.pack(self.train_set, t.max_seq_len)
        self.batches_per_epoch = math.ceil(len(self.train_set) / t.batch_size)
        self.steps_per_epoch = spec.steps_per_epoch(self.batches_per_epoch)
        self.total_steps = self.steps_per_epoch * t.epochs
        params = [p for p in self.model.parameters() if p.requires_grad]
        o = spec.optim
        self.optimizer = _OPTIMIZERS[o.type](params, lr=o.lr, weight_decay=o.weight_decay)
        from transformers import get_cosine_schedule_with_warmup

        self.scheduler = get_cosine_schedule_with_warmup(
            self.optimizer, o.warmup(self.total_steps), max(self.total_steps, 1)
        )
        self._inputs = 0  # non-padding tokens fed this optimizer step, on this rank
        self.generator = torch.Generator().manual_seed(t.seed)
        self.samples_seen = 0
        self.global_step = 0
        self.epoch_rewards: list[dict[str, float]] = []
        self.epoch_losses: list[float] = []
        self.epochs: list[dict[str, Any]] = []
        # Where this run starts (a resumed one: inside an epoch), and its newest checkpoint.
        self.start_epoch, self.skip = 1, 0
        self.saved_step, self.saved_at = 0, ""
        self.step_checkpoints = [
            c.step for c in output_checkpoints(output) if c.step is not None
        ]  # a restarted step's, kept for pruning
        if resume is not None:
            self._restore(resume)

    def _with_osft(self, model: Any, resume: resuming.Resume | None) -> osft.OSFT:
        """The model's targets parametrized: factors from the checkpoint a resumed job
        continues, else an SVD on rank 0 sent to the other ranks. The SVD's progress goes to
        the log and progress.json (a large model's takes minutes on a CPU)."""
        spec = self.spec.osft
        assert spec is not None
        modules = spec.target_modules or _osft_modules(model, spec.requested_modules)
        saved = resume.tensors.get("osft") if resume is not None else None
        if resume is not None and saved is None:
            raise ValueError(f"{resume.where} holds no OSFT factors: it was not trained with OSFT")
        what = "loading the checkpoint's factors" if saved is not None else "SVD"
        last = [0.0]

        def report(done: int, total: int, path: str, seconds: float) -> None:
            if done == total or seconds - last[0] >= 5.0 or done == 1:
                last[0] = seconds
                print(f"osft: {what} {done}/{total} matrices, {seconds:.1f} s ({path})")
                self.progress.preparing(
                    "osft",
                    {"matrices": total, "decomposed": done, "svd_seconds": round(seconds, 1)},
                )

        decomposing = saved is None and self.ranks.main
        result = osft.apply(model, modules, spec.unfreeze_rank_ratio, saved=saved,
                            decompose_here=decomposing or self.ranks.world == 1,
                            freeze_non_targets=spec.freeze_non_targets,
                            report=report if self.ranks.main else lambda *a: None)  # fmt: skip
        if self.ranks.world > 1 and saved is None:
            osft.broadcast(result)
        info = osft.describe(result.summary, spec.unfreeze_rank_ratio, self.device,
                             peak_memory_mb(self.device))  # fmt: skip
        s = result.summary
        print(f"osft: {s.matrices} matrices, {s.frozen_directions} of {s.directions} singular "
              f"directions frozen (unfreeze_rank_ratio {spec.unfreeze_rank_ratio}); "
              f"{s.trainable:,} of {s.total:,} parameters train; {what} took {s.seconds:.1f} s "
              f"on {self.device}, peak memory {info['peak_memory_mb']} MB")  # fmt: skip
        self.progress.preparing("osft", info)
        self.osft_info = info
        return result

    def _restore(self, resume: resuming.Resume) -> None:
        state, saved = resume.state, resume.tensors
        check_rows(state, self.train_rows, resume.where)
        if self.plan.fsdp:  # whole tensors in the checkpoint: each rank takes its shard
            sharding.load_optimizer(self.optimizer, saved["optimizer"])
        else:
            self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.generator.set_state(saved["generator"])  # as it was at that epoch's start
        resuming.set_rng_state(saved["rng"])
        self.global_step, self.samples_seen = state.global_step, state.samples_seen
        self.start_epoch, self.skip = state.resume_epoch, state.position
        self.epoch_losses = list(saved["epoch_losses"])
        self.epoch_rewards = list(saved["epoch_rewards"])
        self.epochs = list(saved["epochs"])
        self.saved_step, self.saved_at = state.global_step, resume.where
        self.progress.restore(
            saved["loss_history"], int(saved["history_stride"]), state.global_step
        )

    def _batch(self, items: list[Any]) -> dict[str, torch.Tensor]:
        """A padded batch on the device; counts its non-padding tokens for the progress."""
        if isinstance(items[0], data.Packed):
            batch = data.collate_packed(items, self.tokenizer.pad_token_id)
            self._inputs += int(batch.pop("tokens"))
        else:
            batch = data.collate(items, self.tokenizer.pad_token_id)
            self._inputs += int(batch["attention_mask"].sum())
        return {k: v.to(self.device) for k, v in batch.items()}

    def run(self) -> dict[str, Any]:
        t = self.spec.train
        if not self.train_set:
            raise ValueError("the dataset has no training rows")
        self.progress.begin(
            total_steps=self.total_steps,
            steps_per_epoch=self.steps_per_epoch,
            total_epochs=t.epochs,
            device=str(self.device),
            dtype=t.dtype,
            rows={"train": self.train_rows, "validation": len(self.val_set)},
            sharding=self.sharding,
            **self._resumed_from(),
        )
        started = time.perf_counter()
        first_step = self.global_step
        self.model.train()
        for epoch in range(self.start_epoch, t.epochs + 1):
            losses = self._epoch(epoch, self.skip if epoch == self.start_epoch else 0)
            self._save(epoch, sum(losses) / len(losses) if losses else None)
            if self._stopping() and epoch < t.epochs:
                self._halt(epoch + 1, 0)
        self.phases.mark("exports_done")
        self.progress.close()
        return summary(
            epochs=self.epochs,
            train_rows=self.train_rows,
            validation_rows=len(self.val_set),
            samples_seen=self.samples_seen,
            global_step=self.global_step,
            device=str(self.device),
            dtype=t.dtype,
            peak_memory_mb=peak_memory_mb(self.device),
            progress=self.progress,
            train_seconds=time.perf_counter() - started,
            steps_run=self.global_step - first_step,
            sharding=self.sharding,
            **self._resumed_from(),
            **({"osft": self.osft_info} if self.osft is not None else {}),
        )

    def _resumed_from(self) -> dict[str, Any]:
        if self.resume is None:
            return {}
        r = self.resume
        return {"resumed_from": {"checkpoint": r.where, "step": r.state.global_step,
                                 "in_place": r.in_place}}  # fmt: skip

    def _epoch(self, epoch: int, skip: int) -> list[float]:
        """Train one epoch from its `skip`-th optimizer step (a resumed run: the data position
        the checkpoint recorded); return the epoch's step losses."""
        t = self.spec.train
        n = len(self.train_set)
        self.epoch_start = self.generator.get_state()
        order = torch.randperm(n, generator=self.generator) if t.shuffle else torch.arange(n)
        batches = [order[i : i + t.batch_size].tolist() for i in range(0, n, t.batch_size)]
        accum = t.gradient_accumulation_steps
        groups = [batches[i : i + accum] for i in range(0, len(batches), accum)]
        groups = groups[: self.steps_per_epoch]
        every = t.checkpoint_every_steps
        if skip == 0:
            self.epoch_losses, self.epoch_rewards = [], []
        losses = self.epoch_losses
        for position in range(skip, len(groups)):
            if self._stopping():
                self._halt(epoch, position)
            group = groups[position]
            tick = time.perf_counter()
            step_loss, labelled, rewards = 0.0, 0, []
            self._inputs = 0
            for idx in group:
                items = [self.train_set[i] for i in idx]
                mine, counts = self.ranks.share(items)
                loss, counted, metrics = self._forward(mine, self.train_model)
                # What the loss is a mean over: labelled tokens, or DPO pairs.
                weight = (len(mine) if self.spec.dpo is not None else counted) if counts else 0
                total, summed, learned = self.ranks.sum(
                    weight, float(loss.detach()) * weight, counted if counts else 0
                )
                # Scaled so that the gradient DDP (or FSDP) averages over the ranks is the mean
                # over the whole batch, as one rank computes it (1 with one rank).
                (loss * (weight * self.ranks.world / max(total, 1e-12)) / len(group)).backward()
                step_loss += summed / max(total, 1e-12) / len(group)
                labelled += int(learned)
                rewards.append(metrics)
                self.samples_seen += sum(
                    len(i.parts) if isinstance(i, data.Packed) else 1 for i in items
                )
            self.progress.add_input_tokens(int(self.ranks.sum(self._inputs)[0]))
            if self.osft is not None:
                self.osft.project_gradients()
            grad_norm = clipping.clip(self.optimizer, t.max_grad_norm)
            self.optimizer.step()
            if self.osft is not None:
                self.osft.project_parameters()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.global_step += 1
            losses.append(step_loss)
            self.epoch_rewards += rewards
            elapsed = max(time.perf_counter() - tick, 1e-9)
            self.progress.log_dict(
                {
                    "loss": step_loss,
                    "lr": self.scheduler.get_last_lr()[0],
                    "tokens_per_second_per_gpu": labelled / elapsed,
                    **({"grad_norm": grad_norm} if grad_norm is not None else {}),
                    **_mean(rewards),
                },
                self.global_step,
            )
            # The epoch's last step is saved by its epoch checkpoint.
            if every and self.global_step % every == 0 and position + 1 < len(groups):
                self._save_step(epoch, position + 1)
        return losses

    def _stopping(self) -> bool:
        """A stop was asked for (SIGTERM), on any rank: the ranks stop at the same step."""
        return self.ranks.sum(1.0 if self.stop.requested else 0.0)[0] > 0

    def _halt(self, epoch: int, position: int) -> None:
        """SIGTERM: checkpoint here (unless the newest checkpoint is here already), stop."""
        if self.global_step > self.saved_step:
            self._save_step(epoch, position)
        if not self.saved_at:
            raise TrainingStopped(
                "stopped by SIGTERM before the first optimizer step; nothing to resume: "
                "submit the job again"
            )
        raise TrainingStopped(
            f"stopped by SIGTERM after optimizer step {self.global_step} of "
            f"{self.total_steps}; checkpoint saved: {self.saved_at} - resume with a new job "
            f"whose checkpoint_dir is {self.saved_at!r} (a restarted or retried train step "
            "continues from it by itself)"
        )

    def _forward(
        self, items: list[Any], model: Any = None
    ) -> tuple[torch.Tensor, int, dict[str, float]]:
        """One micro-batch: its loss, its labelled tokens, and (DPO) its reward metrics."""
        model = self.model if model is None else model
        # One rank: the loss is chunked over a large vocabulary (logits.py). Several: each
        # rank would decide by its own batch's shape, and a chunked rank's extra forward (the
        # check on its first chunked batch) would leave the others' collectives waiting; they
        # keep the whole logits until the decision is made together.
        chunk = logits.CHUNK_ELEMENTS if self.ranks.world == 1 else logits.NEVER
        if self.spec.dpo is None:
            batch = self._batch(items)
            labelled = int((batch["labels"][:, 1:] != data.IGNORE).sum())
            return logits.mean_nll(model, batch, chunk), labelled, {}
        chosen = self._batch([p.chosen for p in items])
        rejected = self._batch([p.rejected for p in items])
        pc, nc = logits.sequence_logps(model, chosen, chunk)
        pr, nr = logits.sequence_logps(model, rejected, chunk)
        with torch.no_grad(), self._reference() as ref:
            rc, _ = logits.sequence_logps(ref, chosen, chunk)
            rr, _ = logits.sequence_logps(ref, rejected, chunk)
        dpo = self.spec.dpo
        loss, metrics = preference.loss((pc, pr, nc, nr), (rc, rr), dpo.beta, dpo.loss_type)
        metrics["chosen_nll"] = float(-(pc.detach() / nc.clamp(min=1)).mean())
        return loss, int(nc.sum() + nr.sum()), metrics

    @contextlib.contextmanager
    def _reference(self) -> Iterator[Any]:
        if self.reference is not None:
            yield self.reference
        else:
            with self.model.disable_adapter():
                yield self.model

    @torch.no_grad()
    def _validate(self) -> tuple[float | None, float | None, dict[str, float]]:
        """(validation loss, perplexity, DPO reward metrics) over max_validation_steps batches.
        For DPO the loss is the DPO loss and the perplexity that of the chosen answers."""
        if not self.val_set:
            return None, None, {}
        t = self.spec.train
        self.model.eval()
        total, count, rewards = 0.0, 0, []
        for i in range(0, len(self.val_set), t.batch_size):
            if t.max_validation_steps is not None and i // t.batch_size >= t.max_validation_steps:
                break
            items = self.val_set[i : i + t.batch_size]
            loss, labelled, metrics = self._forward(items)
            weight = len(items) if self.spec.dpo is not None else labelled
            total += float(loss) * weight
            count += weight
            rewards.append(metrics)
        self.model.train()
        if not count:
            return None, None, {}
        val_loss = total / count
        summary = _mean(rewards)
        nll = summary.pop("chosen_nll", val_loss)
        return val_loss, math.exp(min(nll, 50.0)), summary

    def _save(self, epoch: int, train_loss: float | None) -> None:
        """Validate and write the epoch's checkpoint: on the main rank, once (under FSDP every
        rank takes part in the validation's forward passes and the gathering of the weights)."""
        validated = self._validate() if self.plan.fsdp else None
        whole = self._gather()
        if self.ranks.main:
            self._write_epoch(epoch, train_loss, validated, whole)
        self.ranks.barrier()

    def _gather(self) -> _Whole | None:
        """FSDP: the whole weights and optimizer state on the main rank (every rank calls
        this); None otherwise (the main rank's own copy is whole)."""
        if not self.plan.fsdp:
            return None
        main = self.ranks.main
        return _Whole(sharding.full_weights(self.model, main),
                      sharding.full_optimizer(self.optimizer, main))  # fmt: skip

    def _write_epoch(
        self,
        epoch: int,
        train_loss: float | None,
        validated: tuple[float | None, float | None, dict[str, float]] | None = None,
        whole: _Whole | None = None,
    ) -> None:
        val_loss, perplexity, val_rewards = validated if validated is not None else self._validate()
        train_rewards = _mean(self.epoch_rewards)
        train_rewards.pop("chosen_nll", None)
        metrics: dict[str, Any] = {
            "train_loss": train_loss,
            "validation_loss": val_loss,
            "perplexity": perplexity,
            "global_step": self.global_step,
            **{f"train_{k}": v for k, v in train_rewards.items()},
            **{f"validation_{k}": v for k, v in val_rewards.items()},
        }
        self.epoch_rewards, self.epoch_losses = [], []
        self.epochs.append({"epoch": epoch, **metrics})
        exporting = time.perf_counter()
        fields = {"format": "huggingface", **metrics}
        with epoch_writer(self.output.local, epoch, fields, self.spec.job_uuid) as tmp:
            self._write_weights(tmp, whole)
            # Continues at the next epoch's start; the generator is already there.
            self._write_state(tmp, epoch + 1, 0, self.generator.get_state(), whole)
        self.output.push(epoch_dir(epoch))
        self.saved_step, self.saved_at = (
            self.global_step,
            str(self.output.location.join(epoch_dir(epoch))),
        )
        self.phases.add("export_seconds", time.perf_counter() - exporting)
        self.progress.log_epoch(epoch, metrics)

    def _save_step(self, epoch: int, position: int) -> None:
        """A checkpoint after `position` optimizer steps of `epoch`: periodic or SIGTERM; on
        the main rank, once."""
        whole = self._gather()
        if self.ranks.main:
            self._write_step(epoch, position, whole)
        self.ranks.barrier()

    def _write_step(self, epoch: int, position: int, whole: _Whole | None = None) -> None:
        rel = step_dir(self.global_step)
        losses = self.epoch_losses
        metrics = {"epoch": epoch, "global_step": self.global_step, "format": "huggingface",
                   "train_loss": sum(losses) / len(losses) if losses else None}  # fmt: skip
        with checkpoint_writer(self.output.local, rel, metrics, self.spec.job_uuid) as tmp:
            self._write_weights(tmp, whole)
            self._write_state(tmp, epoch, position, self.epoch_start, whole)
        self.output.push(rel)
        self.saved_step, self.saved_at = self.global_step, str(self.output.location.join(rel))
        self.step_checkpoints = prune_step_checkpoints(
            self.output,
            [*self.step_checkpoints, self.global_step],
            self.spec.train.keep_step_checkpoints,
        )

    def _write_weights(self, folder: Path, whole: _Whole | None = None) -> None:
        # FSDP: the gathered weights into a whole copy on the CPU.
        model = self.model if whole is None else self._whole_model(whole.weights)
        if self.osft is not None:  # plain matrices, loadable anywhere
            state = self.osft.folded_state_dict(self.model)
            self.model.save_pretrained(folder / MERGED, state_dict=state)
            self.tokenizer.save_pretrained(folder / MERGED)
            return
        if self.spec.lora is not None:
            model.save_pretrained(folder / ADAPTER)  # PEFT: the adapter only
            merged = copy.deepcopy(model).merge_and_unload()
        else:
            merged = model
        merged.save_pretrained(folder / MERGED)
        self.tokenizer.save_pretrained(folder / MERGED)

    def _whole_model(self, weights: dict[str, torch.Tensor]) -> Any:
        """A CPU model built as the trained one (LoRA: with its adapter) holding `weights`:
        made on the first save, then reused (one whole copy on the main rank)."""
        if self._export is None:
            from transformers import AutoModelForCausalLM

            dtype = _DTYPES[self.spec.train.dtype]
            # Its initialisation (LoRA's) draws from torch's generator: on a forked one, so
            # that the training draws (dropout) stay those of an unsharded run, and of a
            # resumed one, which builds this copy at another step.
            with torch.random.fork_rng(devices=[]):
                base = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype)
                self._export = _with_lora(base, self.spec) if self.spec.lora else base
        self._export.load_state_dict(weights)
        return self._export

    def _write_state(
        self, folder: Path, epoch: int, position: int, generator: Any, whole: _Whole | None = None
    ) -> None:
        """What a resumed run needs beside the weights (core.resume.TrainingState); the same
        layout under DDP and FSDP (whole tensors), so either resumes the other's."""
        spec = self.spec
        state = TrainingState(
            engine="huggingface",
            algorithm=spec.algorithm,
            base_model=spec.model.path,
            job_uuid=spec.job_uuid,
            global_step=self.global_step,
            resume_epoch=epoch,
            position=position,
            steps_per_epoch=self.steps_per_epoch,
            train_rows=self.train_rows,
            samples_seen=self.samples_seen,
            spec=spec.model_dump(mode="json"),
        )
        tensors = {
            "optimizer": whole.optimizer if whole is not None else self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": generator,
            "rng": resuming.rng_state(),
            "epoch_losses": list(self.epoch_losses),
            "epoch_rewards": list(self.epoch_rewards),
            "epochs": list(self.epochs),
            "loss_history": self.progress.history,
            "history_stride": self.progress.stride,
        }
        if self.osft is not None:  # the factors: folding them back into matrices loses them
            tensors["osft"] = self.osft.factors()
        resuming.write_state(folder, state, tensors)


@dataclass(frozen=True)
class _Whole:
    """What FSDP's ranks gathered for a checkpoint: whole tensors, on the main rank's CPU."""

    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]


def _load_adapter(model: Any, adapter_dir: Path) -> None:
    """A saved PEFT adapter into the model built the same way (same modules, same order)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(adapter_dir / "adapter_model.safetensors")
    # PEFT annotates None but returns torch's load result (strict=False: base keys missing).
    result: Any = set_peft_model_state_dict(model, weights)  # type: ignore[func-returns-value]
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise ValueError(
            f"{adapter_dir} does not fit this model's LoRA layers "
            f"(unexpected: {result.unexpected_keys[:3]}, missing: {missing[:3]})"
        )


def _osft_modules(model: Any, requested: list[str]) -> list[str]:
    """OSFT's targets on a model whose weights were not inspected at submit: the named
    modules, or every attention and MLP projection (core.osft_targets)."""
    from ...core.osft_targets import resolve_osft

    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    return resolve_osft(requested, _matrix_paths(model), tied).modules


def output_checkpoints(output: Output) -> list[Any]:
    from ...boundary.job_outputs import JobOutputs

    return JobOutputs(output.location, output.s3).checkpoints()


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for r in rows for k in r}
    return {k: sum(r[k] for r in rows if k in r) / sum(1 for r in rows if k in r) for k in keys}


ENGINE = HuggingFaceEngine()
