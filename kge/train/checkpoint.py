"""Per-shard checkpoints and final models on disk, written atomically by the shards' owners.

Layout of a model directory::

    checkpoint/latest.json             {"step", "dir", "n_shards", ...}: the last COMPLETE checkpoint
    checkpoint/step_000000250/shard_0000.pt   one entity shard: rows, Adam state, block mask if sparse (its owner writes it)
    checkpoint/step_000000250/dense.pt        step, dense parameters and optimiser, history (rank 0)
    entities/shard_0000.pt             final entity rows of shard 0 ((S, d) in the storage dtype)
    model.pt                           final model: config, dense parameters, the entity file list

Every file goes through a temporary name and a rename. ``latest.json`` is replaced only after
every worker has written its shards (a barrier), so a kill at any moment leaves the previous
complete checkpoint in force; an unfinished step directory is never read and is pruned by the next
checkpoint. ``model.pt`` is written last of the final files, so its presence means the model is
complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from kge.bess.partition import Partition
from kge.common import atomic
from kge.common.errors import KgeInputError

CHECKPOINT_DIR = "checkpoint"
LATEST = "latest.json"
ENTITY_DIR = "entities"
MODEL_NAME = "model.pt"
HISTORY_NAME = "history.json"
PROGRESS_NAME = "progress.json"  # live state of a running training, read by `kge status`
MODEL_FORMAT = "kge-model-v2"


def _own_storage(value):
    """Tensors (recursively) on storage of their own: torch.save writes a view's WHOLE underlying
    storage, so saving a shard's slice of the table would write the whole table.

    A contiguous CPU view gets a storage that is exactly its bytes of the table's storage (a slice
    of the UntypedStorage shares the memory), so nothing is copied: a copy of each shard's rows and
    Adam state was 1.1 GB of extra peak memory per checkpoint at F = 32. Other tensors are copied.
    """
    if torch.is_tensor(value):
        value = value.detach()
        if value.device.type == "cpu" and value.is_contiguous() and value.numel() > 0:
            size = value.element_size()
            start = value.storage_offset() * size
            storage = value.untyped_storage()[start : start + value.numel() * size]
            return torch.empty(0, dtype=value.dtype).set_(storage, 0, value.shape)
        return value.to("cpu", copy=True).contiguous()
    if isinstance(value, dict):
        return {k: _own_storage(v) for k, v in value.items()}
    return value


def shard_file(shard: int) -> str:
    return f"shard_{shard:04d}.pt"


def step_dir(model_dir: Path, step: int) -> Path:
    return Path(model_dir) / CHECKPOINT_DIR / f"step_{step:09d}"


def save_shard_states(model_dir: Path, step: int, states: dict[int, dict]) -> None:
    """Each worker: ``{shard: {"rows": (S, d), "m": ..., ...}}`` -> step_dir/shard_XXXX.pt."""
    directory = step_dir(model_dir, step)
    directory.mkdir(parents=True, exist_ok=True)
    for shard, state in states.items():
        atomic.torch_save(directory / shard_file(shard), _own_storage(state))


def commit(model_dir: Path, step: int, dense_state: dict, meta: dict) -> None:
    """Rank 0, after every worker saved its shards: dense.pt, then latest.json, then prune older steps."""
    directory = step_dir(model_dir, step)
    atomic.torch_save(directory / "dense.pt", dense_state)
    atomic.save_json(Path(model_dir) / CHECKPOINT_DIR / LATEST, dict(meta, step=step, dir=directory.name))
    for other in (Path(model_dir) / CHECKPOINT_DIR).glob("step_*"):
        if other.name != directory.name:
            shutil.rmtree(other, ignore_errors=True)


def latest(model_dir: Path) -> tuple[Path, dict] | None:
    """(step directory, latest.json contents) of the last complete checkpoint, or None."""
    path = Path(model_dir) / CHECKPOINT_DIR / LATEST
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    return path.parent / meta["dir"], meta


def load_shard_state(directory: Path, shard: int) -> dict:
    path = directory / shard_file(shard)
    if not path.is_file():
        raise KgeInputError(f"{path}: missing shard of a committed checkpoint (was the directory copied partially?)")
    return torch.load(path, map_location="cpu", weights_only=False, mmap=True)  # rows are read as used


def remove_checkpoints(model_dir: Path) -> None:
    shutil.rmtree(Path(model_dir) / CHECKPOINT_DIR, ignore_errors=True)


def save_entity_shards(model_dir: Path, tables: dict[int, torch.Tensor]) -> None:
    """Each worker: its final ``{shard: (S, d) rows}`` -> entities/shard_XXXX.pt."""
    directory = Path(model_dir) / ENTITY_DIR
    directory.mkdir(parents=True, exist_ok=True)
    for shard, rows in tables.items():
        atomic.torch_save(directory / shard_file(shard), _own_storage(rows))


def entity_files(n_shards: int) -> list[str]:
    return [f"{ENTITY_DIR}/{shard_file(i)}" for i in range(n_shards)]


def read_model(path: str | Path) -> dict:
    """model.pt -> its metadata dict (config, dense state, entity files ...), checked."""
    path = Path(path)
    if not path.exists():
        raise KgeInputError(f"{path}: missing trained model; run `kge train` first")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(saved, dict) or saved.get("format") != MODEL_FORMAT:
        raise KgeInputError(f"{path}: not a model written by this version of `kge train` (format {MODEL_FORMAT})")
    return saved


def load_entity_rows(model_path: str | Path, saved: dict, shards: list[int] | None = None) -> torch.Tensor:
    """The final entity rows of ``shards`` (default: all, i.e. the whole (D*S, d) table), concatenated.

    Rows are returned in the dtype they were stored in; the caller casts for compute.
    """
    base = Path(model_path).parent
    shards = range(saved["n_shards"]) if shards is None else shards
    parts = []
    for shard in shards:
        path = base / saved["entity_files"][shard]
        if not path.is_file():
            raise KgeInputError(f"{path}: missing entity shard of {model_path}")
        parts.append(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
    return torch.cat(parts)


def load_trained_partition(
    shard_dir: str | Path, saved: dict, model_path: str | Path, hint: str = "see `kge reshard`"
) -> Partition:
    """shard_dir/partition.npz, checked to be the partition the model of ``saved`` (read from
    ``model_path``) was trained on: the same shard count and seed (KgeInputError naming both otherwise)."""
    partition = Partition.load(Path(shard_dir) / "partition.npz")
    if partition.n_shards != saved["n_shards"] or partition.seed != saved.get("partition_seed"):
        raise KgeInputError(f"{shard_dir}: not the partition {model_path} was trained on; {hint}")
    return partition
