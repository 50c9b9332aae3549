"""Technique studies: variants of a pipeline model trained side by side, and the batch x LR sweep.

A *study* (config ``techniques.studies.<name>``) takes one model of ``models`` as its base and
trains one model per variant, each the base's settings with the variant's overrides merged in;
its report sets every variant's validation MRR, parameters, time and final loss beside the base.
A *sweep* (``techniques.sweeps.<name>``) trains the base at every batch size x base learning rate,
the learning rate scaled with the batch by a rule (none, sqrt, linear) and the number of samples
held (steps x B_ref / B), with the negatives per positive unchanged; its report is a heat map of
validation MRR and the width of the stable learning-rate band.

Models of studies and sweeps are named ``<study>--<variant>`` and ``<sweep>--b<B>-lr<base lr>``,
so they train and predict through the pipeline's own rules, without joining the ensemble.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from kge.common.errors import KgeInputError
from kge.common.tables import markdown_table
from kge.config import MODEL_DEFAULTS, ModelConfig, deep_merge, load_model_config

SEPARATOR = "--"
# The exponent a of lr(B) = base_lr x (B / B_ref)^a.
SCALING_EXPONENTS = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}


def _base(kind: str, name: str, spec: dict, models: dict) -> dict:
    base = spec.get("base")
    if base not in models:
        raise KgeInputError(
            f"config key techniques.{kind}.{name}.base: '{base}' is not a model in 'models' ({', '.join(models)})"
        )
    return models[base]


def study_models(studies: dict | None, models: dict) -> dict[str, dict]:
    """Study variants as pipeline models: {"<study>--<variant>": settings} (settings unresolved).

    models: the pipeline's models, name -> settings (defaults merged in, not resolved). With
    ``settings`` in a study (overrides shared by all its variants, e.g. fewer steps) or
    ``retrain_base``, the base is trained again as ``<study>--base``; otherwise the pipeline's own
    base model is the baseline.
    """
    out = {}
    for name, spec in (studies or {}).items():
        base = deep_merge(_base("studies", name, spec, models), spec.get("settings") or {})
        if _retrains_base(spec):
            out[f"{name}{SEPARATOR}base"] = base
        for variant, overrides in (spec.get("variants") or {}).items():
            if variant == "base":
                raise KgeInputError(
                    f"config key techniques.studies.{name}.variants: 'base' is the study's own baseline; rename the variant"
                )
            out[f"{name}{SEPARATOR}{variant}"] = deep_merge(base, overrides or {})
    return out


def _retrains_base(spec: dict) -> bool:
    # Shared settings change the base; retrain_base trains it again beside its variants, so that
    # their times are measured under the same conditions.
    return bool(spec.get("settings") or spec.get("retrain_base"))


def study_members(name: str, spec: dict) -> tuple[str, list[str]]:
    """(baseline model, variant models) of one study, by pipeline model name."""
    baseline = f"{name}{SEPARATOR}base" if _retrains_base(spec) else spec["base"]
    return baseline, [f"{name}{SEPARATOR}{variant}" for variant in spec.get("variants") or {}]


def _lr_label(lr: float) -> str:
    return f"{lr:.6g}"


def sweep_grid(name: str, spec: dict, models: dict) -> list[dict]:
    """The sweep's points: [{"model", "batch_size", "base_lr", "learning_rate", "steps", "reference_batch"}], batch-major.

    learning_rate = base_lr x (B / reference_batch)^a for the rule's exponent a; steps = the base's
    steps x reference_batch / B (rounded, at least 1), so every point sees the same number of
    samples; validate_every and checkpoint_every shrink or grow alike.
    """
    base = _base("sweeps", name, spec, models)
    rule = spec.get("scaling", "sqrt")
    if rule not in SCALING_EXPONENTS:
        raise KgeInputError(
            f"config key techniques.sweeps.{name}.scaling: '{rule}' is not one of {', '.join(SCALING_EXPONENTS)}"
        )
    if (base.get("loss") or {}).get("in_batch_negatives", True):
        # In-batch tails would make each positive's negatives N + B - 1, changing with B.
        raise KgeInputError(
            f"config key techniques.sweeps.{name}.base: '{spec['base']}' scores in-batch tails as negatives, so "
            "the negatives per positive would change with the batch; set loss.in_batch_negatives: false on it"
        )
    base_batch, base_lr_setting = (
        int(base.get("batch_size", MODEL_DEFAULTS["batch_size"])),
        float(base.get("learning_rate", MODEL_DEFAULTS["learning_rate"])),
    )
    reference = int(spec.get("reference_batch") or base_batch)
    steps = int(base.get("steps", MODEL_DEFAULTS["steps"]))
    points = []
    for batch in spec["batch_sizes"]:
        for base_lr in spec["learning_rates"]:
            lr = float(base_lr) * (batch / reference) ** SCALING_EXPONENTS[rule]
            point_steps = max(1, round(steps * reference / batch))
            # The point that is the base model itself is not trained again.
            same = batch == base_batch and lr == base_lr_setting and point_steps == steps
            points.append(
                {
                    "model": spec["base"] if same else f"{name}{SEPARATOR}b{batch}-lr{_lr_label(base_lr)}",
                    "batch_size": int(batch),
                    "base_lr": float(base_lr),
                    "learning_rate": lr,
                    "steps": point_steps,
                    "reference_batch": reference,
                }
            )
    return points


def sweep_models(sweeps: dict | None, models: dict) -> dict[str, dict]:
    """Every sweep point as a pipeline model: {"<sweep>--b<B>-lr<base lr>": settings}."""
    out = {}
    for name, spec in (sweeps or {}).items():
        base = _base("sweeps", name, spec, models)
        for point in sweep_grid(name, spec, models):
            if point["model"] == spec["base"]:
                continue
            factor = point["steps"] / int(base.get("steps", MODEL_DEFAULTS["steps"]))
            settings = deep_merge(
                base,
                {"batch_size": point["batch_size"], "learning_rate": point["learning_rate"], "steps": point["steps"]},
            )
            for key in ("validate_every", "checkpoint_every"):
                if settings.get(key):
                    settings[key] = max(1, round(settings[key] * factor))
            out[point["model"]] = settings
    return out


# ----- reports ------------------------------------------------------------------------------


def _flatten(settings: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def setting_changes(base: dict, variant: dict) -> str:
    """The settings where ``variant`` differs from ``base``, as "key=value, ..." (both resolved configs)."""
    flat_base, flat_variant = _flatten(base), _flatten(variant)
    changed = [
        f"{key}={json.dumps(flat_variant[key])}"
        for key in sorted(flat_variant)
        if flat_base.get(key) != flat_variant[key]
    ]
    return ", ".join(changed) or "(none)"


def _final_loss(history: list[dict]) -> float | None:
    losses = [entry["loss"] for entry in history if "loss" in entry]
    return losses[-1] if losses else None


def _member(results: Path, model: str) -> dict:
    """One trained, scored model: its metrics, resolved config and final loss, read from the pipeline's files."""
    metrics = json.loads((results / "predictions" / f"{model}.json").read_text())
    history = results / "models" / model / "history.json"
    trained = json.loads(history.read_text())
    # Complete under this version's defaults: a model trained before a key existed shows no change in it.
    config = load_model_config(trained["config"], where=str(history))
    return {
        "model": model,
        "config": config,
        "valid_mrr": metrics["valid_mrr"],
        "parameters": metrics["parameters"],
        "train_seconds": metrics["train_seconds"],
        "steps": config.steps,
        "final_loss": _final_loss(trained["history"]),
        "stored_bytes_per_entity": _row_bytes(config),
    }


