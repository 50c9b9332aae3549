"""Report figures: training curves (all models, and one figure per model), ensemble MRR per member,
the power sweep and greedy curve, MRR by scoring function and loss, and wall time per rule."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np

from kge.common.atomic import atomic_path, save_text
from kge.common.tables import markdown_table
from kge.config import load_model_config

CURVE_TITLES = ("loss", "train MRR (sampled triples)", "validation MRR (sampled queries)")
LEGEND_MAX = 12  # beyond this many models a legend hides the curves


def _save(fig, out: str) -> None:
    fig.tight_layout()
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def _plot_history(axes, history: list[dict], name: str) -> None:
    axes[0].plot([h["step"] for h in history], [h["loss"] for h in history], label=name)
    for ax, key in ((axes[1], "train_mrr"), (axes[2], "valid_mrr")):
        points = [(h["step"], h[key]) for h in history if key in h]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3, label=name)


def training_curves(history_paths: list[str], out: str) -> None:
    """All models' loss, train and validation MRR over steps in one figure."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for path in history_paths:
        _plot_history(axes, json.loads(Path(path).read_text())["history"], Path(path).parent.name)
    for ax, title in zip(axes, CURVE_TITLES):
        ax.set_title(title)
        ax.set_xlabel("step")
    if len(history_paths) <= LEGEND_MAX:
        axes[0].legend(fontsize=7)
    else:
        axes[0].set_title(f"loss ({len(history_paths)} models; one figure per model in 'Training curves per model')")
    _save(fig, out)


