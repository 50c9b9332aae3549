"""Shard WikiKG90Mv2 for BESS: triples bucketed by (shard(h), shard(t)), features grouped by shard.

Output (``out_dir``)::

    triples/head_shard=i/tail_shard=j/part-0.parquet   columns h, r, t (int64 global ids)
    partition.npz                                      kge.bess.partition.Partition
    bucket_relation_counts.npy                         (D, D, R) int64
    features/shard_{i:04d}.npy                         (S, F) float16, local row order, padding = 0
    shard_meta.json                                    written last: its presence marks completion

Everything is built in a sibling ``<out_dir>.tmp-*`` directory and renamed onto ``out_dir`` at the
end, so an interrupted run never leaves an ``out_dir`` that looks complete; stale temporaries from a
killed run are removed when the next run starts.

Memory does not grow with the number of triples T: train_hrt is memory-mapped and read in chunks of
``chunk_rows``; each chunk is sorted by bucket and appended to one open ParquetWriter per bucket
(one row group per bucket per chunk). Peak memory ~ a few times chunk_rows * 24 bytes plus the
partition maps (~20 bytes per entity).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import torch

from kge.bess.partition import Partition, make_partition
from kge.common.atomic import save_json, save_npy
from kge.common.errors import KgeInputError
from kge.data.layout import drop_resident_pages

DATASET_DIRNAME = "wikikg90m-v2"
FORMAT_VERSION = 1
TRIPLE_SCHEMA = pa.schema([("h", pa.int64()), ("r", pa.int64()), ("t", pa.int64())])
PARTITION_SCHEMA = pa.schema([("head_shard", pa.int32()), ("tail_shard", pa.int32())])
# Bytes of features gathered per step when writing features/ (bounded memory, large sorted reads).
_FEATURE_CHUNK_BYTES = 128 << 20


def _tqdm(progress: bool, **kw):
    from tqdm import tqdm

    return tqdm(disable=not progress, file=sys.stderr, dynamic_ncols=True, **kw)


class _Source:
    """The inputs shard_dataset reads: meta ints and memory-mapped arrays (private; it opens them
    itself rather than through kge.data.layout's open_dataset, so sharding can be tested on its own)."""

    def __init__(self, root: str | os.PathLike):
        root = Path(root)
        ds_dir = (
            root / DATASET_DIRNAME if (root / DATASET_DIRNAME).is_dir() or not (root / "meta.pt").exists() else root
        )
        self.ds_dir = ds_dir
        meta_path = ds_dir / "meta.pt"
        if not meta_path.is_file():
            raise KgeInputError(f"{meta_path}: not found (expected the OGB layout ROOT/{DATASET_DIRNAME}/meta.pt)")
        try:
            meta = torch.load(meta_path, weights_only=True)
            self.num_entities = int(meta["num_entities"])
            self.num_relations = int(meta["num_relations"])
        except Exception as exc:  # noqa: BLE001 - any unreadable meta is the same user error
            raise KgeInputError(
                f"{meta_path}: expected a dict with int num_entities and num_relations ({exc})"
            ) from exc
        if self.num_entities < 1 or self.num_relations < 1:
            raise KgeInputError(f"{meta_path}: num_entities and num_relations must be positive")

        self.train_path = ds_dir / "processed" / "train_hrt.npy"
        self.train_hrt = _open_npy(self.train_path)
        if self.train_hrt.ndim != 2 or self.train_hrt.shape[1] != 3 or self.train_hrt.shape[0] < 1:
            raise KgeInputError(f"{self.train_path}: shape {self.train_hrt.shape}, expected (T, 3) with T >= 1")
        if not np.issubdtype(self.train_hrt.dtype, np.integer):
            raise KgeInputError(f"{self.train_path}: dtype {self.train_hrt.dtype}, expected an integer type")

        self.feat_path = ds_dir / "processed" / "entity_feat.npy"
        self.entity_feat = _open_npy(self.feat_path)
        if (
            self.entity_feat.ndim != 2
            or self.entity_feat.shape[0] != self.num_entities
            or self.entity_feat.shape[1] < 1
        ):
            raise KgeInputError(
                f"{self.feat_path}: shape {self.entity_feat.shape}, expected ({self.num_entities}, 768)"
            )
        if self.entity_feat.dtype != np.float16:
            raise KgeInputError(f"{self.feat_path}: dtype {self.entity_feat.dtype}, expected float16")


def _open_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise KgeInputError(f"{path}: not found")
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, OSError) as exc:
        raise KgeInputError(f"{path}: not a readable .npy file ({exc})") from exc


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for lo in range(0, n, size):
        yield lo, min(n, lo + size)


