"""`kge quantise`: a trained model with its entity table (and features) in a low-precision format.

Simulated quantization: the entity rows are quantized to the chosen format and dequantized back
to float32, and the new model directory holds those float32 rows, so `kge predict` scores exactly
what the format can represent with its unchanged fp32 code; ``quantization.json`` reports the
bytes per entity the format itself would store, and the errors measured::

    OUT/entities/shard_XXXX.pt   dequantized rows (S, d) float32, one file per shard
    OUT/quantization.json        formats, scalings, bytes per entity, measured errors
    OUT/model.pt                 the source model.pt plus a "quantization" entry; written last

Features stay in the shard directory (float16, shared by every model), so they are quantized
when read: `kge predict` wraps its FeatureStore with ``quantized_features(store, saved)``, which
quantize-dequantizes each gathered block. That is the same as quantizing the whole feature
matrix once because row scales depend on the row alone, a tensor scale is computed here over
every feature shard and stored, and feature rounding is always to nearest (deterministic).
Table rounding may be stochastic (a seeded generator, shards in order).

Error measures (table and features): ``max_abs_error`` over all elements,
``mean_relative_error`` = mean of |error| / |x| over the nonzero elements, and
``mean_row_relative_error`` = mean over rows of ||error|| / ||x|| (rows with x = 0 skipped).
Padding rows of the last shards (fewer than the number of shards) are included.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from kge.common import atomic
from kge.common.errors import KgeInputError
from kge.common.tables import markdown_table
from kge.config import load_model_config
from kge.table.footprint import bytes_per_entity
from kge.table.quantize import (
    check_scaling,
    compute_scales,
    error_bound,
    format_spec,
    quantize_dequantize,
)
from kge.train import checkpoint

QUANTIZATION_NAME = "quantization.json"
FEATURE_BLOCK_ROWS = 65536
SOURCE_FEATURE_FORMAT = "float16"  # what `kge shard` writes


class ErrorStats:
    """Running error measures of approximations of x, fed block by block."""

    def __init__(self):
        self.max_abs = 0.0
        self.relative_sum, self.nonzero = 0.0, 0
        self.row_relative_sum, self.rows = 0.0, 0

    def update(self, x: torch.Tensor, approx: torch.Tensor) -> None:
        """x, approx: (n, d)."""
        x, error = x.double(), (approx.double() - x.double())
        if error.numel():
            self.max_abs = max(self.max_abs, float(error.abs().max()))
        nonzero = x != 0
        self.relative_sum += float((error.abs()[nonzero] / x.abs()[nonzero]).sum())
        self.nonzero += int(nonzero.sum())
        norms = x.norm(dim=1)
        real = norms > 0
        self.row_relative_sum += float((error.norm(dim=1)[real] / norms[real]).sum())
        self.rows += int(real.sum())

    def as_dict(self) -> dict:
        return {
            "max_abs_error": self.max_abs,
            "mean_relative_error": self.relative_sum / self.nonzero if self.nonzero else 0.0,
            "mean_row_relative_error": self.row_relative_sum / self.rows if self.rows else 0.0,
        }


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"kge quantise: {message}", file=sys.stderr, flush=True)


def _check_finite(rows: torch.Tensor, where: str) -> None:
    if not bool(torch.isfinite(rows).all()):
        raise KgeInputError(f"{where}: holds NaN or inf values; only finite rows can be quantized")


def _describe(fmt: str, scaling: str, rounding: str, dim: int, source_format: str, tensor_scale: float | None) -> dict:
    bound = error_bound(fmt, scaling)
    return {
        "format": fmt,
        "scaling": scaling,
        "rounding": rounding,
        "dim": dim,
        "bytes_per_entity": bytes_per_entity(dim, fmt, scaling=scaling)["total"],
        "source_format": source_format,
        "source_bytes_per_entity": dim * format_spec(source_format).bytes,
        "tensor_scale": tensor_scale,
        "error_bound": {"relative": bound.relative, "absolute_in_scale_units": bound.absolute},
    }


def _tensor_scale(blocks, fmt: str) -> float:
    """The fp32 scale of tensor scaling over all ``blocks`` (an iterable of (n, d) tensors)."""
    absmax = 0.0
    for block in blocks:
        if block.numel():
            absmax = max(absmax, float(block.float().abs().max()))
    return float(compute_scales(torch.tensor([absmax]), fmt, "tensor"))


def _feature_blocks(store):
    for start in range(0, store.num_rows, FEATURE_BLOCK_ROWS):
        yield store.block(start, min(start + FEATURE_BLOCK_ROWS, store.num_rows))


def quantize_model(
    model_path: str | Path,
    out_dir: str | Path,
    table_format: str,
    table_scaling: str,
    feature_format: str | None = None,
    feature_scaling: str | None = None,
    shard_dir: str | Path | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> dict:
    """Write OUT (see the module docstring) for ``model_path``; returns the quantization.json contents.

    table_format/table_scaling: the entity rows' format and scaling (kge.table.quantize.FORMATS,
    SCALINGS). feature_format/feature_scaling: the 768-d features' (None: left as stored,
    float16); they need ``shard_dir`` (the model's shard directory) to compute a tensor scale and
    measure the errors. generator: stochastic rounding of the table (None: nearest).
    """
    model_path, out_dir = Path(model_path), Path(out_dir)
    # Errors name the `kge quantise` flags; every argument is checked before anything is written.
    format_spec(table_format, "--format")
    check_scaling(table_format, table_scaling, "--scaling")
    if out_dir.resolve() == model_path.parent.resolve():
        raise KgeInputError(f"--out {out_dir}: must differ from the model's directory")
    saved = checkpoint.read_model(model_path)
    n_shards = saved["n_shards"]
    uses_features = load_model_config(saved["config"], where=str(model_path)).features.use
    feature_store = _open_features(
        model_path, saved, uses_features, feature_format, feature_scaling, shard_dir
    )  # checked before anything is written
    # A model.pt left by an earlier run must not mark a half-rewritten directory as complete.
    for stale in (checkpoint.MODEL_NAME, QUANTIZATION_NAME):
        (out_dir / stale).unlink(missing_ok=True)

    def read_shard(shard: int) -> torch.Tensor:
        return checkpoint.load_entity_rows(model_path, saved, [shard])

    first = read_shard(0)
    source_format, dim = str(first.dtype).removeprefix("torch."), int(first.shape[1])
    table_scale = None
    if table_scaling == "tensor":
        _say(progress, f"absolute maximum of the table over {n_shards} shards")
        table_scale = _tensor_scale((read_shard(i) for i in range(n_shards)), table_format)
    stats = ErrorStats()
    for shard in range(n_shards):
        rows = read_shard(shard).float()
        _check_finite(rows, str(model_path.parent / saved["entity_files"][shard]))
        approx = quantize_dequantize(rows, table_format, table_scaling, generator, table_scale)
        stats.update(rows, approx)
        checkpoint.save_entity_shards(out_dir, {shard: approx})
        _say(progress, f"table shard {shard + 1}/{n_shards} -> {table_format} ({table_scaling} scaling)")
    table = dict(
        _describe(
            table_format,
            table_scaling,
            "nearest" if generator is None else "stochastic",
            dim,
            source_format,
            table_scale,
        ),
        **stats.as_dict(),
    )

    features = _quantize_features(saved, uses_features, feature_store, feature_format, feature_scaling, progress)
    report = {
        "source": str(model_path),
        "simulated": True,  # the entity shards hold dequantized float32 rows
        "table": table,
        "features": features,
        "bytes_per_entity": table["bytes_per_entity"] + features["bytes_per_entity"],
        "source_bytes_per_entity": table["source_bytes_per_entity"] + features["source_bytes_per_entity"],
    }
    atomic.save_json(out_dir / QUANTIZATION_NAME, report)
    atomic.torch_save(out_dir / checkpoint.MODEL_NAME, dict(saved, quantization=report))  # last: marks completion
    _say(
        progress,
        f"{report['bytes_per_entity']} bytes per entity (from {report['source_bytes_per_entity']}) -> {out_dir}",
    )
    return report


def _open_features(model_path: Path, saved: dict, uses_features: bool, fmt: str | None, scaling: str | None, shard_dir):
    """The model's FeatureStore when its features are to be quantized, else None; checks the arguments."""
    if fmt is None:
        if scaling is not None:
            raise KgeInputError("--feature-scaling: needs --feature-format")
        return None
    format_spec(fmt, "--feature-format")
    if scaling is None:
        raise KgeInputError("--feature-format: needs --feature-scaling (none, tensor or row)")
    check_scaling(fmt, scaling, "--feature-scaling")
    if not uses_features:
        return None  # nothing to quantize: the model reads no features
    if shard_dir is None:
        raise KgeInputError("--feature-format: needs --shard-dir (the model's shards, where its features are)")
    from kge.bess.features import FeatureStore

    return FeatureStore(shard_dir, checkpoint.load_trained_partition(shard_dir, saved, model_path).n_shards)


def _quantize_features(
    saved: dict, uses_features: bool, store, fmt: str | None, scaling: str | None, progress: bool
) -> dict:
    """The "features" entry of quantization.json (tensor scale and errors measured over every shard)."""
    dim = int(saved["feature_dim"])
    if not uses_features:
        return {"used": False, "format": None, "scaling": None, "bytes_per_entity": 0, "source_bytes_per_entity": 0}
    if store is None:  # left as stored
        described = _describe(SOURCE_FEATURE_FORMAT, "none", "nearest", dim, SOURCE_FEATURE_FORMAT, None)
        return dict(
            described,
            used=True,
            quantized=False,
            max_abs_error=0.0,
            mean_relative_error=0.0,
            mean_row_relative_error=0.0,
        )
    tensor_scale = _tensor_scale(_feature_blocks(store), fmt) if scaling == "tensor" else None
    stats = ErrorStats()
    for block in _feature_blocks(store):
        stats.update(block, quantize_dequantize(block, fmt, scaling, None, tensor_scale))
    _say(progress, f"features ({store.num_rows} rows) -> {fmt} ({scaling} scaling)")
    return dict(
        _describe(fmt, scaling, "nearest", dim, SOURCE_FEATURE_FORMAT, tensor_scale),
        used=True,
        quantized=True,
        **stats.as_dict(),
    )


def quantization_summary(report: dict) -> dict:
    """The part of a quantization.json that `kge predict` copies into its metrics: formats and bytes."""
    return {
        "table": {key: report["table"][key] for key in ("format", "scaling", "rounding")},
        "features": {key: report["features"].get(key) for key in ("format", "scaling")},
        "bytes_per_entity": report["bytes_per_entity"],
        "source_bytes_per_entity": report["source_bytes_per_entity"],
    }


def quantize_report(baseline_paths: list[str], variant_paths: list[str]) -> tuple[str, list[dict]]:
    """Side-by-side table of quantized variants and their original models.

    baseline_paths: `kge predict` metrics of the original models (predictions/<model>.json);
    variant_paths: metrics of `<model>.<variant>` predictions of quantized copies. Returns the
    Markdown table and its rows: model, variant, formats, bytes per entity, validation MRR, and
    the change against the original (absolute and relative).
    """
    baselines = {}
    for path in baseline_paths:
        metrics = json.loads(Path(path).read_text())
        baselines[metrics["model"]] = metrics
    rows = []
    for path in variant_paths:
        metrics = json.loads(Path(path).read_text())
        model, _, variant = metrics["model"].rpartition(".")
        if model not in baselines:
            raise KgeInputError(f"{path}: no original-model metrics for '{model}' among the baselines")
        base, quant = baselines[model], metrics["quantization"]
        rows.append(
            {
                "model": model,
                "variant": variant,
                "table": f"{quant['table']['format']} / {quant['table']['scaling']}",
                "features": f"{quant['features']['format']} / {quant['features']['scaling']}"
                if quant["features"]["format"]
                else "as stored",
                "bytes_per_entity": quant["bytes_per_entity"],
                "source_bytes_per_entity": quant["source_bytes_per_entity"],
                "valid_mrr": metrics["valid_mrr"],
                "original_valid_mrr": base["valid_mrr"],
                "change": metrics["valid_mrr"] - base["valid_mrr"],
                "relative_change": (metrics["valid_mrr"] - base["valid_mrr"]) / base["valid_mrr"]
                if base["valid_mrr"]
                else None,
            }
        )
    rows.sort(key=lambda r: (r["model"], -r["bytes_per_entity"]))
    cells = []
    for r in rows:
        rel = f" ({100 * r['relative_change']:+.2f}%)" if r["relative_change"] is not None else ""
        cells.append(
            [
                r["model"],
                r["variant"],
                r["table"],
                r["features"],
                f"{r['bytes_per_entity']} (from {r['source_bytes_per_entity']})",
                f"{r['valid_mrr']:.4f}",
                f"{r['original_valid_mrr']:.4f}",
                f"{r['change']:+.4f}{rel}",
            ]
        )
    columns = [
        "model",
        "variant",
        "table format / scaling",
        "features",
        "bytes per entity",
        "valid MRR",
        "original",
        "change",
    ]
    lines = markdown_table(columns, cells)
    return "\n".join(lines) + "\n", rows
