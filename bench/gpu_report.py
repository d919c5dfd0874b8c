"""The figures of bench/gpu_train.py: MFU, the results file's check, the markdown table."""

from __future__ import annotations

from gpu_configs import FORBIDDEN, PEAK_FLOPS, PUBLISHED

# What every measured row of the JSON holds (validate checks them).
ROW_KEYS = ("name", "model", "algorithm", "engine", "packed", "batch_size", "max_seq_len",
            "activation_checkpointing", "steps_measured", "tokens_per_second",
            "label_tokens_per_second", "train_peak_gib", "mfu", "parameters", "losses",
            "imported")  # fmt: skip


def mfu(row: dict, peak: float | None) -> float | None:
    if not peak or not row.get("tokens_per_second"):
        return None
    k = 4 if row["algorithm"] == "lora" else 6
    return round(k * row["parameters"] * row["tokens_per_second"] / peak, 4)


def peak_flops(gpu: str | None, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    return next((f for n, f in PEAK_FLOPS.items() if gpu and n in gpu), None)


def validate(results: dict) -> list[str]:
    """What is wrong with a results file: a missing or failed row, a field missing, a figure
    that is not a positive number, a forbidden import. Empty: it is sound."""
    problems = []
    rows = results.get("runs", [])
    if not rows:
        problems.append("no runs")
    if len(rows) != results.get("planned"):
        problems.append(f"{len(rows)} rows for {results.get('planned')} planned runs")
    for r in rows:
        name = r.get("name", "?")
        if r.get("error"):
            problems.append(f"{name}: {r['error']}")
            continue
        missing = [k for k in ROW_KEYS if k not in r]
        if missing:
            problems.append(f"{name}: missing {missing}")
            continue
        for key in ("tokens_per_second", "label_tokens_per_second", "parameters"):
            if not isinstance(r[key], int | float) or not r[key] > 0:
                problems.append(f"{name}: {key} is {r[key]!r}, not a positive number")
        if len(r["losses"]) != results["warmup"] + results["steps"]:
            problems.append(f"{name}: {len(r['losses'])} losses for "
                            f"{results['warmup'] + results['steps']} steps")  # fmt: skip
        if not all(isinstance(v, float) and v == v and v > 0 for v in r["losses"]):
            problems.append(f"{name}: a loss is not a positive number: {r['losses']}")
        bad = [d for d in r["imported"] if d.replace("-", "_") in FORBIDDEN]
        if bad:
            problems.append(f"{name}: the training step imported {bad}")
        if results["device"] == "cuda" and not r.get("train_peak_gib"):
            problems.append(f"{name}: no peak GPU memory")
    return problems


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"# GPU training benchmark ({results['date']})", "",
        f"{m.get('gpu') or 'no GPU'}; {m['platform']}; Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in results["versions"].items() if v)
        + f". bf16, max_seq_len {results['max_seq_len']}, {results['warmup']} warm-up + "
        f"{results['steps']} measured steps per run. MFU = k x N x tokens/s / "
        + (f"{results['peak_flops'] / 1e12:.0f} TFLOP/s" if results["peak_flops"]
           else "the GPU's dense bf16 peak") + " (k = 6 full, 4 LoRA; attention "
        "not counted). Published: torchtune's README (other GPUs, torch.compile on): a "
        "reference, not a target.", "",
        "| model | algorithm | packed | engine | batch | tokens/s | label tok/s | peak GiB "
        "| MFU | torchtune published | ours / published |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in results["runs"]:
        head = f"| {r['model']} | {r['algorithm']} | {'yes' if r['packed'] else 'no'} | " \
               f"{r['engine']} | {r['batch_size']} |"  # fmt: skip
        if r.get("error") or r.get("skipped"):
            lines.append(f"{head} {r.get('error') or r.get('skipped')} | | | | | |")
            continue
        # (a scaled-down dry run compares with nothing)
        pub = (
            None if results["dry_run"] else PUBLISHED.get((r["model"], r["algorithm"], r["packed"]))
        )
        ref = f"{pub[0]:,.0f} tok/s" + (f", {pub[1]} GiB" if pub[1] else "") + f" ({pub[2]})" \
            if pub else ""  # fmt: skip
        ratio = f"{r['tokens_per_second'] / pub[0]:.2f}" if pub else ""
        peak = r["train_peak_gib"] if r["train_peak_gib"] is not None else "-"
        share = r["mfu"] if r["mfu"] is not None else "-"
        lines.append(f"{head} {r['tokens_per_second']:,.0f} | "
                     f"{r['label_tokens_per_second']:,.0f} | {peak} | {share} | {ref} | "
                     f"{ratio} |")  # fmt: skip
    pairs = engine_pairs(results["runs"])
    if pairs:
        lines += ["", "Hugging Face engine / torchtune engine on the same job (target: tokens/s "
                  "ratio >= 1, at worst 0.90; peak memory lower):", "",
                  "| job | tokens/s ratio | peak GiB HF / torchtune |",
                  "|---|---|---|"]  # fmt: skip
        for job, ratio, mem in pairs:
            lines.append(f"| {job} | {ratio:.3f} | {mem} |")
    return "\n".join(lines) + "\n"


def engine_pairs(rows: list[dict]) -> list[tuple[str, float, str]]:
    done = {(r["model"], r["algorithm"], r["packed"], r["engine"]): r for r in rows
            if not r.get("error") and not r.get("skipped")}  # fmt: skip
    out = []
    for (model, algo, packed, engine), hf in done.items():
        tt = done.get((model, algo, packed, "torchtune"))
        if engine != "huggingface" or tt is None:
            continue
        mem = f"{hf['train_peak_gib']} / {tt['train_peak_gib']}"
        job = f"{model} {algo} {'packed' if packed else 'unpacked'}"
        out.append((job, hf["tokens_per_second"] / tt["tokens_per_second"], mem))
    return out