def _row_bytes(config: ModelConfig) -> float:
    """Bytes of one entity's stored embedding row in the storage dtype: its values (the active blocks
    of a sparse row) and their block indices; not its feature or optimizer state."""
    from kge.table.footprint import bytes_per_entity

    stored = bytes_per_entity(config.dim, config.dtype, sparsity=config.sparsity)
    return float(stored["values"] + stored["indices"])


def study_report(
    name: str, baseline: str, variants: list[str], results: str | Path, claim: str | None = None
) -> tuple[str, dict]:
    """Markdown table of a study's variants beside its baseline, and the same as data.

    Reads predictions/<model>.json (ogb's validation MRR, parameters, training seconds) and
    models/<model>/history.json (resolved config, loss history) under ``results``.
    """
    results = Path(results)
    base = _member(results, baseline)
    rows = []
    for model in [baseline] + list(variants):
        member = base if model == baseline else _member(results, model)
        change = member["valid_mrr"] - base["valid_mrr"]
        rows.append(
            {
                "model": model,
                "variant": model.split(SEPARATOR, 1)[1] if SEPARATOR in model and model != baseline else "base",
                "changes": "(baseline)"
                if model == baseline
                else setting_changes(base["config"].to_dict(), member["config"].to_dict()),
                "valid_mrr": member["valid_mrr"],
                "change": change,
                "relative_change": change / base["valid_mrr"] if base["valid_mrr"] else None,
                "parameters": member["parameters"],
                "stored_bytes_per_entity": member["stored_bytes_per_entity"],
                "train_seconds": member["train_seconds"],
                "steps": member["steps"],
                "steps_per_second": member["steps"] / member["train_seconds"] if member["train_seconds"] else None,
                "final_loss": member["final_loss"],
            }
        )
    lines = [
        f"Study `{name}`: baseline `{baseline}`; validation MRR by ogb's evaluator over all entities.",
        *([f"Claim: {claim}"] if claim else []),
        "",
    ]
    cells = []
    for r in rows:
        rel = (
            f" ({100 * r['relative_change']:+.1f}%)"
            if r["relative_change"] is not None and r["variant"] != "base"
            else ""
        )
        loss = f"{r['final_loss']:.4f}" if r["final_loss"] is not None else "-"
        rate = f"{r['steps_per_second']:.1f}" if r["steps_per_second"] else "-"
        cells.append(
            [
                r["variant"],
                r["changes"],
                f"{r['valid_mrr']:.4f}",
                f"{r['change']:+.4f}{rel}",
                f"{r['parameters']:,}",
                f"{r['stored_bytes_per_entity']:g}",
                f"{r['train_seconds']:.1f}",
                rate,
                loss,
            ]
        )
    columns = [
        "variant",
        "settings changed",
        "valid MRR",
        "change",
        "parameters",
        "row bytes",
        "train s",
        "steps/s",
        "final loss",
    ]
    lines += markdown_table(columns, cells)
    return "\n".join(lines) + "\n", {"study": name, "claim": claim, "baseline": baseline, "rows": rows}


