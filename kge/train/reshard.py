"""`kge reshard`: move a checkpoint or a trained model from one entity partition (D shards) to another.

Each entity's row (embedding, and for a checkpoint its Adam m and v or sqrt(v)) follows the
entity's global id from the source partition to the target one; padding rows of the target are
zero. Dense parameters, the step count and the history are copied unchanged, so a run resumes
under the new D (and any worker count that divides it). Memory: one source and one target shard
at a time (source shards are memory-mapped).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from kge.bess.partition import Partition
from kge.common import atomic
from kge.common.errors import KgeInputError
from kge.table import sparsity
from kge.train import checkpoint


def _move_rows(
    source: Partition, target: Partition, target_shard: int, read_source, template: dict
) -> dict[str, torch.Tensor]:
    """Tensors of one target shard, {key: (S_target, d)}; ``read_source(i)`` -> {key: (S_source, d)};
    ``template``: one source shard's tensors (their widths and dtypes)."""
    ids = target.shard_entities[target_shard]
    valid = np.flatnonzero(ids >= 0)
    rows = source.row_of(ids[valid])
    src_shard, src_local = np.divmod(rows, source.shard_size)
    out = {key: torch.zeros((target.shard_size,) + tuple(t.shape[1:]), dtype=t.dtype) for key, t in template.items()}
    for i in np.unique(src_shard):
        tensors = read_source(int(i))
        pick = src_shard == i
        for key, table in tensors.items():
            out[key][torch.from_numpy(valid[pick])] = table[torch.from_numpy(src_local[pick])]
    return out


def reshard(
    model_dir: str | Path, from_shards: str | Path, to_shards: str | Path, out_dir: str | Path, progress: bool = True
) -> str:
    """Convert model_dir's latest checkpoint, or else its final model, to the partition of ``to_shards``.

    Returns "checkpoint" or "model" (what was converted). The output is complete only when its
    last file (latest.json or model.pt) exists: that file is written last.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    source = Partition.load(Path(from_shards) / "partition.npz")
    target = Partition.load(Path(to_shards) / "partition.npz")
    if source.num_entities != target.num_entities:
        raise KgeInputError(
            f"{to_shards}: {target.num_entities} entities, but {from_shards} has {source.num_entities}; not the same graph"
        )
    if out_dir.resolve() == model_dir.resolve():
        raise KgeInputError(f"--out {out_dir}: must differ from the model directory")
    found = checkpoint.latest(model_dir)
    if found is not None:
        directory, meta = found
        if (
            meta["n_shards"] != source.n_shards
            or meta["num_entities"] != source.num_entities
            or meta["partition_seed"] != source.seed
        ):
            raise KgeInputError(f"{directory}: written for another partition than {from_shards}/partition.npz")
        new_dir = checkpoint.step_dir(out_dir, meta["step"])
        new_dir.mkdir(parents=True, exist_ok=True)

        def is_table(v) -> bool:
            return torch.is_tensor(v) and v.dim() == 2

        def tables(state: dict) -> dict:
            return {
                "rows": state["rows"],
                **{f"optimizer.{k}": v for k, v in state["optimizer"].items() if is_table(v)},
            }

        def read_checkpoint_shard(i: int) -> dict:
            return tables(checkpoint.load_shard_state(directory, i))  # memory-mapped: picked rows are read

        first = checkpoint.load_shard_state(directory, 0)
        if sparsity.MASK_KEY in first:  # masks are per row of a shard; padding rows would lose theirs
            raise KgeInputError(
                f"{directory}: a block-sparse checkpoint cannot be resharded; finish training and reshard the model"
            )
        scalars = {k: v for k, v in first["optimizer"].items() if not is_table(v)}  # step count, storage: global
        template = tables(first)
        for k in tqdm(range(target.n_shards), desc="reshard checkpoint", unit="shard", disable=not progress):
            moved = _move_rows(source, target, k, read_checkpoint_shard, template)
            optimizer = dict(
                scalars, **{key.split(".", 1)[1]: v for key, v in moved.items() if key.startswith("optimizer.")}
            )
            checkpoint.save_shard_states(out_dir, meta["step"], {k: {"rows": moved["rows"], "optimizer": optimizer}})
        dense = torch.load(directory / "dense.pt", map_location="cpu", weights_only=False)
        history = model_dir / "history.json"
        if history.exists():
            shutil.copyfile(history, out_dir / "history.json")
        new_meta = dict(meta, n_shards=target.n_shards, num_entities=target.num_entities, partition_seed=target.seed)
        new_meta.pop("step"), new_meta.pop("dir")
        checkpoint.commit(out_dir, meta["step"], dense, new_meta)
        return "checkpoint"

    saved = checkpoint.read_model(model_dir / checkpoint.MODEL_NAME)
    if saved["n_shards"] != source.n_shards or saved["partition_seed"] != source.seed:
        raise KgeInputError(
            f"{model_dir / checkpoint.MODEL_NAME}: trained on another partition than {from_shards}/partition.npz"
        )

    def read_model_shard(i: int) -> dict:
        return {"rows": checkpoint.load_entity_rows(model_dir / checkpoint.MODEL_NAME, saved, [i])}

    template = read_model_shard(0)
    for k in tqdm(range(target.n_shards), desc="reshard model", unit="shard", disable=not progress):
        checkpoint.save_entity_shards(out_dir, {k: _move_rows(source, target, k, read_model_shard, template)["rows"]})
    saved.update(
        n_shards=target.n_shards,
        shard_size=target.shard_size,
        partition_seed=target.seed,
        entity_files=checkpoint.entity_files(target.n_shards),
    )
    atomic.torch_save(out_dir / checkpoint.MODEL_NAME, saved)
    return "model"
