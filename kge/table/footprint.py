"""Bytes one entity stores: the one count behind every "bytes per entity" kge reports.

Training (history and model.pt), the technique studies (row bytes), `kge quantise` (the format's
bytes) and the storage table in kge/table/storage.py all read ``bytes_per_entity``.
"""

from __future__ import annotations

from kge.common.errors import KgeInputError
from kge.config import SparsityConfig
from kge.table.quantize import check_scaling, format_spec
from kge.table.storage import OPTIMIZERS, STORAGE_DTYPES

SCALE_BYTES = 4  # one fp32 scale per row with ``row`` scaling (a ``tensor`` scale is per table, not per row)


def bytes_per_entity(
    dim: int,
    storage: str = "float32",
    *,
    scaling: str = "none",
    sparsity: SparsityConfig | None = None,
    optimizer: str | None = None,
    feature_dim: int = 0,
    feature_format: str = "float16",
    feature_scaling: str = "none",
) -> dict:
    """{"values", "indices", "scale", "m", "v", "feature", "total"}: bytes of one entity row (ints).

    values: the row's stored numbers (``dim``; k x block of a block-sparse row, ``sparsity`` being
    the config's ``sparsity`` section, ``ModelConfig.sparsity``) x the width of ``storage`` (float32, bfloat16, float16, an
    FP8 format or int8); indices: one per active block of a sparse row (uint8 while n_blocks <= 256,
    else int16), 0 dense; scale: 4 with ``row`` scaling; m and v: Adam's two slots (v or sqrt v) at
    the storage width over the stored values, for ``optimizer`` "adam" (None or "sgd": 0; only
    float32/bfloat16/float16 storage trains); feature: ``feature_dim`` values of ``feature_format``
    plus 4 with ``feature_scaling`` row.
    """
    spec = format_spec(storage, "storage")
    check_scaling(storage, scaling)
    if optimizer is not None and optimizer not in OPTIMIZERS:
        raise KgeInputError(f"optimizer: expected one of {sorted(OPTIMIZERS)} or none, got {optimizer!r}")
    if optimizer is not None and storage not in STORAGE_DTYPES:
        raise KgeInputError(f"storage: a trained table is stored as one of {sorted(STORAGE_DTYPES)}, got {storage!r}")
    if int(dim) < 0 or int(feature_dim) < 0:
        raise KgeInputError(f"dim and feature_dim must be >= 0, got dim={dim}, feature_dim={feature_dim}")
    values, indices = int(dim), 0
    if sparsity is not None and sparsity.enabled:
        n_blocks, active, _ = sparsity.layout(dim)
        values = active * sparsity.block
        indices = active * (1 if n_blocks <= 256 else 2)
    out = {"values": values * spec.bytes, "indices": indices, "scale": SCALE_BYTES if scaling == "row" else 0}
    out["m"] = out["v"] = out["values"] if optimizer is not None and OPTIMIZERS[optimizer] else 0
    feature = format_spec(feature_format, "feature format")
    check_scaling(feature_format, feature_scaling)
    out["feature"] = int(feature_dim) * feature.bytes + (SCALE_BYTES if feature_scaling == "row" and feature_dim else 0)
    out["total"] = sum(out.values())
    return out