def stable_band(base_lrs: list[float], mrrs: list[float], tolerance: float) -> dict:
    """The contiguous run of learning rates around the best whose MRR is >= (1 - tolerance) x best.

    base_lrs ascending. Returns {"best_lr", "best_mrr", "low", "high", "octaves"}: octaves =
    log2(high / low), the band's width (0 when only the best qualifies). A band that touches the
    end of the grid is a lower bound (flagged by "open_low"/"open_high").
    """
    best = max(range(len(mrrs)), key=lambda i: mrrs[i])
    threshold = (1.0 - tolerance) * mrrs[best]
    low = high = best
    while low > 0 and mrrs[low - 1] >= threshold:
        low -= 1
    while high < len(mrrs) - 1 and mrrs[high + 1] >= threshold:
        high += 1
    return {
        "best_lr": base_lrs[best],
        "best_mrr": mrrs[best],
        "low": base_lrs[low],
        "high": base_lrs[high],
        "octaves": math.log2(base_lrs[high] / base_lrs[low]),
        "open_low": low == 0 and len(mrrs) > 1,
        "open_high": high == len(mrrs) - 1 and len(mrrs) > 1,
    }


def sweep_report(
    name: str, spec: dict, grid: list[dict], results: str | Path, plot: str | Path | None = None
) -> tuple[str, dict]:
    """Heat map (optional PNG) and table of a sweep's validation MRR, with the stable band per batch.

    grid: sweep_grid's points. The band of each batch size is in base learning rate (the rule's
    unscaled value): the same rule makes the bands of all batch sizes line up. The common band is
    the base LRs stable at every batch size.
    """
    results = Path(results)
    tolerance = float(spec.get("tolerance", 0.1))
    batches = sorted({p["batch_size"] for p in grid})
    base_lrs = sorted({p["base_lr"] for p in grid})
    mrr = {}
    for p in grid:
        metrics = json.loads((results / "predictions" / f"{p['model']}.json").read_text())
        mrr[(p["batch_size"], p["base_lr"])] = metrics["valid_mrr"]
    bands = {b: stable_band(base_lrs, [mrr[(b, lr)] for lr in base_lrs], tolerance) for b in batches}
    stable_everywhere = [
        lr for lr in base_lrs if all(mrr[(b, lr)] >= (1 - tolerance) * bands[b]["best_mrr"] for b in batches)
    ]
    rule = spec.get("scaling", "sqrt")
    lines = [
        f"Sweep `{name}` of `{spec['base']}`: lr = base lr x (B / {grid[0]['reference_batch']})^{SCALING_EXPONENTS[rule]:g}"
        f" ({rule} scaling), steps x B_ref / B (equal samples), negatives per positive fixed. Validation MRR by ogb's evaluator.",
        *([f"Claim: {spec['claim']}"] if spec.get("claim") else []),
        "",
    ]
    cells = []
    for b in batches:
        band = bands[b]
        mrr_cells = [f"**{mrr[(b, lr)]:.4f}**" if lr == band["best_lr"] else f"{mrr[(b, lr)]:.4f}" for lr in base_lrs]
        edge = (
            ("<" if band["open_low"] else "")
            + _lr_label(band["low"])
            + " - "
            + _lr_label(band["high"])
            + (">" if band["open_high"] else "")
        )
        open_band = "+" if band["open_low"] or band["open_high"] else ""
        cells.append([b, *mrr_cells, edge, f"{band['octaves']:.1f}{open_band}"])
    columns = [
        "batch \\ base lr",
        *map(_lr_label, base_lrs),
        f"stable band (within {100 * tolerance:g}% of best)",
        "octaves",
    ]
    lines += markdown_table(columns, cells)
    common = (
        f"{_lr_label(min(stable_everywhere))} - {_lr_label(max(stable_everywhere))}" if stable_everywhere else "none"
    )
    lines += [
        "",
        f"Base learning rates stable at every batch size: {common}. "
        "A band reaching the end of the grid ('<' or '>', octaves '+') is a lower bound on its width.",
    ]
    data = {
        "sweep": name,
        "base": spec["base"],
        "scaling": rule,
        "tolerance": tolerance,
        "grid": grid,
        "valid_mrr": {f"{b}:{_lr_label(lr)}": mrr[(b, lr)] for b in batches for lr in base_lrs},
        "bands": {str(b): bands[b] for b in batches},
        "stable_at_every_batch": stable_everywhere,
    }
    if plot is not None:
        from kge.report.plots import plot_sweep_heat_map

        plot_sweep_heat_map(name, rule, batches, [_lr_label(lr) for lr in base_lrs], mrr, bands, plot)
    return "\n".join(lines) + "\n", data
