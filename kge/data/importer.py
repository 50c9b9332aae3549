"""Import a user knowledge graph (TSV / CSV / Parquet, string labels) into the OGB WikiKG90Mv2 layout.

Ids: entity id = position of the label in the sorted set of all labels of train, valid and test;
relation id = position in the sorted set of training relations.

Writes ``ROOT/wikikg90m-v2/{processed/*.npy, meta.pt, RELEASE_v1.txt}``, the label maps
``ROOT/wikikg90m-v2/mapping-kge/{entities,relations}.parquet`` (columns id, label; not ``mapping/``,
which ogb deletes), a summary ``mapping-kge/import.json`` and, when the test file has tails,
``ROOT/mini-answers/test-dev_t.npy`` and ``test-challenge_t.npy``. test-challenge_hr holds the same
queries as test-dev_hr (user graphs have one test split; ogb's 15000/10000 submission counts do not
apply to them).

Input treatment (every refusal is a one-line ``KgeInputError`` naming the file and the 1-based line
of the file as an editor shows it; Parquet files name the 1-based row instead):

- Encoding: UTF-8 (a leading byte-order mark is ignored). Other bytes are refused (file, line, byte offset).
- TSV (.tsv, .txt): fields separated by one tab, no quoting (quotes are part of the label). CSV
  (.csv): comma-separated with ``"`` quoting, so a quoted label may hold commas, tabs or quotes
  (``""``). A line with another field count is refused; if it holds a tab, comma or semicolon
  instead, the error says the file mixes separators. Gzip/bzip2/xz files (.gz, .bz2, .xz) are read too.
- Labels are taken verbatim (no trimming, ``\\r`` of Windows line ends aside); an empty label is refused.
- Empty (or blank) lines are skipped. A first row that names the columns (head/relation/tail,
  h/r/t, subject/predicate/object, s/p/o, source/relation/target; any case) is a header and skipped.
- Train, valid and test (with tails): duplicate triples are dropped, counted on stderr and in import.json.
  Test queries without tails are kept as they are, in file order (prediction row i answers query row i).
- Self-loops (h == t) are legal triples and kept; their count is reported.
- A valid triple that also occurs in train, and a test triple that occurs in train or valid, is
  dropped (the usual filtered-split convention: a leaked triple would be scored as unseen), with a
  count and the first such line on stderr. A split left empty by that is refused.
- A valid/test relation that never occurs in train is refused (file, line): no embedding could be learned.
- An entity first seen in valid/test is kept (its id exists, it has no training triple, so its
  embedding stays at its initial value); the count is printed and recorded.
- No test file: test-dev_hr / test-challenge_hr hold 0 rows (validation is then reported alone).
  A test file of (head, relation) rows has no tails: no answers are written.
- Features: ``entity_features`` (Parquet or .npz keyed by label) is used when given. Without it the
  entity and relation features are ``feature_dim``-wide (default ``DEFAULT_FEATURE_DIM``) seeded random
  Gaussian float16 rows: they carry no information, so train such graphs with ``features.use: false``
  (benchmarks/import_features.md measures the 768-wide alternative: slower, no better).

Interruption: the completion marker (and a stale import.json / test answers) is removed before the
first file is read and the marker is written last, after import.json, so a refused, failed or killed
import never leaves a folder that looks complete.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import lzma
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kge.common.atomic import atomic_path, save_json, save_npy
from kge.common.errors import KgeInputError
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

MAPPING_DIRNAME = "mapping-kge"
IMPORT_SUMMARY = "import.json"
FORMATS = {".tsv": "tsv", ".txt": "tsv", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
# Random features carry no information; a narrow width keeps the (unused or learned) projection cheap.
DEFAULT_FEATURE_DIM = 16
HEADER_NAMES = {
    ("head", "relation", "tail"),
    ("h", "r", "t"),
    ("subject", "predicate", "object"),
    ("s", "p", "o"),
    ("source", "relation", "target"),
    ("head", "rel", "tail"),
}
OTHER_SEPARATORS = {"\t": "tab", ",": "comma", ";": "semicolon"}


@dataclass
class Split:
    """One parsed file: label columns, the 1-based line (row for Parquet) of each row, and what was skipped."""

    path: Path
    columns: dict[str, np.ndarray]
    lines: np.ndarray
    unit: str = "line"
    header: bool = False
    blank_lines: int = 0

    def __len__(self) -> int:
        return len(self.lines)

    def where(self, i: int) -> str:
        return f"{self.path}:{self.lines[i]}" if self.unit == "line" else f"{self.path}: row {self.lines[i]}"

    def take(self, keep: np.ndarray) -> Split:
        return Split(
            self.path,
            {k: v[keep] for k, v in self.columns.items()},
            self.lines[keep],
            self.unit,
            self.header,
            self.blank_lines,
        )


def _format_of(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in ("tsv", "csv", "parquet"):
            raise KgeInputError(f"{path}: format {fmt!r}; expected tsv, csv or parquet")
        return fmt
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in COMPRESSED]
    ext = suffixes[-1] if suffixes else ""
    if ext not in FORMATS:
        raise KgeInputError(
            f"{path}: cannot tell the format from {ext!r}; expected .tsv, .csv or .parquet (or pass fmt)"
        )
    return FORMATS[ext]


def _read_text(path: Path) -> str:
    """The file decoded as UTF-8 (BOM dropped); other bytes are refused naming the line and byte offset."""
    opener = COMPRESSED.get(path.suffix.lower())
    try:
        if opener is not None:
            with opener(path, "rb") as fh:
                data = fh.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise KgeInputError(f"{path}: cannot be read ({exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise KgeInputError(
            f"{path}:{line}: not UTF-8 (byte {data[exc.start]:#04x} at byte offset {exc.start}); "
            "re-encode the file as UTF-8"
        ) from None


def _is_header(fields: list[str], columns) -> bool:
    names = tuple(f.strip().lower() for f in fields)
    known = HEADER_NAMES | {tuple(c.lower() for c in columns)}
    return any(names == k[: len(names)] for k in known)


def _parse_text(path: Path, kind: str, sep: str | None, columns, widths) -> Split:
    text = _read_text(path)
    delim = sep if sep is not None else ("\t" if kind == "tsv" else ",")
    if kind == "tsv":
        # Plain split: no quoting, so a quote is part of the label. (line number, fields) per line.
        lines = text.split("\n")
        if lines[-1] == "":
            lines.pop()  # the newline ending the last line does not start another
        rows = ((n, line.rstrip("\r").split(delim)) for n, line in enumerate(lines, 1))
    else:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delim, strict=True)

        def csv_rows():
            start = 1
            try:
                for fields in reader:
                    yield start, fields
                    start = reader.line_num + 1
            except csv.Error as exc:
                raise KgeInputError(f"{path}:{reader.line_num}: cannot parse as CSV ({exc})") from None

        rows = csv_rows()
    width = None
    cols: list[list[str]] = [[] for _ in columns]
    lines: list[int] = []
    header = False
    blank = 0
    for n, fields in rows:
        if len(fields) <= 1 and (not fields or not fields[0].strip()):
            blank += 1
            continue
        if width is None:
            if len(fields) in widths:
                width = len(fields)
                if _is_header(fields, columns):
                    header = True
                    continue
            # else: fall through to the field-count error below
        if len(fields) != (width or widths[-1]):
            want = width or "/".join(map(str, widths))
            text_line = delim.join(fields)
            others = [name for ch, name in OTHER_SEPARATORS.items() if ch != delim and ch in text_line]
            hint = f"; it holds a {others[0]} instead: the file mixes separators" if others else ""
            raise KgeInputError(
                f"{path}:{n}: {len(fields)} field{'s' * (len(fields) != 1)}; expected {want} "
                f"({'/'.join(columns[: width or widths[-1]])}) separated by {delim!r}{hint}"
            )
        for i, f in enumerate(fields):
            if f == "":
                raise KgeInputError(f"{path}:{n}: empty {columns[i]} label")
            cols[i].append(f)
        lines.append(n)
    width = width or widths[-1]
    return Split(
        path,
        {c: np.array(cols[i], dtype=object) for i, c in enumerate(columns[:width])},
        np.asarray(lines, dtype=np.int64),
        "line",
        header,
        blank,
    )


def _parse_parquet(path: Path, columns, widths) -> Split:
    try:
        df = pd.read_parquet(path)
    except Exception as exc:
        raise KgeInputError(f"{path}: cannot read as Parquet ({exc})") from None
    if all(c in df.columns for c in columns):
        df = df[list(columns)]
    elif len(widths) > 1 and all(c in df.columns for c in columns[:2]):
        df = df[list(columns[:2])]
    elif df.shape[1] not in widths:
        raise KgeInputError(
            f"{path}: {df.shape[1]} columns {list(df.columns)}; expected {len(columns)} columns {list(columns)}"
        )
    out = {}
    for name, col in zip(columns, df.columns):
        values = df[col]
        bad = values.isna().to_numpy() | (values.astype(str) == "").to_numpy()
        if bad.any():
            raise KgeInputError(f"{path}: row {int(np.flatnonzero(bad)[0]) + 1}: empty {name} label")
        out[name] = values.astype(str).to_numpy(dtype=object)
    return Split(path, out, np.arange(1, len(df) + 1, dtype=np.int64), "row")


def read_split(
    path: str | os.PathLike,
    fmt: str | None = None,
    sep: str | None = None,
    columns=("head", "relation", "tail"),
    allow_two: bool = False,
) -> Split:
    """Parse one split into label columns with the 1-based line of each row (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise KgeInputError(f"{path}: missing file; expected {'/'.join(columns)} triples")
    kind = _format_of(path, fmt)
    widths = (2, 3) if allow_two else (3,)
    split = (
        _parse_parquet(path, columns, widths) if kind == "parquet" else _parse_text(path, kind, sep, columns, widths)
    )
    if len(split) == 0:
        raise KgeInputError(f"{path}: empty split; expected at least one {'/'.join(columns)} row")
    return split


def read_triples(
    path: str | os.PathLike,
    fmt: str | None = None,
    sep: str | None = None,
    columns=("head", "relation", "tail"),
    allow_two: bool = False,
) -> pd.DataFrame:
    """One split as a DataFrame of string labels with columns ``columns`` (tail may be absent if allow_two)."""
    split = read_split(path, fmt, sep, columns, allow_two)
    return pd.DataFrame({k: v.astype(str) for k, v in split.columns.items()})


def _codes(labels: np.ndarray, vocab: np.ndarray) -> np.ndarray:
    """Ids of labels in the sorted vocab (n,) -> (n,) int64; -1 where unknown."""
    labels = np.asarray(labels, dtype=object).astype(str)
    idx = np.minimum(np.searchsorted(vocab, labels), len(vocab) - 1)
    return np.where(vocab[idx] == labels, idx, -1).astype(np.int64)


def _in(rows: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(n, w) id rows -> (n,) bool: the row occurs in reference (m, w)."""
    if len(reference) == 0 or len(rows) == 0:
        return np.zeros(len(rows), dtype=bool)
    index = pd.MultiIndex.from_arrays([reference[:, i] for i in range(reference.shape[1])])
    return pd.MultiIndex.from_arrays([rows[:, i] for i in range(rows.shape[1])]).isin(index)


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
            out[s : s + n] = rng.standard_normal((n, dim), dtype=np.float32) / np.float32(np.sqrt(dim))
        out.flush()
        del out


def _drop(split: Split, ids: np.ndarray, drop: np.ndarray, what: str, log) -> tuple[Split, np.ndarray, int]:
    """Remove the rows marked in drop, logging the count and the first such line."""
    n = int(drop.sum())
    if n:
        log(f"{split.path}: dropped {n} {what} (first at {split.where(int(np.flatnonzero(drop)[0]))})")
        keep = ~drop
        split, ids = split.take(keep), ids[keep]
        if len(split) == 0:
            raise KgeInputError(f"{split.path}: every row is {what}; nothing is left to evaluate on")
    return split, ids, n


def import_triples(
    train,
    valid,
    test,
    out_root,
    fmt: str | None = None,
    sep: str | None = None,
    columns=("head", "relation", "tail"),
    feature_dim: int = DEFAULT_FEATURE_DIM,
    seed: int = 0,
    entity_features: str | os.PathLike | None = None,
    progress: bool = True,
) -> Path:
    """Convert labelled triples to the OGB layout under ``out_root``; return the dataset folder.

    train/valid: (h, r, t) rows; test: (h, r) or (h, r, t) rows, or None. Treatment of duplicates,
    leaks, unseen labels etc.: see the module docstring. Without ``entity_features`` the entity and
    relation features are seeded random Gaussian float16 rows of width ``feature_dim``.
    """

    def log(msg):
        if progress:
            print(f"import: {msg}", file=sys.stderr)

    if feature_dim < 1:
        raise KgeInputError(f"feature_dim: expected a positive width, got {feature_dim}")
    ds = dataset_dir(out_root)
    # Nothing may look complete while (or after) this import fails: marker, summary and old answers go first.
    remove_marker(ds)
    for stale in (
        ds / MAPPING_DIRNAME / IMPORT_SUMMARY,
        answers_dir(out_root) / "test-dev_t.npy",
        answers_dir(out_root) / "test-challenge_t.npy",
    ):
        stale.unlink(missing_ok=True)

    h, r, t = columns
    tr = read_split(train, fmt, sep, columns)
    va = read_split(valid, fmt, sep, columns)
    te = read_split(test, fmt, sep, columns, allow_two=True) if test is not None else None
    test_has_tails = te is not None and t in te.columns
    for s in (tr, va, te):
        if s is not None and (s.header or s.blank_lines):
            log(f"{s.path}: skipped {'a header row and ' if s.header else ''}{s.blank_lines} empty lines")
    log(f"read {len(tr)} train, {len(va)} valid, {len(te) if te is not None else 'no'} test rows")

    rel_vocab = np.array(sorted(set(tr.columns[r])), dtype=str)
    train_ents = set(tr.columns[h]) | set(tr.columns[t])
    other_ents = set()
    for s in (va, te):
        if s is None:
            continue
        rid = _codes(s.columns[r], rel_vocab)
        if (rid < 0).any():
            i = int(np.flatnonzero(rid < 0)[0])
            raise KgeInputError(
                f"{s.where(i)}: relation {str(s.columns[r][i])!r} does not occur in the training "
                f"file {tr.path}; a relation needs training triples"
            )
        other_ents |= set(s.columns[h]) | (set(s.columns[t]) if t in s.columns else set())
    ent_vocab = np.array(sorted(train_ents | other_ents), dtype=str)
    unseen = len(other_ents - train_ents)
    if unseen:
        log(
            f"{unseen} entities occur only in valid/test: they have no training triple, their embeddings stay "
            "at their initial values"
        )

    def ids(s: Split) -> np.ndarray:
        return np.stack([_codes(s.columns[c], rel_vocab if c == r else ent_vocab) for c in s.columns], axis=1)

    train_hrt, val_hrt = ids(tr), ids(va)
    dropped = {}
    tr, train_hrt, dropped["train_duplicates"] = _drop(
        tr, train_hrt, pd.DataFrame(train_hrt).duplicated().to_numpy(), "duplicate triples", log
    )
    va, val_hrt, dropped["valid_duplicates"] = _drop(
        va, val_hrt, pd.DataFrame(val_hrt).duplicated().to_numpy(), "duplicate triples", log
    )
    va, val_hrt, dropped["valid_in_train"] = _drop(va, val_hrt, _in(val_hrt, train_hrt), "triples also in train", log)
    if te is not None:
        test_arr = ids(te)
        if test_has_tails:
            te, test_arr, dropped["test_duplicates"] = _drop(
                te, test_arr, pd.DataFrame(test_arr).duplicated().to_numpy(), "duplicate triples", log
            )
            te, test_arr, dropped["test_in_train"] = _drop(
                te, test_arr, _in(test_arr, train_hrt), "triples also in train", log
            )
            te, test_arr, dropped["test_in_valid"] = _drop(
                te, test_arr, _in(test_arr, val_hrt), "triples also in valid", log
            )
    else:
        test_arr = np.zeros((0, 2), dtype=np.int64)
    self_loops = {
        name: int((a[:, 0] == a[:, 2]).sum())
        for name, a in (("train", train_hrt), ("valid", val_hrt), ("test", test_arr if test_has_tails else None))
        if a is not None
    }
    if any(self_loops.values()):
        log(f"kept self-loops (head == tail): {self_loops}")
    E, R = len(ent_vocab), len(rel_vocab)

    ds.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    proc = ds / PROCESSED_DIRNAME
    if entity_features is not None:
        write_split_arrays(ds, entity_feat=_load_features(Path(entity_features), ent_vocab))
    else:
        _write_random_features(proc / SPLIT_FILES["entity_feat"], E, feature_dim, rng)
    feat_dim = int(np.load(proc / SPLIT_FILES["entity_feat"], mmap_mode="r").shape[1])
    relation_feat = (rng.standard_normal((R, feat_dim), dtype=np.float32) / np.sqrt(feat_dim)).astype(np.float16)
    write_split_arrays(
        ds,
        train_hrt=train_hrt,
        relation_feat=relation_feat,
        val_hr=val_hrt[:, :2],
        val_t=val_hrt[:, 2],
        test_dev_hr=test_arr[:, :2],
        test_challenge_hr=test_arr[:, :2],
    )
    if test_has_tails:
        ans = answers_dir(out_root)
        save_npy(ans / "test-dev_t.npy", np.ascontiguousarray(test_arr[:, 2]))
        save_npy(ans / "test-challenge_t.npy", np.ascontiguousarray(test_arr[:, 2]))
    mapping = ds / MAPPING_DIRNAME
    for name, vocab in (("entities", ent_vocab), ("relations", rel_vocab)):
        frame = pd.DataFrame({"id": np.arange(len(vocab), dtype=np.int64), "label": vocab.astype(object)})
        with atomic_path(mapping / f"{name}.parquet") as tmp:
            frame.to_parquet(tmp, index=False)
    write_meta(ds, E, R)
    save_json(
        mapping / IMPORT_SUMMARY,
        {
            "has_test": te is not None,
            "test_has_tails": test_has_tails,
            "has_features": entity_features is not None,
            "feature_dim": feat_dim,
            "num_entities": E,
            "num_relations": R,
            "triples": {"train": len(train_hrt), "valid": len(val_hrt), "test": len(test_arr)},
            "dropped": dropped,
            "self_loops": self_loops,
            "entities_only_in_valid_test": unseen,
            "header_rows": {
                name: s.header for name, s in (("train", tr), ("valid", va), ("test", te)) if s is not None
            },
            "empty_lines": {
                name: s.blank_lines for name, s in (("train", tr), ("valid", va), ("test", te)) if s is not None
            },
            "files": {name: str(s.path) for name, s in (("train", tr), ("valid", va), ("test", te)) if s is not None},
        },
    )
    write_marker(ds)  # last: the folder is complete
    log(f"wrote {ds} ({E} entities, {R} relations, {len(train_hrt)} train, {len(val_hrt)} valid, {len(test_arr)} test)")
    return ds


def read_import_summary(root: str | os.PathLike) -> dict | None:
    """mapping-kge/import.json of an imported dataset, or None (not an import, or an older one)."""
    import json

    path = dataset_dir(root) / MAPPING_DIRNAME / IMPORT_SUMMARY
    return json.loads(path.read_text()) if path.is_file() else None


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
