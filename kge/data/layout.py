"""The on-disk layout read by ``ogb.lsc.WikiKG90Mv2Dataset`` and a checked, memory-mapped reader.

Layout (see /work/shared/reference/WIKIKG90MV2.md)::

    ROOT/wikikg90m-v2/
      RELEASE_v1.txt            marker (existence only)
      meta.pt                   torch.save({'num_entities': int, 'num_relations': int})
      processed/
        train_hrt.npy           (T, 3) integer h, r, t
        entity_feat.npy         (E, F) float16 (F = 768 for the real data)
        relation_feat.npy       (R, F) float16
        val_hr.npy              (Qv, 2)   val_t.npy (Qv,)
        test-dev_hr.npy         (Qd, 2)   test-challenge_hr.npy (Qc, 2)   (Qd = Qc = 0: no test split)

``open_dataset`` never calls ogb's constructor: that constructor may prompt on stdin, download 89 GB
or delete folders. ``load_with_ogb`` calls it only once the marker exists (then it does none of those).
"""

from __future__ import annotations

import mmap
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kge.common.atomic import save_npy, save_text, torch_save
from kge.common.errors import KgeInputError

DATASET_DIRNAME = "wikikg90m-v2"
MARKER_NAME = "RELEASE_v1.txt"
META_NAME = "meta.pt"
PROCESSED_DIRNAME = "processed"
# Hidden tails of the test queries (miniature or imported graphs): outside the OGB folder, so
# nothing that reads the OGB layout can see them.
ANSWERS_DIRNAME = "mini-answers"
# ogb's save_test_submission asserts exactly these row counts.
OGB_TEST_QUERY_COUNTS = {"test-dev": 15000, "test-challenge": 10000}
FEATURE_DIM = 768

# The query splits a model predicts and the ensemble combines, in this order.
SPLITS = ("valid", "test-dev", "test-challenge")

# KGArrays field -> file name under processed/.
SPLIT_FILES = {
    "train_hrt": "train_hrt.npy",
    "entity_feat": "entity_feat.npy",
    "relation_feat": "relation_feat.npy",
    "val_hr": "val_hr.npy",
    "val_t": "val_t.npy",
    "test_dev_hr": "test-dev_hr.npy",
    "test_challenge_hr": "test-challenge_hr.npy",
}

# Rows per chunk of the streaming checks: bounded memory whatever T or E is.
ID_CHECK_ROWS = 4_000_000
FEATURE_CHECK_BYTES = 64 << 20
# The default feature check reads at most this many blocks of FEATURE_CHECK_BYTES (1 GiB): the first,
# the last and the rest spread at random. The real entity_feat is 140 GB, a multi-hour full read.
FEATURE_SAMPLE_BLOCKS = 16


def dataset_dir(root: str | os.PathLike) -> Path:
    """``ROOT/wikikg90m-v2``."""
    return Path(root) / DATASET_DIRNAME


def processed_dir(root: str | os.PathLike) -> Path:
    return dataset_dir(root) / PROCESSED_DIRNAME


def answers_dir(root: str | os.PathLike) -> Path:
    """``ROOT/mini-answers``: hidden test tails ``test-dev_t.npy`` / ``test-challenge_t.npy``."""
    return Path(root) / ANSWERS_DIRNAME


def write_meta(ds_dir: str | os.PathLike, num_entities: int, num_relations: int) -> None:
    """Write ``meta.pt`` with plain Python ints (numpy scalars fail torch.load(weights_only=True))."""
    torch_save(Path(ds_dir) / META_NAME, {"num_entities": int(num_entities), "num_relations": int(num_relations)})


def write_marker(ds_dir: str | os.PathLike) -> None:
    """Write ``RELEASE_v1.txt``; write it last, it tells ogb (and us) the folder is complete."""
    save_text(Path(ds_dir) / MARKER_NAME, "WikiKG90Mv2 layout, version 1\n")


def remove_marker(ds_dir: str | os.PathLike) -> None:
    """Drop the marker before rewriting a folder, so an interrupted rewrite never looks complete."""
    try:
        (Path(ds_dir) / MARKER_NAME).unlink()
    except FileNotFoundError:
        pass


