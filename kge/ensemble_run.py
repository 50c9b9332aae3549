"""Apply the rank-power ensemble to the pipeline's prediction files and write the summary table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kge import atomic
from kge.data.layout import open_dataset
from kge.ensemble import mrr, mrr_weights, rank_power_ensemble, tune_ensemble
from kge.ensemble_analysis import greedy_curve, leave_one_family_out
from kge.errors import KgeInputError
from kge.predict import SPLITS


def _load_member(path: Path, top_k: int) -> tuple[dict, dict]:
    if not path.exists():
        raise KgeInputError(f"{path}: missing predictions; run `kge predict` first")
    metrics_path = path.with_suffix(".json")
    if not metrics_path.exists():
        raise KgeInputError(f"{metrics_path}: missing metrics beside {path.name}")
    with np.load(path) as npz:
        arrays = {split: npz[f"{split}_ids"][:, :top_k] for split in SPLITS}
    return arrays, json.loads(metrics_path.read_text())


def run_ensemble(root, prediction_paths, out_dir, power: float = -0.5, top_k: int = 100, tune: bool = True,
                 powers=(-1.0, -0.5), weight_exponents=(0.0,), greedy_queries: int = 5000) -> dict:
    """Ensemble every listed model; writes ensemble.npz, summary.json, summary.md, summary.csv.

    With ``tune``, the rank power and the member-weight exponent (w_m = (MRR_m / best)^g; g = 0 is
    the RECIPE's unweighted formula) are chosen by validation MRR; otherwise ``power`` with g = 0.
    Also: the greedy curve (members added one at a time, best first; the order chosen on
    ``greedy_queries`` sampled validation queries, every MRR exact on all of them) and the ensemble
    without each scoring-function family.
    """
    ds = open_dataset(root, check=False)
    val_t = np.asarray(ds.val_t)
    members, per_split = [], {split: [] for split in SPLITS}
    for path in map(Path, prediction_paths):
        arrays, metrics = _load_member(path, top_k)
        metrics["valid_mrr"] = mrr(arrays["valid"][:, :10], val_t)  # recomputed: the file is the truth
        members.append(metrics)
        for split in SPLITS:
            per_split[split].append(arrays[split])
    member_mrr = [m["valid_mrr"] for m in members]
    sweep_powers = sorted(set(powers) | {power})
    exponents = sorted(set(weight_exponents) | {0.0})
    (best_power, best_exponent), sweep = tune_ensemble(per_split["valid"], val_t, member_mrr, sweep_powers, exponents)
    chosen, exponent = (best_power, best_exponent) if tune else (power, 0.0)
    weights = mrr_weights(member_mrr, exponent)
    for m, w in zip(members, weights):
        m["weight"] = float(w)
    top10 = {split: rank_power_ensemble(per_split[split], power=chosen, top=10, weights=weights) for split in SPLITS}
    ensemble_mrr = mrr(top10["valid"], val_t)
    best = max(members, key=lambda m: m["valid_mrr"])
    names = [m["model"] for m in members]
    curve = greedy_curve(per_split["valid"], val_t, power=chosen, weights=weights, names=names, selection_queries=greedy_queries)
    families = leave_one_family_out(per_split["valid"], val_t, [m["score_fn"] for m in members], power=chosen, weights=weights)
    summary = {
        "power": chosen,
        "power_tuned": bool(tune),
        "top_k": top_k,
        "weight_exponent": exponent,
        # The RECIPE formula (equal weights) at each power, and the full (power, exponent) grid.
        "power_sweep": {str(p): v for (p, g), v in sorted(sweep.items()) if g == 0.0},
        "recipe_valid_mrr": sweep[(chosen, 0.0)],
        "grid": [{"power": p, "weight_exponent": g, "valid_mrr": v} for (p, g), v in sorted(sweep.items())],
        "ensemble_valid_mrr": ensemble_mrr,
        "best_member": best["model"],
        "best_member_valid_mrr": best["valid_mrr"],
        "gain_over_best_member": ensemble_mrr - best["valid_mrr"],
        "num_models": len(members),
        "greedy_curve": curve,
        "leave_one_family_out": families,
        "members": members,
    }
    out_dir = Path(out_dir)
    atomic.save_npz(out_dir / "ensemble.npz", **{split: arr for split, arr in top10.items()})
    rows = sorted(members, key=lambda m: -m["valid_mrr"])
    lines = ["| model | scoring | loss | dim | steps | weight | valid MRR |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {m['model']} | {m['score_fn']}{'' if not m.get('distance') else ' L' + str(m['distance'])} | {m['loss']} | {m['dim']} | {m['steps']} | {m['weight']:.3f} | {m['valid_mrr']:.4f} |" for m in rows]
    lines.append(f"| ensemble, equal weights (RECIPE formula, p = {chosen:g}, K = {top_k}) | {len(members)} models | | | | 1 | {summary['recipe_valid_mrr']:.4f} |")
    lines.append(f"| **ensemble** (p = {chosen:g}, weights (MRR/best)^{exponent:g}, K = {top_k}) | {len(members)} models | | | | | **{ensemble_mrr:.4f}** |")
    lines += ["", "Greedy order (each row adds one model to those above):", "", "| n | added | ensemble valid MRR |", "|---|---|---|"]
    lines += [f"| {c['n']} | {c['added']} | {'-' if c['valid_mrr'] is None else format(c['valid_mrr'], '.4f')} |" for c in curve]
    lines += ["", "Without one scoring-function family:", "", "| family removed | models removed | valid MRR | change |", "|---|---|---|---|"]
    lines += [f"| {f['family']} | {f['removed']} | {f['valid_mrr']:.4f} | {f['change']:+.4f} |" for f in families]
    atomic.save_text(out_dir / "summary.md", "\n".join(lines) + "\n")
    csv = ["model,score_fn,loss,dim,steps,weight,valid_mrr"] + [f"{m['model']},{m['score_fn']},{m['loss']},{m['dim']},{m['steps']},{m['weight']:.6f},{m['valid_mrr']:.6f}" for m in rows]
    csv.append(f"ensemble,,,,,,{ensemble_mrr:.6f}")
    atomic.save_text(out_dir / "summary.csv", "\n".join(csv) + "\n")
    atomic.save_json(out_dir / "summary.json", summary)  # last: its presence marks a complete ensemble
    print("\n".join(lines))
    return summary