def model_curves(history_paths: list[str], out_dir: str) -> None:
    """One figure per model, out_dir/<model>.png: loss, train and validation MRR over steps."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for path in history_paths:
        data = json.loads(Path(path).read_text())
        name, config = Path(path).parent.name, load_model_config(data["config"], where=str(path))
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
        _plot_history(axes, data["history"], name)
        for ax, title in zip(axes, CURVE_TITLES):
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("step")
        fig.suptitle(
            f"{name}: {config.score_fn} d={config.dim} {config.loss.type} lr={config.learning_rate:g}",
            fontsize=10,
        )
        _save(fig, str(out / f"{name}.png"))


def family_figure(summary_path: str, out: str) -> None:
    """Member validation MRR by scoring function and by loss: every member a dot, the mean a bar."""
    members = json.loads(Path(summary_path).read_text())["members"]
    groups: dict[tuple[str, str], list[float]] = {}
    for m in members:
        groups.setdefault((m["score_fn"], m["loss"]), []).append(m["valid_mrr"])
    keys = sorted(groups)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(keys) + 2), 4))
    colours = {"softmax": "tab:blue", "logsigmoid": "tab:orange"}
    for x, key in enumerate(keys):
        values = groups[key]
        ax.bar(x, sum(values) / len(values), color=colours.get(key[1], "tab:gray"), alpha=0.35)
        ax.scatter([x] * len(values), values, color=colours.get(key[1], "tab:gray"), s=12, zorder=3)
    ax.set_xticks(range(len(keys)), [f"{s}\n{loss}\n(n={len(groups[(s, loss)])})" for s, loss in keys], fontsize=8)
    ax.set_ylabel("member validation MRR")
    ax.set_title("validation MRR by scoring function and loss (bar: mean)")
    _save(fig, out)


def read_benchmarks(bench_dir: str) -> list[dict]:
    """Snakemake benchmark TSVs under bench_dir -> [{rule, job, seconds, max_rss_mb}] (the last repeat of each)."""
    rows = []
    for path in sorted(Path(bench_dir).rglob("*.tsv")):
        with path.open() as fh:
            records = list(csv.DictReader(fh, delimiter="\t"))
        if not records:
            continue
        record = records[-1]
        rel = path.relative_to(bench_dir)
        rule = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        rss = record.get("max_rss", "NA")
        rows.append(
            {
                "rule": rule,
                "job": rel.stem,
                "seconds": float(record["s"]),
                "max_rss_mb": float(rss) if re.fullmatch(r"[0-9.]+", rss or "") else None,
            }
        )
    return rows


def timing_figure(bench_dir: str, out: str, table_out: str) -> None:
    """Wall time per rule (sum, mean, max over its jobs) as a figure and a Markdown table."""
    rows = read_benchmarks(bench_dir)
    by_rule: dict[str, list[dict]] = {}
    for row in rows:
        by_rule.setdefault(row["rule"], []).append(row)
    total = {r: sum(x["seconds"] for x in jobs) for r, jobs in by_rule.items()}
    rules = sorted(by_rule, key=lambda r: -total[r])
    fig, axes = plt.subplots(1, 2, figsize=(13, 4))
    axes[0].barh(rules, [total[r] / 60 for r in rules])
    axes[0].set_xlabel("wall time, minutes (sum over the rule's jobs)")
    axes[1].boxplot([[x["seconds"] for x in by_rule[r]] for r in rules], orientation="horizontal", tick_labels=rules)
    axes[1].set_xscale("log")
    axes[1].set_xlabel("seconds per job")
    _save(fig, out)
    cells = []
    for r in rules:
        jobs = by_rule[r]
        slowest = max(jobs, key=lambda x: x["seconds"])
        rss = [x["max_rss_mb"] for x in jobs if x["max_rss_mb"] is not None]
        cells.append(
            [
                r,
                len(jobs),
                f"{total[r] / 60:.1f}",
                f"{total[r] / len(jobs):.1f}",
                f"{slowest['seconds']:.1f}",
                slowest["job"],
                f"{max(rss):.0f}" if rss else "",
            ]
        )
    lines = markdown_table(["rule", "jobs", "total min", "mean s", "max s", "slowest job", "max RSS MB"], cells)
    save_text(table_out, "\n".join(lines) + "\n")


def ensemble_figure(summary_path: str, out: str) -> None:
    summary = json.loads(Path(summary_path).read_text())
    # Members and ensemble on the held-out half of validation, which chose neither power nor weights.
    members = sorted(summary["members"], key=lambda m: m["heldout_mrr"])
    names = [m["model"] for m in members] + ["ensemble"]
    values = [m["heldout_mrr"] for m in members] + [summary["ensemble_heldout_mrr"]]
    curve = summary.get("greedy_curve") or []
    height = max(4.0, 0.16 * len(names))  # one readable bar per member
    fig, axes = plt.subplots(1, 3 if curve else 2, figsize=(19 if curve else 13, height))
    left, right = axes[0], axes[1]
    left.tick_params(axis="y", labelsize=7 if len(names) > 20 else 9)
    left.barh(names, values, color=["tab:blue"] * len(members) + ["tab:red"])
    left.set_xlabel("held-out validation MRR")
    for exponent in sorted({g["weight_exponent"] for g in summary["grid"]}):
        sweep = sorted((g["power"], g["tuning_mrr"]) for g in summary["grid"] if g["weight_exponent"] == exponent)
        label = "equal weights (RECIPE)" if exponent == 0 else f"weights (MRR/best)^{exponent:g}"
        right.plot(*zip(*sweep), marker="o", label=label)
    right.axvline(
        summary["power"],
        color="tab:red",
        linestyle="--",
        label=f"chosen p = {summary['power']:g}, g = {summary['weight_exponent']:g}",
    )
    right.set_xlabel("rank power p")
    right.set_ylabel("ensemble MRR, tuning half of validation")
    right.legend()
    if curve:  # MRR of the greedy prefixes: what each added model buys
        curve = [c for c in curve if c["valid_mrr"] is not None]  # large ensembles: exact at some sizes only
        axes[2].plot([c["n"] for c in curve], [c["valid_mrr"] for c in curve], marker="o")
        for c in curve if len(curve) <= 15 else curve[:5]:  # name the first additions only when many
            axes[2].annotate(c["added"], (c["n"], c["valid_mrr"]), fontsize=7, rotation=30)
        axes[2].set_xlabel("models in the ensemble (greedy order)")
        axes[2].set_ylabel("ensemble held-out validation MRR")
    _save(fig, out)


def plot_sweep_heat_map(
    name: str, rule: str, batches: list[int], lr_labels: list[str], mrr: dict, bands: dict, out: str
) -> None:
    """Validation MRR over batch size (rows) x base learning rate (columns); the stable band in bold.

    mrr: {(batch, base_lr): MRR}; bands: kge.techniques.studies.stable_band per batch; lr_labels: the columns' labels,
    in the order of the ascending base learning rates.
    """
    base_lrs = sorted({lr for _, lr in mrr})
    values = np.array([[mrr[(b, lr)] for lr in base_lrs] for b in batches])
    fig, ax = plt.subplots(figsize=(2.5 + 1.0 * len(base_lrs), 1.5 + 0.6 * len(batches)))
    image = ax.imshow(values, cmap="viridis", aspect="auto", origin="lower")
    for i, b in enumerate(batches):
        for j, lr in enumerate(base_lrs):
            inside = bands[b]["low"] <= lr <= bands[b]["high"]
            ax.text(
                j,
                i,
                f"{values[i, j]:.3f}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if values[i, j] < 0.6 * values.max() else "black",
                fontweight="bold" if inside else "normal",
            )
    ax.set_xticks(range(len(base_lrs)), lr_labels)
    ax.set_yticks(range(len(batches)), [str(b) for b in batches])
    ax.set_xlabel(f"base learning rate ({rule} scaling)")
    ax.set_ylabel("batch size")
    ax.set_title(f"{name}: validation MRR (bold: stable band)")
    fig.colorbar(image, ax=ax, label="validation MRR")
    _save(fig, out)