def write_split_arrays(ds_dir: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Atomically write ``processed/<file>.npy`` for each given KGArrays field name.

    Keys: train_hrt, entity_feat, relation_feat, val_hr, val_t, test_dev_hr, test_challenge_hr.
    """
    out = Path(ds_dir) / PROCESSED_DIRNAME
    for key, arr in arrays.items():
        if key not in SPLIT_FILES:
            raise ValueError(f"unknown split array {key!r}; expected one of {sorted(SPLIT_FILES)}")
        save_npy(out / SPLIT_FILES[key], np.ascontiguousarray(arr))


@dataclass
class KGArrays:
    """The dataset as memory-mapped arrays (integer arrays keep their on-disk dtype).

    train_hrt (T, 3); entity_feat (E, F) float16/32; relation_feat (R, F); val_hr (Qv, 2);
    val_t (Qv,); test_dev_hr (Qd, 2); test_challenge_hr (Qc, 2).
    """

    num_entities: int
    num_relations: int
    train_hrt: np.ndarray
    entity_feat: np.ndarray
    relation_feat: np.ndarray
    val_hr: np.ndarray
    val_t: np.ndarray
    test_dev_hr: np.ndarray
    test_challenge_hr: np.ndarray

    @property
    def feature_dim(self) -> int:
        return int(self.entity_feat.shape[1])


def _read_meta(ds_dir: Path) -> tuple[int, int]:
    import torch

    path = ds_dir / META_NAME
    if not path.is_file():
        raise KgeInputError(f"{path}: missing; expected torch.save({{'num_entities': int, 'num_relations': int}})")
    try:
        meta = torch.load(path, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt/unsafe pickles
        raise KgeInputError(
            f"{path}: cannot be read ({type(exc).__name__}: {exc}); expected a torch.save'd dict of plain ints"
        ) from None
    if not isinstance(meta, dict):
        raise KgeInputError(
            f"{path}: expected a dict with 'num_entities' and 'num_relations', got {type(meta).__name__}"
        )
    out = []
    for key in ("num_entities", "num_relations"):
        val = meta.get(key)
        if type(val) is not int:  # bool and numpy ints are rejected: ogb needs plain ints
            raise KgeInputError(f"{path}: '{key}' must be a plain Python int, got {type(val).__name__} {val!r}")
        if val <= 0:
            raise KgeInputError(f"{path}: '{key}' must be positive, got {val}")
        out.append(val)
    return out[0], out[1]


def _open_npy(path: Path) -> np.ndarray:
    """Memory-map one .npy, rejecting missing, corrupt and truncated files with a one-line error."""
    if not path.is_file():
        raise KgeInputError(f"{path}: missing file")
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            # v1 and v2/v3 headers differ only in the length field width.
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _fortran, dtype = reader(fh)
            offset = fh.tell()
    except Exception as exc:
        raise KgeInputError(f"{path}: not a valid .npy file ({exc})") from None
    if dtype.hasobject:
        raise KgeInputError(f"{path}: holds Python objects; expected a numeric array")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size < expected:
        raise KgeInputError(f"{path}: truncated: {size} bytes on disk, header {shape} {dtype} needs {expected}")
    try:
        arr = np.load(path, mmap_mode="r")
    except Exception as exc:
        raise KgeInputError(f"{path}: cannot be memory-mapped ({exc})") from None
    return arr


def _check_int(path: Path, arr: np.ndarray) -> None:
    if arr.dtype.kind not in "iu":
        raise KgeInputError(f"{path}: dtype {arr.dtype}; expected an integer array")


def _check_rows(path: Path, arr: np.ndarray, ncols: int | None, what: str, allow_empty: bool = False) -> None:
    want = f"({what}, {ncols})" if ncols is not None else f"({what},)"
    if ncols is None:
        if arr.ndim != 1:
            raise KgeInputError(f"{path}: shape {arr.shape}; expected {want}")
    elif arr.ndim != 2 or arr.shape[1] != ncols:
        raise KgeInputError(f"{path}: shape {arr.shape}; expected {want}")
    if arr.shape[0] == 0 and not allow_empty:
        raise KgeInputError(f"{path}: empty split (0 rows); expected {want} with at least one row")


def drop_resident_pages(arr: np.ndarray) -> None:
    """Drop a memmap's resident pages from this process (MADV_DONTNEED); a no-op for other arrays.

    Pages touched through a file mapping count in the process RSS until the kernel needs them back;
    without this, streaming a 14 GB train_hrt / 140 GB entity_feat makes RSS grow with the file even
    though memory is never short. Dirty pages of a shared mapping stay in the page cache and are
    still written back, so this is safe for output memmaps too."""
    mm = getattr(arr, "_mmap", None)
    if mm is not None and hasattr(mmap, "MADV_DONTNEED"):
        mm.madvise(mmap.MADV_DONTNEED)


def _check_range(path: Path, arr: np.ndarray, cols: list[tuple[int | None, int, str]], progress: bool) -> None:
    """Check ids column by column in chunks. cols: (column or None for 1-d, upper bound, name)."""
    n = arr.shape[0]
    chunks = range(0, n, ID_CHECK_ROWS)
    if progress and n > ID_CHECK_ROWS:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc=f"check ids {path.name}", unit="chunk", file=sys.stderr)
    for start in chunks:
        block = np.array(arr[start : start + ID_CHECK_ROWS])
        drop_resident_pages(arr)
        for col, bound, name in cols:
            vals = block if col is None else block[:, col]
            lo, hi = vals.min(), vals.max()
            if lo < 0 or hi >= bound:
                bad = np.flatnonzero((vals < 0) | (vals >= bound))[0]
                raise KgeInputError(
                    f"{path}: {name} id {int(vals[bad])} at row {start + int(bad)} is out of range; expected 0 <= id < {bound}"
                )


def _check_finite(path: Path, arr: np.ndarray, progress: bool, sampled: bool = False) -> float:
    """NaN/inf check in bounded chunks; a float32 sum is non-finite iff some element is (no temporaries).

    ``sampled``: only FEATURE_SAMPLE_BLOCKS chunks (first, last, the rest seeded-random), so the check
    of a 140 GB file takes seconds to minutes. Returns the fraction of rows read.
    """
    n = arr.shape[0]
    rows = max(1, FEATURE_CHECK_BYTES // max(1, arr.shape[1] * arr.dtype.itemsize))
    starts = np.arange(0, n, rows)
    if sampled and len(starts) > FEATURE_SAMPLE_BLOCKS:
        middle = np.random.default_rng(0).choice(starts[1:-1], size=FEATURE_SAMPLE_BLOCKS - 2, replace=False)
        starts = np.sort(np.concatenate([starts[:1], middle, starts[-1:]]))
    chunks = starts.tolist()
    if progress and len(chunks) > 4:
        from tqdm import tqdm

        chunks = tqdm(
            chunks, desc=f"check {path.name}" + (" (sampled)" if sampled else ""), unit="chunk", file=sys.stderr
        )
    read = 0
    for start in chunks:
        block = np.array(arr[start : start + rows])
        drop_resident_pages(arr)
        read += block.shape[0]
        with np.errstate(over="ignore", invalid="ignore"):
            total = np.sum(block, dtype=np.float32)
        if not np.isfinite(total):
            bad = ~np.isfinite(np.asarray(block)).all(axis=1)
            if bad.any():
                row = start + int(np.flatnonzero(bad)[0])
                raise KgeInputError(f"{path}: non-finite (NaN or inf) feature in row {row}; expected finite values")
    return read / max(1, n)


def open_dataset(
    root: str | os.PathLike, check: bool = True, check_features: bool | str | None = None, progress: bool = True
) -> KGArrays:
    """Memory-map ``ROOT/wikikg90m-v2`` and validate it; every problem is a one-line KgeInputError.

    Always checked (cheap): marker, meta.pt, every file present/untruncated, dtypes, shapes, empty splits.
    ``check=True`` also scans all ids (chunked). ``check_features`` (default: ``check``) scans features for
    NaN/inf (chunked): True or "full" reads every row (on the real 140 GB entity_feat a multi-hour read),
    "sampled" at most FEATURE_SAMPLE_BLOCKS blocks of 64 MiB, False nothing.
    Test query counts are not forced to 15000/10000 here (see ``check_submission_counts``).
    """
    ds = dataset_dir(root)
    if not ds.is_dir():
        raise KgeInputError(
            f"{ds}: dataset folder missing; expected the OGB WikiKG90Mv2 layout (download, generate or import it)"
        )
    if not (ds / MARKER_NAME).is_file():
        raise KgeInputError(
            f"{ds / MARKER_NAME}: missing marker; the folder is incomplete (rerun the download/generate/import step)"
        )
    num_e, num_r = _read_meta(ds)
    proc = ds / PROCESSED_DIRNAME
    a = {key: _open_npy(proc / name) for key, name in SPLIT_FILES.items()}
    p = {key: proc / name for key, name in SPLIT_FILES.items()}

    for key in ("train_hrt", "val_hr", "val_t", "test_dev_hr", "test_challenge_hr"):
        _check_int(p[key], a[key])
    for key in ("entity_feat", "relation_feat"):
        if a[key].dtype not in (np.float16, np.float32):
            raise KgeInputError(f"{p[key]}: dtype {a[key].dtype}; expected float16 (or float32)")

    _check_rows(p["train_hrt"], a["train_hrt"], 3, "T")
    _check_rows(p["val_hr"], a["val_hr"], 2, "Q")
    _check_rows(p["val_t"], a["val_t"], None, "Q")
    if a["val_t"].shape[0] != a["val_hr"].shape[0]:
        raise KgeInputError(
            f"{p['val_t']}: {a['val_t'].shape[0]} rows; expected {a['val_hr'].shape[0]} to match val_hr.npy"
        )
    # 0 test queries: an imported graph without a test file (validation is then reported alone).
    _check_rows(p["test_dev_hr"], a["test_dev_hr"], 2, "Q", allow_empty=True)
    _check_rows(p["test_challenge_hr"], a["test_challenge_hr"], 2, "Q", allow_empty=True)

    ef, rf = a["entity_feat"], a["relation_feat"]
    if ef.ndim != 2 or ef.shape[0] != num_e or ef.shape[1] == 0:
        raise KgeInputError(
            f"{p['entity_feat']}: shape {ef.shape}; expected ({num_e}, {FEATURE_DIM}) (num_entities from meta.pt)"
        )
    if rf.ndim != 2 or rf.shape[0] != num_r or rf.shape[1] != ef.shape[1]:
        raise KgeInputError(
            f"{p['relation_feat']}: shape {rf.shape}; expected ({num_r}, {ef.shape[1]}) (num_relations from meta.pt)"
        )
    # Any feature width is accepted (imported graphs may bring their own); the real data has 768.

    if check:
        _check_range(
            p["train_hrt"], a["train_hrt"], [(0, num_e, "head"), (1, num_r, "relation"), (2, num_e, "tail")], progress
        )
        for key in ("val_hr", "test_dev_hr", "test_challenge_hr"):
            _check_range(p[key], a[key], [(0, num_e, "head"), (1, num_r, "relation")], progress)
        _check_range(p["val_t"], a["val_t"], [(None, num_e, "tail")], progress)
    mode = check if check_features is None else check_features
    if mode:
        _check_finite(p["entity_feat"], ef, progress, sampled=mode == "sampled")
        _check_finite(p["relation_feat"], rf, progress)

    return KGArrays(num_entities=num_e, num_relations=num_r, **a)


def check_submission_counts(kg: KGArrays, root: str | os.PathLike = "ROOT") -> None:
    """ogb's save_test_submission asserts 15000 test-dev and 10000 test-challenge rows: fail early instead."""
    proc = processed_dir(root)
    for mode, arr in (("test-dev", kg.test_dev_hr), ("test-challenge", kg.test_challenge_hr)):
        want = OGB_TEST_QUERY_COUNTS[mode]
        if arr.shape[0] != want:
            raise KgeInputError(
                f"{proc / (mode + '_hr.npy')}: {arr.shape[0]} queries; ogb's submission format needs exactly {want}"
            )


def load_with_ogb(root: str | os.PathLike):
    """Construct the real ``ogb.lsc.WikiKG90Mv2Dataset(root)``, only once the marker exists.

    With the marker present the constructor neither prompts nor downloads. It loads train_hrt fully
    into RAM (14 GB for the real data).
    """
    ds = dataset_dir(root)
    if not (ds / MARKER_NAME).is_file():
        raise KgeInputError(f"{ds / MARKER_NAME}: missing marker; refusing to call ogb (it would prompt or download)")
    if (ds / "mapping").exists():
        # ogb deletes this folder unconditionally; our label maps live in mapping-kge/.
        warnings.warn(f"{ds / 'mapping'} exists and ogb will delete it", stacklevel=2)
    from ogb.lsc import WikiKG90Mv2Dataset

    return WikiKG90Mv2Dataset(root=str(root))