def _bucketed_chunks(
    src: _Source, part: Partition, chunk_rows: int, counts: np.ndarray, bar
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (hrt (n,3) int64 sorted by bucket, bucket_ids (k,), bucket_starts (k+1,)) per chunk of
    train_hrt; accumulates (D*D*R,) relation counts per bucket into ``counts``. Validates id ranges."""
    d, e, r_count = part.n_shards, src.num_entities, src.num_relations
    for lo, hi in _chunks(src.train_hrt.shape[0], chunk_rows):
        hrt = np.array(src.train_hrt[lo:hi], dtype=np.int64)  # a copy: the mapped pages can go
        drop_resident_pages(src.train_hrt)
        mins, maxs = hrt.min(axis=0), hrt.max(axis=0)
        if mins.min() < 0 or maxs[0] >= e or maxs[2] >= e or maxs[1] >= r_count:
            raise KgeInputError(
                f"{src.train_path}: ids out of range in rows [{lo}, {hi}): need 0 <= h, t < {e} and 0 <= r < {r_count}"
            )
        bucket = part.entity_shard[hrt[:, 0]].astype(np.int64) * d + part.entity_shard[hrt[:, 2]]
        counts += np.bincount(bucket * r_count + hrt[:, 1], minlength=counts.size)
        # numpy's stable sort is a radix sort for 16-bit keys: O(n) when D*D <= 65536.
        key = bucket.astype(np.uint16) if d * d <= 1 << 16 else bucket
        order = np.argsort(key, kind="stable")
        hrt = hrt[order]
        sorted_bucket = bucket[order]
        starts = np.flatnonzero(np.diff(sorted_bucket)) + 1
        starts = np.concatenate([[0], starts, [hrt.shape[0]]])
        yield hrt, sorted_bucket[starts[:-1]], starts
        bar.update(hi - lo)


def _write_triples_writers(
    src: _Source, part: Partition, triples_dir: Path, chunk_rows: int, counts: np.ndarray, bar, compression: str
) -> None:
    """One ParquetWriter per non-empty bucket, each chunk appended as one row group per bucket."""
    d = part.n_shards
    writers: dict[int, pq.ParquetWriter] = {}
    try:
        for hrt, bucket_ids, starts in _bucketed_chunks(src, part, chunk_rows, counts, bar):
            for k, b in enumerate(bucket_ids.tolist()):
                w = writers.get(b)
                if w is None:
                    bdir = triples_dir / f"head_shard={b // d}" / f"tail_shard={b % d}"
                    bdir.mkdir(parents=True, exist_ok=True)
                    w = pq.ParquetWriter(bdir / "part-0.parquet", TRIPLE_SCHEMA, compression=compression)
                    writers[b] = w
                block = hrt[starts[k] : starts[k + 1]]
                w.write_table(
                    pa.Table.from_arrays(
                        [pa.array(block[:, 0]), pa.array(block[:, 1]), pa.array(block[:, 2])], schema=TRIPLE_SCHEMA
                    )
                )
    finally:
        for w in writers.values():
            w.close()


def _write_triples_dataset(
    src: _Source, part: Partition, triples_dir: Path, chunk_rows: int, counts: np.ndarray, bar, compression: str
) -> None:
    """pyarrow.dataset.write_dataset fed by a generator of RecordBatches with partition columns."""
    d = part.n_shards
    schema = pa.schema(list(TRIPLE_SCHEMA) + list(PARTITION_SCHEMA))

    def batches() -> Iterator[pa.RecordBatch]:
        for hrt, _, _ in _bucketed_chunks(src, part, chunk_rows, counts, bar):
            hs = part.entity_shard[hrt[:, 0]]
            ts = part.entity_shard[hrt[:, 2]]
            yield pa.RecordBatch.from_arrays(
                [pa.array(hrt[:, 0]), pa.array(hrt[:, 1]), pa.array(hrt[:, 2]), pa.array(hs), pa.array(ts)],
                schema=schema,
            )

    pads.write_dataset(
        batches(),
        base_dir=str(triples_dir),
        schema=schema,
        format="parquet",
        partitioning=pads.partitioning(PARTITION_SCHEMA, flavor="hive"),
        basename_template="part-{i}.parquet",
        max_open_files=max(1024, d * d + 1),
        existing_data_behavior="error",
        file_options=pads.ParquetFileFormat().make_write_options(compression=compression),
    )


def _write_features(src: _Source, part: Partition, features_dir: Path, progress: bool) -> None:
    """features/shard_{i:04d}.npy (S, F) float16 in local row order; padding rows stay zero.

    Gathers chunk by chunk; each chunk's ids are sorted so the reads from the (possibly 140 GB)
    entity_feat memmap go forward through the file."""
    features_dir.mkdir(parents=True, exist_ok=True)
    s, f = part.shard_size, src.entity_feat.shape[1]
    rows_per_chunk = max(1, _FEATURE_CHUNK_BYTES // (2 * f))
    bar = _tqdm(progress, total=part.num_entities, unit="ent", unit_scale=True, desc="features")
    fd = os.open(src.feat_path, os.O_RDONLY)
    try:
        with bar:
            for i, ids in enumerate(part.shard_entities):
                out = np.lib.format.open_memmap(
                    features_dir / f"shard_{i:04d}.npy", mode="w+", dtype=np.float16, shape=(s, f)
                )
                for lo, hi in _chunks(s, rows_per_chunk):
                    chunk_ids = ids[lo:hi]
                    local = np.flatnonzero(chunk_ids >= 0)
                    block = np.zeros((hi - lo, f), dtype=np.float16)  # padding rows written as explicit zeros
                    if local.size:
                        order = np.argsort(chunk_ids[local])
                        block[local[order]] = _read_rows(fd, src.entity_feat, chunk_ids[local[order]], src.feat_path)
                    out[lo:hi] = block
                    drop_resident_pages(out)
                    bar.update(local.size)
                out.flush()
                del out
    finally:
        os.close(fd)


def _read_rows(fd: int, mapped: np.ndarray, ids: np.ndarray, path: Path) -> np.ndarray:
    """Rows ``ids`` (sorted ascending) of the (E, F) .npy open as ``fd`` -> (n, F) array, with one
    pread per run of consecutive ids.

    Not through the memory map: a shard's ids are spread over the whole file, and the kernel maps up
    to 64 KiB around every faulted row, so one chunk's gather made the whole feature file resident
    in the process (4.4 GB at F = 32); reads leave the pages in the page cache and none in the RSS.
    ``mapped`` (the file's memmap) gives the header offset, shape and dtype.
    """
    row_bytes = mapped.shape[1] * mapped.dtype.itemsize
    out = np.empty((len(ids), mapped.shape[1]), dtype=mapped.dtype)
    buf = memoryview(out.reshape(-1).view(np.uint8))
    breaks = np.flatnonzero(np.diff(ids) != 1) + 1
    starts, ends = np.concatenate([[0], breaks]).tolist(), np.concatenate([breaks, [len(ids)]]).tolist()
    for a, b in zip(starts, ends):
        want = (b - a) * row_bytes
        got = os.preadv(fd, [buf[a * row_bytes : b * row_bytes]], mapped.offset + int(ids[a]) * row_bytes)
        if got != want:
            raise KgeInputError(
                f"{path}: short read at entity {int(ids[a])} (truncated?); expected {want} bytes, got {got}"
            )
    return out


def _clean_stale(out_dir: Path) -> None:
    """Remove temporaries left by an interrupted run (``<out_dir>.tmp-*`` / ``.old-*`` siblings)."""
    for pattern in (f"{out_dir.name}.tmp-*", f"{out_dir.name}.old-*"):
        for p in out_dir.parent.glob(pattern):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def shard_dataset(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    n_shards: int,
    seed: int = 0,
    chunk_rows: int = 4_000_000,
    progress: bool = True,
    *,
    writer: str = "writers",
    compression: str = "snappy",
) -> Path:
    """Shard ``ROOT/wikikg90m-v2`` (or that folder itself) into ``out_dir`` for ``n_shards`` workers.

    root: OGB root holding wikikg90m-v2/{meta.pt, processed/train_hrt.npy (T,3), entity_feat.npy (E,F)}.
    seed: seed of the entity permutation (kge.bess.partition.make_partition).
    chunk_rows: triples read per step; bounds peak memory (~ 4-6 x chunk_rows x 24 bytes).
    writer: "writers" (one ParquetWriter per bucket, default: fastest and flattest memory in
        benchmarks/shard.md) or "dataset" (pyarrow.dataset.write_dataset).
    Returns out_dir. Bad input raises KgeInputError naming the file.
    """
    if int(chunk_rows) < 1:
        raise KgeInputError(f"chunk_rows: must be >= 1, got {chunk_rows}")
    if writer not in ("writers", "dataset"):
        raise KgeInputError(f"writer: expected 'writers' or 'dataset', got {writer!r}")
    src = _Source(root)
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and not out_dir.is_dir():
        raise KgeInputError(f"{out_dir}: exists and is not a directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(out_dir)
    t0 = time.perf_counter()
    part = make_partition(src.num_entities, n_shards, seed)
    d, r_count, t_count = part.n_shards, src.num_relations, int(src.train_hrt.shape[0])

    tmp = Path(tempfile.mkdtemp(prefix=f"{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        part.save(tmp / "partition.npz")
        counts = np.zeros(d * d * r_count, dtype=np.int64)
        write = _write_triples_writers if writer == "writers" else _write_triples_dataset
        with _tqdm(progress, total=t_count, unit="triple", unit_scale=True, desc="triples") as bar:
            write(src, part, tmp / "triples", int(chunk_rows), counts, bar, compression)
        t_triples = time.perf_counter() - t0
        counts = counts.reshape(d, d, r_count)
        if int(counts.sum()) != t_count:  # every row must have landed in exactly one bucket
            raise RuntimeError(f"sharded {int(counts.sum())} triples, expected {t_count}")
        save_npy(tmp / "bucket_relation_counts.npy", counts)
        _write_features(src, part, tmp / "features", progress)
        meta = {
            "format_version": FORMAT_VERSION,
            "n_shards": d,
            "seed": int(seed),
            "num_entities": src.num_entities,
            "num_relations": r_count,
            "num_triples": t_count,
            "shard_size": part.shard_size,
            "feature_dim": int(src.entity_feat.shape[1]),
            "empty_buckets": int((counts.sum(axis=2) == 0).sum()),
            "source": {
                "train_hrt": str(src.train_path.resolve()),
                "train_hrt_bytes": src.train_path.stat().st_size,
                "entity_feat": str(src.feat_path.resolve()),
                "entity_feat_bytes": src.feat_path.stat().st_size,
            },
            "writer": writer,
            "compression": compression,
            "chunk_rows": int(chunk_rows),
            "seconds": {"triples": round(t_triples, 3), "total": round(time.perf_counter() - t0, 3)},
        }
        save_json(tmp / "shard_meta.json", meta)  # last file: its presence marks a complete shard set
        # Swap in: move any previous output aside first (os.replace cannot replace a non-empty dir).
        old = None
        if out_dir.exists():
            old = out_dir.parent / f"{out_dir.name}.old-{os.getpid()}"
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_shard_meta(shard_dir: str | os.PathLike) -> dict:
    """Load shard_meta.json; its absence means the shard set is missing or incomplete."""
    path = Path(shard_dir) / "shard_meta.json"
    if not path.is_file():
        raise KgeInputError(f"{path}: not found; {shard_dir} is not a complete shard directory (run sharding again)")
    try:
        meta = json.loads(path.read_text())
        for key in ("n_shards", "num_entities", "num_relations", "num_triples"):
            int(meta[key])
    except (ValueError, KeyError, TypeError) as exc:
        raise KgeInputError(f"{path}: malformed shard metadata ({exc})") from exc
    return meta


def triples_dataset(shard_dir: str | os.PathLike) -> pads.Dataset:
    """The bucketed triples as a pyarrow dataset with int32 head_shard / tail_shard columns."""
    return pads.dataset(
        str(Path(shard_dir) / "triples"),
        format="parquet",
        partitioning=pads.partitioning(PARTITION_SCHEMA, flavor="hive"),
    )
