"""Apply the rank-power ensemble to the pipeline's prediction files and write the summary table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kge.common import atomic
from kge.common.errors import KgeInputError
from kge.common.tables import markdown_table
from kge.data.layout import SPLITS, open_dataset
from kge.ensemble.analysis import greedy_curve, leave_one_family_out
from kge.ensemble.rank_power import mrr_weights, rank_power_ensemble, tune_ensemble, validation_halves
from kge.predict.metrics import mrr


def _load_member(path: Path, top_k: int) -> tuple[dict, dict]:
    if not path.exists():
        raise KgeInputError(f"{path}: missing predictions; run `kge predict` first")
    metrics_path = path.with_suffix(".json")
    if not metrics_path.exists():
        raise KgeInputError(f"{metrics_path}: missing metrics beside {path.name}")
    with np.load(path) as npz:
        arrays = {split: npz[f"{split}_ids"][:, :top_k] for split in SPLITS}
    return arrays, json.loads(metrics_path.read_text())


def run_ensemble(
    root,
    prediction_paths,
    out_dir,
    power: float = -0.5,
    top_k: int = 100,
    tune: bool = True,
    powers=(-1.0, -0.5),
    weight_exponents=(0.0,),
    greedy_queries: int = 5000,
    seed: int = 0,
) -> dict:
    """Ensemble every listed model; writes ensemble.npz, summary.json, summary.md, summary.csv.

    The validation queries are split in two halves (``validation_halves``, seeded). With ``tune``, the
    rank power and the member-weight exponent (w_m = (MRR_m / best)^g on the tuning half; g = 0 is the
    RECIPE's unweighted formula) are chosen by the tuning half's MRR; otherwise ``power`` with g = 0.
    Every comparison in the summary (ensemble, best member, RECIPE formula, greedy curve, ensemble
    without each scoring family) is measured on the held-out half, which chose nothing. The greedy
    order is picked on ``greedy_queries`` sampled tuning queries. ``ensemble_valid_mrr`` (all of
    validation, half of it used for tuning) is kept for the OGB form, which asks for validation MRR.
    ensemble.npz holds each split's ensemble top-``top_k`` list (the submission takes its first 10).
    """
    ds = open_dataset(root, check=False)
    val_t = np.asarray(ds.val_t)
    tuning, held_out = validation_halves(len(val_t), seed)
    members, per_split = [], {split: [] for split in SPLITS}
    for path in map(Path, prediction_paths):
        arrays, metrics = _load_member(path, top_k)
        valid10 = arrays["valid"][:, :10]
        metrics["valid_mrr"] = mrr(valid10, val_t)  # recomputed: the file is the truth
        metrics["tuning_mrr"] = mrr(valid10[tuning], val_t[tuning])
        metrics["heldout_mrr"] = mrr(valid10[held_out], val_t[held_out])
        members.append(metrics)
        for split in SPLITS:
            per_split[split].append(arrays[split])
    tune_preds = [p[tuning] for p in per_split["valid"]]
    held_preds = [p[held_out] for p in per_split["valid"]]
    member_mrr = [m["tuning_mrr"] for m in members]
    sweep_powers = sorted(set(powers) | {power})
    exponents = sorted(set(weight_exponents) | {0.0})
    (best_power, best_exponent), sweep = tune_ensemble(tune_preds, val_t[tuning], member_mrr, sweep_powers, exponents)
    chosen, exponent = (best_power, best_exponent) if tune else (power, 0.0)
    weights = mrr_weights(member_mrr, exponent)
    for m, w in zip(members, weights):
        m["weight"] = float(w)
    width = max(10, int(top_k))  # the submission takes the first 10 of each list
    lists = {split: rank_power_ensemble(per_split[split], power=chosen, top=width, weights=weights) for split in SPLITS}
    ensemble_mrr = mrr(lists["valid"][:, :10], val_t)
    heldout_mrr = mrr(lists["valid"][held_out, :10], val_t[held_out])
    recipe_heldout = mrr(rank_power_ensemble(held_preds, power=chosen, top=10), val_t[held_out])
    best = max(members, key=lambda m: m["heldout_mrr"])
    names = [m["model"] for m in members]
    curve = greedy_curve(
        held_preds,
        val_t[held_out],
        power=chosen,
        weights=weights,
        names=names,
        selection_queries=greedy_queries,
        selection=(tune_preds, val_t[tuning]),
    )
    families = leave_one_family_out(
        held_preds, val_t[held_out], [m["score_fn"] for m in members], power=chosen, weights=weights
    )
    summary = {
        "power": chosen,
        "power_tuned": bool(tune),
        "top_k": top_k,
        "list_width": int(width),
        "weight_exponent": exponent,
        "halves": {"seed": seed, "tuning_queries": int(len(tuning)), "heldout_queries": int(len(held_out))},
        # The RECIPE formula (equal weights) at each power, and the full (power, exponent) grid: tuning half.
        "power_sweep": {str(p): v for (p, g), v in sorted(sweep.items()) if g == 0.0},
        "grid": [{"power": p, "weight_exponent": g, "tuning_mrr": v} for (p, g), v in sorted(sweep.items())],
        "recipe_heldout_mrr": recipe_heldout,
        "ensemble_heldout_mrr": heldout_mrr,
        "ensemble_valid_mrr": ensemble_mrr,
        "best_member": best["model"],
        "best_member_heldout_mrr": best["heldout_mrr"],
        "best_member_valid_mrr": best["valid_mrr"],
        "gain_over_best_member": heldout_mrr - best["heldout_mrr"],
        "num_models": len(members),
        "greedy_curve": curve,
        "leave_one_family_out": families,
        "members": members,
    }
    out_dir = Path(out_dir)
    atomic.save_npz(out_dir / "ensemble.npz", **lists)
    rows = sorted(members, key=lambda m: -m["heldout_mrr"])
    n_held = len(held_out)
    lines = [
        f"OGB protocol (raw tail ranks, top-10). Power and member weights chosen on half of the validation queries "
        f"({len(tuning)}); every column marked held-out is measured on the other {n_held}.",
        "",
    ]
    member_rows = [
        [
            m["model"],
            m["score_fn"] + ("" if not m.get("distance") else f" L{m['distance']}"),
            m["loss"],
            m["dim"],
            m["steps"],
            f"{m['weight']:.3f}",
            f"{m['heldout_mrr']:.4f}",
            f"{m['valid_mrr']:.4f}",
        ]
        for m in rows
    ]
    member_rows.append(
        [
            f"ensemble, equal weights (RECIPE formula, p = {chosen:g}, K = {top_k})",
            f"{len(members)} models",
            "",
            "",
            "",
            1,
            f"{recipe_heldout:.4f}",
            "",
        ]
    )
    member_rows.append(
        [
            f"**ensemble** (p = {chosen:g}, weights (MRR/best)^{exponent:g}, K = {top_k})",
            f"{len(members)} models",
            "",
            "",
            "",
            "",
            f"**{heldout_mrr:.4f}**",
            f"{ensemble_mrr:.4f} (half tuned on)",
        ]
    )
    lines += markdown_table(
        ["model", "scoring", "loss", "dim", "steps", "weight", "held-out MRR", "valid MRR (all)"], member_rows
    )
    lines += ["", "Greedy order (chosen on the tuning half; each row adds one model to those above):", ""]
    lines += markdown_table(
        ["n", "added", "ensemble held-out MRR"],
        [[c["n"], c["added"], "-" if c["valid_mrr"] is None else format(c["valid_mrr"], ".4f")] for c in curve],
    )
    lines += ["", "Without one scoring-function family (held-out half):", ""]
    lines += markdown_table(
        ["family removed", "models removed", "held-out MRR", "change"],
        [[f["family"], f["removed"], f"{f['valid_mrr']:.4f}", f"{f['change']:+.4f}"] for f in families],
    )
    atomic.save_text(out_dir / "summary.md", "\n".join(lines) + "\n")
    csv = ["model,score_fn,loss,dim,steps,weight,heldout_mrr,valid_mrr"] + [
        f"{m['model']},{m['score_fn']},{m['loss']},{m['dim']},{m['steps']},{m['weight']:.6f},{m['heldout_mrr']:.6f},{m['valid_mrr']:.6f}"
        for m in rows
    ]
    csv.append(f"ensemble,,,,,,{heldout_mrr:.6f},{ensemble_mrr:.6f}")
    atomic.save_text(out_dir / "summary.csv", "\n".join(csv) + "\n")
    atomic.save_json(out_dir / "summary.json", summary)  # last: its presence marks a complete ensemble
    print("\n".join(lines))
    return summary
