"""The rank-power ensemble under the filtered both-sided protocol, and the evaluation summary.

Each member's filtered top-K list of a query (known answers other than the target removed, the target
kept; written by `kge evaluate`) enters the RECIPE's rank-power mean (kge.ensemble.rank_power): entity e gets
s(e) = sum_m w_m * term_m(rank_m(e)), with an entity absent from member m's list contributing 0
(p < 0; the shifted equivalent for p > 0). The target's ensemble rank is then counted like a model's:
n_> and n_= over every candidate that is not a known answer, where every candidate listed by no member
shares the value of the unlisted (so a target listed by nobody ties with all of them: its realistic
rank is the middle of that block, never 1).

Tuning: the power and the member-weight exponent g (w_m = (MRR_m / best)^g) are chosen by the
both-directions realistic MRR on the tuning queries, and every figure in the summary is measured on
other queries: the test split when it has answers (tuning on all of validation), else the held-out
half of validation (tuning on the other half, split by a seeded permutation).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from kge.common import atomic
from kge.common.errors import KgeInputError
from kge.common.tables import markdown_table
from kge.ensemble.rank_power import mrr_weights, rank_power_scores, validation_halves
from kge.predict.evaluate_model import load_evaluation, relation_labels
from kge.predict.evaluation import rank_metrics, ranks_from_counts, split_metrics

DIRECTIONS = ("tail", "head")
SUMMARY_COLUMNS = (
    "both.realistic.mrr",
    "both.realistic.hits@1",
    "both.realistic.hits@3",
    "both.realistic.hits@10",
    "both.realistic.mr",
    "tail.realistic.mrr",
    "head.realistic.mrr",
    "both.optimistic.mrr",
    "both.pessimistic.mrr",
)


def ensemble_counts(
    lists, targets: np.ndarray, candidates: np.ndarray, power: float, weights=None
) -> tuple[np.ndarray, np.ndarray]:
    """(n_>, n_=) of each target under the rank-power ensemble of member lists.

    lists: M arrays (Q, K_m) of filtered top-K ids (-1 padded); targets (Q,); candidates (Q,): the
    number of candidates other than the target (|E| - 1 - known answers other than the target).
    """
    q, ids, s, _ = rank_power_scores(lists, power=power, weights=weights)
    w = np.ones(len(lists)) if weights is None else np.asarray(weights, dtype=np.float64)
    # The s of an entity listed by no member (rank_power_scores' representation, see kge.ensemble.rank_power).
    unlisted = 0.0 if power < 0 else -float(sum(w_m * (a.shape[1] + 1.0) ** power for w_m, a in zip(w, lists)))
    s, unlisted = np.round(s, 9), round(unlisted, 9)  # float summation order must not split ties
    Q = len(targets)
    is_target = ids == np.asarray(targets)[q]
    s_target = np.full(Q, unlisted)
    s_target[q[is_target]] = s[is_target]
    other = ~is_target
    greater = np.bincount(q[other & (s > s_target[q])], minlength=Q)
    ties = np.bincount(q[other & (s == s_target[q])], minlength=Q)
    listed = np.bincount(q[other], minlength=Q)
    unlisted_count = np.asarray(candidates) - listed
    if (unlisted_count < 0).any():
        raise ValueError("ensemble_counts: more listed candidates than candidates; are the lists filtered?")
    ties = ties + np.where(s_target == unlisted, unlisted_count, 0)
    greater = greater + np.where(s_target < unlisted, unlisted_count, 0)
    return greater.astype(np.int64), ties.astype(np.int64)


def _both_mrr(counts: dict[str, tuple[np.ndarray, np.ndarray]]) -> float:
    ranks = np.concatenate([ranks_from_counts(*counts[d])["realistic"] for d in DIRECTIONS])
    return rank_metrics(ranks)["mrr"]


def _subset(counts, index):
    return {d: (g[index], e[index]) for d, (g, e) in counts.items()}


def _flatten(metrics: dict) -> dict[str, float]:
    """split_metrics output -> {'both.realistic.mrr': ..., ...} for the summary columns."""
    out = {}
    for column in SUMMARY_COLUMNS:
        direction, policy, metric = column.split(".")
        out[column] = metrics[direction][policy][metric]
    return out


def run_evaluation_summary(
    evaluation_paths,
    out_dir,
    powers=(-2.0, -1.0, -0.5, -0.25, 0.5, 1.0),
    exponents=(0.0,),
    power: float = -0.5,
    tune: bool = True,
    seed: int = 0,
    root=None,
) -> dict:
    """Ensemble the members' filtered lists; write summary.json / summary.md (and ensemble.json).

    evaluation_paths: `kge evaluate` outputs (.npz with the .json beside). Rows: every member and the
    ensemble, measured on the report queries (see module docstring).
    """
    members = [load_evaluation(p) for p in evaluation_paths]
    if not members:
        raise KgeInputError("kge evaluate-ensemble: no member evaluations given")
    first = members[0][1]
    num_entities = members[0][0]["num_entities"]
    has_test = all("test_tail_targets" in arrays for _, arrays in members)
    tune_split = "valid"
    report_split = "test" if has_test else "valid"
    n_valid = len(first["valid_tail_targets"])
    if has_test:
        tune_index = np.arange(n_valid)
        report_index = np.arange(len(first["test_tail_targets"]))
        held_out = "test split (power and weights tuned on validation)"
    else:
        tune_index, report_index = validation_halves(n_valid, seed)
        held_out = (
            f"held-out half of validation ({len(report_index)} queries; power and weights tuned on the other "
            f"{len(tune_index)}, seed {seed}): there is no test split with answers"
        )
    for meta, arrays in members:
        for split in {tune_split, report_split}:
            if not np.array_equal(arrays[f"{split}_tail_targets"], first[f"{split}_tail_targets"]):
                raise KgeInputError(
                    f"{meta['model']}: its evaluation has other {split} queries than {members[0][0]['model']}"
                )

    def member_counts(arrays, split):
        return {d: (arrays[f"{split}_{d}_greater"], arrays[f"{split}_{d}_ties"]) for d in DIRECTIONS}

    def lists(split, d, index):
        return [arrays[f"{split}_{d}_top_ids"][index] for _, arrays in members]

    def ens_counts(split, index, p, w):
        out = {}
        for d in DIRECTIONS:
            targets = first[f"{split}_{d}_targets"][index]
            candidates = num_entities - 1 - first[f"{split}_{d}_filtered"][index]
            out[d] = ensemble_counts(lists(split, d, index), targets, candidates, p, w)
        return out

    # Sampled evaluations keep no top-K lists over all entities: their members are reported, not ensembled.
    sampled = any(meta.get("samples") for meta, _ in members)
    tune_mrr = [_both_mrr(_subset(member_counts(arrays, tune_split), tune_index)) for _, arrays in members]
    grid = {}
    for p in [] if sampled else sorted(set(powers) | {power}):
        for g in sorted(set(exponents) | {0.0}):
            grid[(float(p), float(g))] = _both_mrr(ens_counts(tune_split, tune_index, p, mrr_weights(tune_mrr, g)))
    order = list(grid)
    chosen = max(grid, key=lambda key: (grid[key], -order.index(key))) if tune and grid else (float(power), 0.0)
    weights = mrr_weights(tune_mrr, chosen[1])
    relations = first[f"{report_split}_relations"][report_index]
    labels = relation_labels(root) if root else None
    rows = []
    for (meta, arrays), w in zip(members, weights):
        metrics = split_metrics(_subset(member_counts(arrays, report_split), report_index), relations, labels)
        rows.append(
            {
                "model": meta["model"],
                "score_fn": meta["score_fn"],
                "distance": meta.get("distance"),
                "loss": meta["loss"],
                "dim": meta["dim"],
                "weight": float(w),
                **_flatten(metrics),
            }
        )
    ensemble_metrics, ensemble_rows = None, []
    if not sampled:
        ensemble_metrics = split_metrics(ens_counts(report_split, report_index, chosen[0], weights), relations, labels)
        ensemble_rows = [
            {
                "model": "ensemble",
                "score_fn": f"rank-power mean of {len(members)}",
                "distance": None,
                "loss": "",
                "dim": None,
                "weight": None,
                **_flatten(ensemble_metrics),
            }
        ]
    protocol = dict(members[0][0]["protocol"])
    protocol.pop("head_prediction", None)
    summary = {
        "protocol": protocol,
        "head_prediction": {meta["model"]: meta["protocol"]["head_prediction"] for meta, _ in members},
        "reported_on": held_out,
        "report_split": report_split,
        "report_queries": int(len(report_index)),
        "ensemble": {
            "power": chosen[0],
            "weight_exponent": chosen[1],
            "power_tuned": bool(tune),
            "tuning_grid": [{"power": p, "weight_exponent": g, "tuning_mrr": v} for (p, g), v in sorted(grid.items())],
            "list_width": {
                meta["model"]: int(arrays[f"{report_split}_tail_top_ids"].shape[1]) for meta, arrays in members
            },
            "metrics": ensemble_metrics,
        },
        "sampled": bool(sampled),
        "rows": rows + ensemble_rows,
    }
    out_dir = Path(out_dir)
    table = summary_markdown(summary)
    atomic.save_text(out_dir / "summary.md", table)
    atomic.save_json(out_dir / "summary.json", summary)  # last: its presence marks a complete summary
    print(table, file=sys.stderr)
    return summary


def summary_markdown(summary: dict) -> str:
    """The summary table: one row per model and the ensemble, filtered metrics on the report queries."""
    head = [
        "model",
        "scoring",
        "loss",
        "weight",
        "MRR",
        "Hits@1",
        "Hits@3",
        "Hits@10",
        "MR",
        "tail MRR",
        "head MRR",
        "MRR (optimistic)",
        "MRR (pessimistic)",
    ]
    keys = SUMMARY_COLUMNS
    lines = [
        f"Filtered link prediction, both directions, realistic ties (columns `both.realistic.*` unless named), "
        f"measured on the {summary['reported_on']}; {summary['report_queries']} triples x 2 directions.",
        "",
    ]
    members = [r for r in summary["rows"] if r["model"] != "ensemble"]
    rows = sorted(members, key=lambda r: -r["both.realistic.mrr"]) + [
        r for r in summary["rows"] if r["model"] == "ensemble"
    ]
    cells = []
    for row in rows:
        scoring = row["score_fn"] + (f" L{row['distance']}" if row.get("distance") else "")
        weight = "" if row["weight"] is None else f"{row['weight']:.3f}"
        values = [f"{row[k]:.2f}" if k.endswith(".mr") else f"{row[k]:.4f}" for k in keys]
        name = f"**{row['model']}**" if row["model"] == "ensemble" else row["model"]
        cells.append([name, scoring, row["loss"], weight] + values)
    lines += markdown_table(head, cells)
    ens = summary["ensemble"]
    if summary["sampled"]:
        lines[0] = (
            "SAMPLED evaluation (each target ranked among random candidates; not comparable with full ranking). "
            + lines[0]
        )
        return (
            "\n".join(lines + ["", "No ensemble: sampled evaluations keep no filtered top-K lists over all entities."])
            + "\n"
        )
    lines += [
        "",
        f"Ensemble: rank-power mean, p = {ens['power']:g}, member weights (MRR / best)^{ens['weight_exponent']:g} "
        f"({'tuned' if ens['power_tuned'] else 'fixed'} on the tuning queries); filtered top-{max(ens['list_width'].values())} lists.",
    ]
    return "\n".join(lines) + "\n"
