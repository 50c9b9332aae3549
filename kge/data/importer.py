"""Import a user knowledge graph (TSV / CSV / Parquet, string labels) into the OGB WikiKG90Mv2 layout.

Ids: entity id = position of the label in the sorted set of all labels of train, valid and test;
relation id = position in the sorted set of training relations. Entities first seen in valid/test are
allowed (they have no training triples); a valid/test relation unknown in training is an error.

Writes ``ROOT/wikikg90m-v2/{processed/*.npy, meta.pt, RELEASE_v1.txt}``, the label maps
``ROOT/wikikg90m-v2/mapping-kge/{entities,relations}.parquet`` (columns id, label; not ``mapping/``,
which ogb deletes), and, when the test file has tails, ``ROOT/mini-answers/test-dev_t.npy`` and
``test-challenge_t.npy``. test-challenge_hr holds the same queries as test-dev_hr (user graphs have
one test split; ogb's 15000/10000 submission counts do not apply to them).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from kge.atomic import atomic_path, save_npy
from kge.data.layout import (
    PROCESSED_DIRNAME,
    SPLIT_FILES,
    answers_dir,
    dataset_dir,
    remove_marker,
    write_marker,
    write_meta,
    write_split_arrays,
)
from kge.errors import KgeInputError

MAPPING_DIRNAME = "mapping-kge"
FORMATS = {".tsv": "tsv", ".txt": "tsv", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def _format_of(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in ("tsv", "csv", "parquet"):
            raise KgeInputError(f"{path}: format {fmt!r}; expected tsv, csv or parquet")
        return fmt
    suffixes = [s for s in path.suffixes if s not in (".gz", ".bz2", ".zst", ".xz")]
    ext = suffixes[-1].lower() if suffixes else ""
    if ext not in FORMATS:
        raise KgeInputError(f"{path}: cannot tell the format from {ext!r}; expected .tsv, .csv or .parquet (or pass fmt)")
    return FORMATS[ext]


def read_triples(path: str | os.PathLike, fmt: str | None = None, sep: str | None = None,
                 columns=("head", "relation", "tail"), allow_two: bool = False) -> pd.DataFrame:
    """Read one split as a DataFrame of strings with columns ``columns`` (tail may be absent if allow_two).

    TSV/CSV: no header by default; a first row equal to the column names is taken as a header.
    Parquet: the named columns if present, else exactly 3 (or 2) columns by position.
    """
    path = Path(path)
    if not path.is_file():
        raise KgeInputError(f"{path}: missing file; expected {'/'.join(columns)} triples")
    kind = _format_of(path, fmt)
    ok_widths = (2, 3) if allow_two else (3,)
    if kind == "parquet":
        try:
            df = pd.read_parquet(path)
        except Exception as exc:
            raise KgeInputError(f"{path}: cannot read as Parquet ({exc})")
        if all(c in df.columns for c in columns):
            df = df[list(columns)]
        elif allow_two and all(c in df.columns for c in columns[:2]):
            df = df[list(columns[:2])]
        elif df.shape[1] not in ok_widths:
            raise KgeInputError(f"{path}: {df.shape[1]} columns {list(df.columns)}; expected {len(columns)} columns {list(columns)}")
    else:
        delim = sep if sep is not None else ("\t" if kind == "tsv" else ",")
        try:
            df = pd.read_csv(path, sep=delim, header=None, dtype=str, keep_default_na=False, na_filter=False,
                             engine="c", quoting=3 if kind == "tsv" else 0)
        except pd.errors.EmptyDataError:
            raise KgeInputError(f"{path}: empty split; expected at least one {'/'.join(columns)} row")
        except Exception as exc:
            raise KgeInputError(f"{path}: cannot parse as {kind.upper()} ({exc})")
        if df.shape[1] not in ok_widths:
            raise KgeInputError(f"{path}: {df.shape[1]} columns; expected {len(columns)} ({'/'.join(columns)}) separated by {delim!r}")
        if len(df) and [str(v).strip().lower() for v in df.iloc[0]] == [c.lower() for c in columns[:df.shape[1]]]:
            df = df.iloc[1:]  # header row
    df = df.copy()
    df.columns = list(columns[:df.shape[1]])
    if len(df) == 0:
        raise KgeInputError(f"{path}: empty split; expected at least one {'/'.join(columns)} row")
    for col in df.columns:
        df[col] = df[col].astype(str)
    return df.reset_index(drop=True)


def _codes(labels: pd.Series, vocab: np.ndarray) -> np.ndarray:
    """Ids of labels in the sorted vocab (n,) -> (n,) int64; -1 where unknown."""
    idx = np.searchsorted(vocab, labels.to_numpy(dtype=object).astype(str))
    idx = np.minimum(idx, len(vocab) - 1)
    hit = vocab[idx] == labels.to_numpy(dtype=object).astype(str)
    return np.where(hit, idx, -1).astype(np.int64)


def _load_features(path: Path, labels: np.ndarray) -> np.ndarray:
    """Features keyed by label: Parquet (label column + list column or numeric columns) or .npz (labels, features)."""
    if not path.is_file():
        raise KgeInputError(f"{path}: missing entity feature file")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if "labels" not in z or "features" not in z:
                raise KgeInputError(f"{path}: expected arrays 'labels' (E,) and 'features' (E, F)")
            keys, feats = z["labels"].astype(str), np.asarray(z["features"], dtype=np.float32)
    else:
        df = pd.read_parquet(path)
        key_col = "label" if "label" in df.columns else df.columns[0]
        keys = df[key_col].astype(str).to_numpy()
        rest = [c for c in df.columns if c != key_col]
        if len(rest) == 1 and df[rest[0]].dtype == object:
            feats = np.stack(df[rest[0]].to_numpy()).astype(np.float32)
        else:
            feats = df[rest].to_numpy(dtype=np.float32)
    if feats.ndim != 2 or len(feats) != len(keys):
        raise KgeInputError(f"{path}: features of shape {feats.shape} for {len(keys)} labels; expected (E, F)")
    order = np.argsort(keys)
    keys, feats = keys[order], feats[order]
    pos = np.minimum(np.searchsorted(keys, labels), len(keys) - 1)
    missing = keys[pos] != labels
    if missing.any():
        raise KgeInputError(f"{path}: no feature for entity {str(labels[missing][0])!r} ({int(missing.sum())} missing)")
    if not np.isfinite(feats).all():
        raise KgeInputError(f"{path}: non-finite feature values")
    return feats[pos].astype(np.float16)


def _write_random_features(path: Path, rows: int, dim: int, rng: np.random.Generator) -> None:
    """Deterministic N(0, 1/dim) float16 rows (unit norm on average), streamed into an .npy memmap."""
    with atomic_path(path, suffix=".npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(rows, dim))
        step = max(1, (64 << 20) // (4 * dim))
        for s in range(0, rows, step):
            n = min(step, rows - s)
            out[s:s + n] = rng.standard_normal((n, dim), dtype=np.float32) / np.float32(np.sqrt(dim))
        out.flush()
        del out


def import_triples(train, valid, test, out_root, fmt: str | None = None, sep: str | None = None,
                   columns=("head", "relation", "tail"), feature_dim: int = 768, seed: int = 0,
                   entity_features: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Convert labelled triples to the OGB layout under ``out_root``; return the dataset folder.

    train/valid: (h, r, t) rows; test: (h, r) or (h, r, t) rows. Without ``entity_features`` the
    entity and relation features are random Gaussian float16 (seeded): the model then learns from its
    trainable embedding e_S alone (M e_F is a fixed random code).
    """
    def log(msg):
        if progress:
            print(f"import: {msg}", file=sys.stderr)

    tr = read_triples(train, fmt, sep, columns)
    va = read_triples(valid, fmt, sep, columns)
    te = read_triples(test, fmt, sep, columns, allow_two=True)
    h, r, t = columns
    log(f"read {len(tr)} train, {len(va)} valid, {len(te)} test rows")

    rel_vocab = np.array(sorted(set(tr[r])), dtype=str)
    ent_vocab = np.array(sorted(set(tr[h]) | set(tr[t]) | set(va[h]) | set(va[t]) | set(te[h])
                                | (set(te[t]) if t in te.columns else set())), dtype=str)
    for df, path in ((va, valid), (te, test)):
        rid = _codes(df[r], rel_vocab)
        if (rid < 0).any():
            bad = df[r].to_numpy()[rid < 0][0]
            raise KgeInputError(f"{path}: relation {str(bad)!r} does not occur in the training file {train}")

    def hrt(df):
        cols = [_codes(df[c], ent_vocab) if c != r else _codes(df[c], rel_vocab) for c in df.columns]
        return np.stack(cols, axis=1)

    train_hrt, val_hrt, test_arr = hrt(tr), hrt(va), hrt(te)
    E, R = len(ent_vocab), len(rel_vocab)

    ds = dataset_dir(out_root)
    ds.mkdir(parents=True, exist_ok=True)
    remove_marker(ds)
    rng = np.random.default_rng(seed)
    proc = ds / PROCESSED_DIRNAME
    if entity_features is not None:
        write_split_arrays(ds, entity_feat=_load_features(Path(entity_features), ent_vocab))
    else:
        _write_random_features(proc / SPLIT_FILES["entity_feat"], E, feature_dim, rng)
    feat_dim = np.load(proc / SPLIT_FILES["entity_feat"], mmap_mode="r").shape[1]
    relation_feat = (rng.standard_normal((R, feat_dim), dtype=np.float32) / np.sqrt(feat_dim)).astype(np.float16)
    write_split_arrays(
        ds, train_hrt=train_hrt, relation_feat=relation_feat, val_hr=val_hrt[:, :2], val_t=val_hrt[:, 2],
        test_dev_hr=test_arr[:, :2], test_challenge_hr=test_arr[:, :2],
    )
    if test_arr.shape[1] == 3:
        ans = answers_dir(out_root)
        save_npy(ans / "test-dev_t.npy", np.ascontiguousarray(test_arr[:, 2]))
        save_npy(ans / "test-challenge_t.npy", np.ascontiguousarray(test_arr[:, 2]))
    mapping = ds / MAPPING_DIRNAME
    for name, vocab in (("entities", ent_vocab), ("relations", rel_vocab)):
        frame = pd.DataFrame({"id": np.arange(len(vocab), dtype=np.int64), "label": vocab.astype(object)})
        with atomic_path(mapping / f"{name}.parquet") as tmp:
            frame.to_parquet(tmp, index=False)
    write_meta(ds, E, R)
    write_marker(ds)
    log(f"wrote {ds} ({E} entities, {R} relations)")
    return ds


def load_label_maps(root: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(entity labels (E,), relation labels (R,)) indexed by id, from mapping-kge/."""
    mapping = dataset_dir(root) / MAPPING_DIRNAME
    out = []
    for name in ("entities", "relations"):
        path = mapping / f"{name}.parquet"
        if not path.is_file():
            raise KgeInputError(f"{path}: missing label map; expected columns id, label")
        df = pd.read_parquet(path).sort_values("id")
        out.append(df["label"].astype(str).to_numpy())
    return out[0], out[1]
