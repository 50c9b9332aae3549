"""Report figures: training curves per model, ensemble MRR per member and the power sweep."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt

from kge.atomic import atomic_path


def training_curves(history_paths: list[str], out: str) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for path in history_paths:
        data = json.loads(Path(path).read_text())
        history, name = data["history"], Path(path).parent.name
        axes[0].plot([h["step"] for h in history], [h["loss"] for h in history], label=name)
        for ax, key in ((axes[1], "train_mrr"), (axes[2], "valid_mrr")):
            points = [(h["step"], h[key]) for h in history if key in h]
            if points:
                ax.plot(*zip(*points), marker="o", label=name)
    for ax, title in zip(axes, ("loss", "train MRR (sampled triples)", "validation MRR (sampled queries)")):
        ax.set_title(title)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def ensemble_figure(summary_path: str, out: str) -> None:
    summary = json.loads(Path(summary_path).read_text())
    members = sorted(summary["members"], key=lambda m: m["valid_mrr"])
    names = [m["model"] for m in members] + ["ensemble"]
    values = [m["valid_mrr"] for m in members] + [summary["ensemble_valid_mrr"]]
    curve = summary.get("greedy_curve") or []
    fig, axes = plt.subplots(1, 3 if curve else 2, figsize=(19 if curve else 13, 4))
    left, right = axes[0], axes[1]
    left.barh(names, values, color=["tab:blue"] * len(members) + ["tab:red"])
    left.set_xlabel("validation MRR")
    for exponent in sorted({g["weight_exponent"] for g in summary["grid"]}):
        sweep = sorted((g["power"], g["valid_mrr"]) for g in summary["grid"] if g["weight_exponent"] == exponent)
        label = "equal weights (RECIPE)" if exponent == 0 else f"weights (MRR/best)^{exponent:g}"
        right.plot(*zip(*sweep), marker="o", label=label)
    right.axvline(summary["power"], color="tab:red", linestyle="--",
                  label=f"chosen p = {summary['power']:g}, g = {summary['weight_exponent']:g}")
    right.set_xlabel("rank power p")
    right.set_ylabel("ensemble validation MRR")
    right.legend()
    if curve:  # MRR of the greedy prefixes: what each added model buys
        axes[2].plot([c["n"] for c in curve], [c["valid_mrr"] for c in curve], marker="o")
        for c in curve:
            axes[2].annotate(c["added"], (c["n"], c["valid_mrr"]), fontsize=7, rotation=30)
        axes[2].set_xlabel("models in the ensemble (greedy order)")
        axes[2].set_ylabel("ensemble validation MRR")
    fig.tight_layout()
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
