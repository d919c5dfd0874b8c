#!/usr/bin/env python3
"""Turn bench/results/*.json into bench/results/summary.md and PNG plots.

python bench/report.py
"""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from common import RESULTS


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def fmt(s: dict, scale: float = 1.0, unit: str = "s") -> str:
    return (f"{s['median'] * scale:.3g} {unit} "
            f"({s['min'] * scale:.3g}-{s['max'] * scale:.3g}, n={s['n']})")  # fmt: skip


def _ratio(e: dict) -> str:
    """Paired ratios (runs back to back) with their spread; older results had one ratio of
    medians and a met flag."""
    if "paired_ratios" in e:
        return f"{fmt(e['ratio_ours_over_torchtune'], unit='')}; {e['verdict']}"
    return f"{e['ratio_ours_over_torchtune']} (ratio of medians, not paired)"


def _per_repeat(size: dict) -> str:
    """The fixed cost of each repeat (its server run minus its own warm call, back to back)."""
    if "fixed_cost_per_repeat" not in size:
        return ""
    return f" (per repeat: {fmt(size['fixed_cost_per_repeat'])})"


def main() -> None:
    rows, header = [], None
    if o := load("overhead"):
        header = header or o
        names = list(o["sizes"])
        for name, v in o["sizes"].items():
            rows.append(
                (
                    f"overhead, {name} job ({v['steps']} steps): server+KFP / direct warm / "
                    "direct cold",
                    f"{fmt(v['server'])} / {fmt(v['direct_warm'])} / {fmt(v['direct_cold'])}",
                )
            )
            rows.append((f"overhead, {name} job: ratio server/direct-warm, fixed cost",
                         f"{v['ratio_server_over_direct_warm']}x, "
                         f"{v['fixed_cost_seconds']:.2f} s{_per_repeat(v)}"))  # fmt: skip
            before = (o.get("baseline") or {}).get("sizes", {}).get(name)
            if before:  # --baseline: another checkout measured alternately in the same run
                rows.append((f"overhead, {name} job, before ({o['baseline']['checkout'][:7]}): "
                             "server+KFP / direct warm; fixed cost",
                             f"{fmt(before['server'])} / {fmt(before['direct_warm'])}; "
                             f"{before['fixed_cost_seconds']:.2f} s"
                             f"{_per_repeat(before)}"))  # fmt: skip
            if "timeline" in v:
                rows.append((f"overhead, {name} job: the server run's time line (medians)",
                             "; ".join(f"{seg} {t['median']:.2f} s"
                                       for seg, t in v["timeline"].items())))  # fmt: skip
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
        kinds = ["server", "direct_warm", "direct_cold"]
        for i, kind in enumerate(kinds):
            ax.bar(
                [x + i * 0.27 for x in range(len(names))],
                [o["sizes"][n][kind]["median"] for n in names],
                width=0.27,
                label=kind,
            )
        ax.set_xticks([x + 0.27 for x in range(len(names))], names)
        ax.set(ylabel="seconds (median)", title="Same fine-tune: server + KFP vs direct call")
        ax.legend()
        fig.tight_layout()
        fig.savefig(RESULTS / "overhead.png")
    if g := load("engines"):
        header = header or g
        rows.append(("Hugging Face engine vs torchtune engine, same Llama job: label tokens/s",
                      f"{fmt(g['huggingface_tokens_per_second'], unit='tok/s')} / "
                      f"{fmt(g['torchtune_tokens_per_second'], unit='tok/s')}"))  # fmt: skip
        rows.append(("HF / torchtune engine: paired ratios (target >= 0.90)",
                     f"{fmt(g['ratio_hf_over_torchtune'], unit='')}; {g['verdict']}"))  # fmt: skip
        rows.append(("HF / torchtune engine: peak RSS, final loss",
                     f"{fmt(g['huggingface_peak_rss_mb'], unit='MB')} / "
                     f"{fmt(g['torchtune_peak_rss_mb'], unit='MB')}; "
                     f"{g['huggingface_final_loss']['median']} / "
                     f"{g['torchtune_final_loss']['median']}"))  # fmt: skip
    if z := load("sharding"):
        header = header or z
        st = z["strategies"]
        for algo in ("full", "lora"):
            ddp, fsdp = st[f"{algo}-ddp"], st[f"{algo}-fsdp"]
            rows.append((f"HF engine, 2 CPU ranks, {algo}: DDP / FSDP label tokens/s "
                         "(parameter bytes per rank)",
                         f"{fmt(ddp['trained_tokens_per_second'], unit='tok/s')} "
                         f"({ddp['parameter_bytes_per_rank'][0]:,}) / "
                         f"{fmt(fsdp['trained_tokens_per_second'], unit='tok/s')} "
                         f"({max(fsdp['parameter_bytes_per_rank']):,}); FSDP / DDP "
                         f"{fmt(z[f'{algo}_fsdp_over_ddp'], unit='')}"))  # fmt: skip
    if m := load("loss_memory"):  # its own model and batch: 128k vocabulary, 2 x 1024 tokens
        v, r = m["variants"], m["step_time_ratio"]
        rows.append((f"chunked vs whole-logits loss, vocab {m['model']['vocab']}, "
                     f"{m['batch_size']} x {m['max_seq_len']} tokens: peak above start (SFT, DPO)",
                     f"{v['sft/chunked']['peak_above_start_mb']:.0f} / "
                     f"{v['sft/whole']['peak_above_start_mb']:.0f} MB, "
                     f"{v['dpo/chunked']['peak_above_start_mb']:.0f} / "
                     f"{v['dpo/whole']['peak_above_start_mb']:.0f} MB; step time "
                     f"x{r['sft']} / x{r['dpo']}"))  # fmt: skip
    if h := load("intree_hf"):  # run outside CI, in a scratch environment (see its docstring)
        for name, v in h["runs"].items():
            rows.append((f"{name}, same {h['steps']}-step LoRA job: training call / process, "
                         "peak RSS",
                         f"{fmt(v['train_seconds'])} / {fmt(v['process_seconds'])}, "
                         f"{fmt(v['peak_rss_mb'], unit='MB')}"))  # fmt: skip
    if e := load("efficiency"):
        header = header or e
        rows.append(("train step vs torchtune recipe: label tokens/s (ours / torchtune)",
                     f"{fmt(e['ours_tokens_per_second'], unit='tok/s')} / "
                     f"{fmt(e['torchtune_tokens_per_second'], unit='tok/s')}"))  # fmt: skip
        rows.append(("train step vs torchtune recipe: paired ratios (target >= 0.95)", _ratio(e)))
    if d := load("data_scale"):
        header = header or d
        sizes = list(d["sizes"])
        for n, v in d["sizes"].items():
            rows.append((f"data scale, {int(n):,} rows ({v['file_mb']} MB): submit latency, "
                         "server RSS / peak",
                         f"{fmt(v['submit_seconds'], 1000, 'ms')}, {v['server_rss_mb']} / "
                         f"{v['server_peak_rss_mb']} MB"))  # fmt: skip
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
        ax.plot([int(n) for n in sizes],
                [d["sizes"][n]["submit_seconds"]["median"] * 1000 for n in sizes], marker="o",
                label="submit latency (ms)")  # fmt: skip
        ax.plot([int(n) for n in sizes], [d["sizes"][n]["server_peak_rss_mb"] for n in sizes],
                marker="s", label="server peak RSS (MB)")  # fmt: skip
        ax.set(xscale="log", xlabel="dataset rows", title="Submit cost vs dataset size")
        ax.legend()
        fig.tight_layout()
        fig.savefig(RESULTS / "data_scale.png")
    if t := load("tracking"):
        rows.append(
            (
                "status latency while 2 jobs train: p50 / p99 / max",
                f"{t['status_p50_ms']} / {t['status_p99_ms']} / {t['status_max_ms']} ms",
            )
        )
        for c in t["cancel"]:
            rows.append(
                (
                    "cancel: call returns / last process gone",
                    f"{c['cancel_call_ms']} / {c['to_last_process_gone_ms']} ms",
                )
            )
    if i := load("intree"):
        for k, v in i["runs"].items():
            rows.append((f"{k}, same {v['steps']}-step job: wall / setup+train, label tok/s, "
                         "peak RSS, final loss",
                         f"{fmt(v['wall_seconds'])} / {fmt(v['train_seconds'])}, "
                         f"{v['tokens_per_second']:.0f}, {v['peak_rss_mb']} MB, "
                         f"{v['final_loss']}"))  # fmt: skip
    if s := load("stages"):
        for v, a in s["variants"].items():
            spans = "; ".join(f"{n} {x['median']:.2f} s" for n, x in a["stage_span_seconds"].items()
                              if n != "status sees the end")  # fmt: skip
            peaks = ", ".join(f"{n} {x['median']:.0f}" for n, x in a["peak_rss_mb"].items())
            rows.append((f"stages, demo job {v} ({a['label']}): submit -> completed; each "
                         "stage's span; peak RSS MB per step",
                         f"{fmt(a['wall_seconds'])}; {spans}; {peaks}"))  # fmt: skip
        adds = "; ".join(f"{n} {fmt(x)}" for n, x in s["adds_seconds"].items())
        rows.append(("stages: what each addition adds (paired per repeat); MLflow server "
                     "start-up", f"{adds}; {fmt(s['mlflow_server_startup_seconds'])}"))  # fmt: skip
    if f := load("forgetting"):
        level = f["matched_B_loss"]
        rows.append((f"forgetting (tiny SmolLM2-style model, {f['seeds']} seeds): task A "
                     "held-out loss before task B; the B loss the methods are compared at",
                     f"{f['A_before']['mean']:.3f}; B loss level compared: {level}"))  # fmt: skip
        for name, m in f["methods"].items():
            c, matched = m["reference"], m["matched"]
            at = f"{matched['mean']:+.3f} ± {matched['sd']:.3f}"
            rows.append((f"forgetting, {name}: A loss increase at B loss {level} (the grid's "
                         "frontier; mean ± sd over seeds); reference lr: A after, B loss",
                         f"{at}; lr {c['lr']:g}: {c['A_after']['mean']:.3f}, "
                         f"{c['B_after']['mean']:.3f}"))  # fmt: skip
    lines = []
    if header:
        lines.append(f"{header['machine']}; Python {header['python']}; " + ", ".join(
            f"{k} {v}" for k, v in header["versions"].items()) + f"; model {header['model']}, "
            f"batch {header['batch_size']}, max_seq_len {header['max_seq_len']}, "
            f"{header['dtype']}. Figures: median (min-max, n repeats).\n")  # fmt: skip
    lines += ["| measure | result |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
