"""Using a trained model: top-K answers to one query by label, and the embeddings exported by label.

``kge.load_model(path)`` finds everything a model.pt needs from its place in a run's results
(``RESULTS/models/NAME/model.pt`` -> ``RESULTS/shards`` -> the dataset ROOT named by
``shard_meta.json``) and returns a :class:`TrainedModel`::

    model = kge.load_model("results/models/transe")
    model.predict_tails("alice", "knows", k=10)        # DataFrame: label, id, score, known

Ids in and out are the user's labels (``ROOT/wikikg90m-v2/mapping-kge/*.parquet``, written by
``kge data import``). WikiKG90Mv2 and its miniature have no label map: there an entity or relation is
given as its integer id (``"123"`` or ``123``) and printed as that id's string.

"Known" triples are those of train, valid and the test split whose tails are present
(``ROOT/mini-answers``); they are found by a chunked scan of the arrays (bounded memory, one pass per
query, no index).
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import numpy as np
import torch

from kge.common.errors import KgeInputError
from kge.common.tables import text_table

# difflib over more labels than this is too slow for an error message; then no suggestion.
SUGGEST_LIMIT = 200_000
HEAD_MODES = ("auto", "direct", "inverse")


def resolve_paths(
    path: str | Path, shard_dir: str | Path | None = None, root: str | Path | None = None
) -> tuple[Path, Path, Path]:
    """model.pt or its directory -> (model.pt, shard directory, dataset ROOT).

    Defaults: the shards of a run are ``RESULTS/shards`` for ``RESULTS/models/NAME/model.pt``; ROOT is
    the folder whose ``wikikg90m-v2/processed/train_hrt.npy`` the shards were cut from.
    """
    from kge.bess.shard import read_shard_meta
    from kge.train.checkpoint import MODEL_NAME

    path = Path(path)
    model_path = path / MODEL_NAME if path.is_dir() else path
    if not model_path.is_file():
        raise KgeInputError(f"{model_path}: missing trained model; run `kge train` first (or pass the model.pt path)")
    if shard_dir is None:
        model_dir = model_path.resolve().parent
        if model_dir.parent.name != "models":
            raise KgeInputError(
                f"{model_path}: not under RESULTS/models/NAME/, so its shards cannot be found; pass shard_dir"
            )
        shard_dir = model_dir.parent.parent / "shards"
    shard_dir = Path(shard_dir)
    if root is None:
        meta = read_shard_meta(shard_dir)
        try:
            root = Path(meta["source"]["train_hrt"]).parents[2]  # ROOT/wikikg90m-v2/processed/train_hrt.npy
        except (KeyError, TypeError, IndexError):
            raise KgeInputError(
                f"{shard_dir / 'shard_meta.json'}: no source.train_hrt to find the dataset from; pass root"
            ) from None
    return model_path, shard_dir, Path(root)


def _device(device: torch.device | str | None) -> torch.device | None:
    """A user's device ("auto", "cpu", "cuda", "cuda:1" or a torch.device) -> torch.device; None stays None
    (the model config's device)."""
    from kge.dist.device import resolve_device

    if device is None or isinstance(device, torch.device):
        return device
    if device in ("auto", "cpu", "cuda"):
        return resolve_device(device)
    try:
        return torch.device(device)
    except RuntimeError:
        raise KgeInputError(f"device {device!r}: expected auto, cpu, cuda or cuda:N") from None


class TrainedModel:
    """A trained model ready for queries by label: the model, its partition and features, the label
    maps and the known triples.

    ``num_entities`` E, ``num_relations`` R (the dataset's; a model trained with inverse relations
    holds 2R relation vectors, r + R the reverse of r). ``entity_labels`` (E,) and
    ``relation_labels`` (R,) are str arrays indexed by id, or None when the graph has no label map.
    """

    def __init__(
        self,
        path: str | Path,
        shard_dir: str | Path | None = None,
        root: str | Path | None = None,
        device: torch.device | str | None = None,
    ):
        from kge.bess.features import FeatureStore
        from kge.predict.predictor import load_model as load_torch_model
        from kge.table.quantize import quantized_features
        from kge.train.checkpoint import load_trained_partition

        self.model_path, self.shard_dir, self.root = resolve_paths(path, shard_dir, root)
        device = _device(device)
        self.model, self.saved, self.device = load_torch_model(self.model_path, device)
        self.config = self.model.config  # ModelConfig
        self.partition = load_trained_partition(
            self.shard_dir, self.saved, self.model_path, hint="see `kge reshard` or pass shard_dir"
        )
        # Only a model with features reads them (a large feature table is gigabytes).
        self.features = (
            quantized_features(FeatureStore(self.shard_dir, self.partition.n_shards), self.saved)
            if self.model.use_features
            else None
        )
        self.num_entities = int(self.saved["num_entities"])
        self.inverse_relations = bool(self.config.inverse_relations)
        model_relations = int(self.saved["num_relations"])
        self.num_relations = model_relations // 2 if self.inverse_relations else model_relations
        self.entity_labels, self.relation_labels, self.label_dir = self._labels()
        self._index: dict[str, object] = {}
        self._predictors: dict[str, object] = {}
        self._sources = None

    # ----------------------------------------------------------------- labels

    def _labels(self):
        from kge.data.importer import MAPPING_DIRNAME, load_label_maps
        from kge.data.layout import dataset_dir

        mapping = dataset_dir(self.root) / MAPPING_DIRNAME
        if not mapping.is_dir():
            return None, None, mapping  # WikiKG90Mv2 and the miniature: ids are the labels
        entities, relations = load_label_maps(self.root)
        if len(entities) != self.num_entities or len(relations) != self.num_relations:
            raise KgeInputError(
                f"{mapping}: {len(entities)} entity and {len(relations)} relation labels, but "
                f"{self.model_path} has {self.num_entities} and {self.num_relations}; pass the dataset's root"
            )
        return entities, relations, mapping

    def entity_label(self, ids) -> list[str]:
        """Entity ids (n,) -> their labels (the id's string without a label map)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        return [str(i) for i in ids] if self.entity_labels is None else [str(s) for s in self.entity_labels[ids]]

    def relation_label(self, ids) -> list[str]:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        return [str(i) for i in ids] if self.relation_labels is None else [str(s) for s in self.relation_labels[ids]]

    def entity_id(self, label) -> int:
        """One entity label (or, without a label map, its integer id) -> its id."""
        return self._lookup("entity", label, self.entity_labels, self.num_entities)

    def relation_id(self, label) -> int:
        """One relation label (or id without a label map) -> its id in [0, R) (never an inverse r + R)."""
        return self._lookup("relation", label, self.relation_labels, self.num_relations)

    def _lookup(self, kind: str, label, labels: np.ndarray | None, count: int) -> int:
        if labels is None:
            text = str(label).strip()
            if not text.lstrip("-").isdigit() or not 0 <= int(text) < count:
                raise KgeInputError(
                    f"{kind} {label!r}: this graph has no label map ({self.label_dir} missing), so a {kind} "
                    f"is given by its integer id in [0, {count})"
                )
            return int(text)
        if kind not in self._index:
            import pandas as pd

            self._index[kind] = pd.Index(labels)  # one hash table per kind, built on first use
        index = self._index[kind]
        position = index.get_indexer([str(label)])[0]
        if position < 0:
            hint = ""
            if len(labels) <= SUGGEST_LIMIT:
                close = difflib.get_close_matches(str(label), list(labels), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
            raise KgeInputError(f"{kind} {label!r}: not in the label map {self.label_dir}{hint}")
        if not index.is_unique:  # imported labels are unique; guard against a hand-edited map
            position = int(np.flatnonzero(np.asarray(labels) == str(label))[0])
        return int(position)

    # ---------------------------------------------------------- known triples

    def known(self, anchor: int, relation: int, direction: str) -> np.ndarray:
        """Ids of every entity e with a known triple (anchor, relation, e) for direction "tail", or
        (e, relation, anchor) for "head" -> sorted unique int64 (n,): the evaluation's filter set
        (train, valid and every test split with answers), read in chunks."""
        from kge.predict.evaluate_model import filter_sources
        from kge.predict.evaluation import known_answers, query_keys

        if self._sources is None:
            self._sources = filter_sources(self.root)
        num_relations = self.num_relations
        keys = query_keys(np.array([anchor]), np.array([relation]), num_relations)
        _, entities = known_answers(keys, self._sources, direction, num_relations)
        return np.unique(entities)

    # ------------------------------------------------------------- prediction

    def predictor(self, direction: str):
        """The kge.predict.predictor.Predictor of ``direction`` ("tail" or "head"), built on first use (it caches
        every encoded candidate when they fit, see kge.predict.predictor.TAIL_CACHE_LIMIT_BYTES)."""
        from kge.predict.predictor import Predictor

        if direction not in self._predictors:
            self._predictors[direction] = Predictor(
                self.model,
                self.features,
                self.partition,
                self.device,
                self.config.predict_block,
                direction=direction,
            )
        return self._predictors[direction]

    def _clamp_k(self, k) -> int:
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise KgeInputError(f"k: expected a positive integer, got {k!r}")
        return int(min(k, self.num_entities))

    def _answer(
        self,
        direction: str,
        query: tuple[int, int],
        asked: str,
        anchor: int,
        relation: int,
        k: int,
        filter_known: bool,
        mark_known: bool,
    ):
        """Top-k of the Predictor of ``direction`` for ``query`` (its (anchor, relation id) row), with the
        known answers of the question ``asked`` ("tail": (anchor, relation, ?), "head": (?, relation,
        anchor)) marked or dropped -> DataFrame."""
        import pandas as pd

        k = self._clamp_k(k)
        known = self.known(anchor, relation, asked) if (filter_known or mark_known) else None
        # Ask for enough extra candidates that k remain after the known ones are dropped.
        want = min(self.num_entities, k + len(known)) if filter_known else k
        ids, scores = self.predictor(direction).topk(np.array([query], dtype=np.int64), want, query_batch=1)
        ids, scores = ids[0], scores[0]
        is_known = np.isin(ids, known) if known is not None else np.zeros(len(ids), dtype=bool)
        if filter_known:
            ids, scores, is_known = ids[~is_known][:k], scores[~is_known][:k], is_known[~is_known][:k]
        frame = pd.DataFrame({"label": self.entity_label(ids), "id": ids, "score": scores})
        if known is not None:
            frame["known"] = is_known
        return frame

    def predict_tails(self, head, relation, k: int = 10, filter_known: bool = False, mark_known: bool = True):
        """Best tails of (head, relation, ?) -> DataFrame with columns label, id, score (float32) and
        known (bool: a triple of train/valid/test), best first, at most k = min(k, E) rows.

        ``filter_known`` leaves out the known tails (k rows remain when there are enough entities);
        ``mark_known=False`` skips the scan of the known triples (and the column) on a huge graph.
        """
        h, r = self.entity_id(head), self.relation_id(relation)
        return self._answer("tail", (h, r), "tail", h, r, k, filter_known, mark_known)

    def predict_heads(
        self, relation, tail, k: int = 10, filter_known: bool = False, heads: str = "auto", mark_known: bool = True
    ):
        """Best heads of (?, relation, tail) -> DataFrame as ``predict_tails``.

        ``heads``: "direct" scores every candidate head h of (h, r, t) with the model's score function
        (``scoring.head_query_vectors``); "inverse" answers (t, r + R, ?) with the reverse relation that a
        model trained with ``inverse_relations`` learned; "auto" (default) is "inverse" for such a model,
        else "direct".
        """
        if heads not in HEAD_MODES:
            raise KgeInputError(f"heads: expected one of {', '.join(HEAD_MODES)}, got {heads!r}")
        if heads == "inverse" and not self.inverse_relations:
            raise KgeInputError(
                f"heads = 'inverse': {self.model_path} was not trained with inverse_relations; use 'direct'"
            )
        from kge.predict.evaluation import head_mode

        r, t = self.relation_id(relation), self.entity_id(tail)
        if head_mode(heads, self.inverse_relations) == "inverse":
            return self._answer("tail", (t, r + self.num_relations), "head", t, r, k, filter_known, mark_known)
        return self._answer("head", (t, r), "head", t, r, k, filter_known, mark_known)

    # ----------------------------------------------------------------- export

    @torch.no_grad()
    def encoded_entities(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """Entity ids (n,) -> {"table": e_S rows, "head": encoded in the head role, "tail": in the tail
        role}, each (n, d) float32. Without features all three are e_S."""
        rows = torch.as_tensor(self.partition.row_of(np.asarray(ids, dtype=np.int64)))
        table = self.model.entity_table[rows.to(self.device)].float()
        features = self.features.gather(rows).to(self.device) if self.model.use_features else None
        head = self.model.encode(table, features, "head")[0]
        tail = self.model.encode(table, features, "tail")[0]
        return {
            key: value.cpu().numpy().astype(np.float32, copy=False)
            for key, value in (("table", table), ("head", head), ("tail", tail))
        }


def load_model(
    path: str | Path,
    shard_dir: str | Path | None = None,
    root: str | Path | None = None,
    device: torch.device | str | None = None,
) -> TrainedModel:
    """A trained model (model.pt or its directory) ready for ``predict_tails`` / ``predict_heads``.

    ``shard_dir`` defaults to RESULTS/shards, ``root`` to the dataset the shards were cut from,
    ``device`` to the model config's (``auto``: CUDA when present).
    """
    return TrainedModel(path, shard_dir=shard_dir, root=root, device=device)


# ------------------------------------------------------------------------- export

EXPORT_FORMAT = "kge-export-v1"
EXPORT_BLOCK = 65536


def _list_column(matrix: np.ndarray):
    """(n, d) float32 -> a pyarrow list<float32> array of n rows (no copy of the values)."""
    import pyarrow as pa

    n, d = matrix.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1)))


def export_embeddings(trained: TrainedModel, out_dir: str | Path, progress: bool = True) -> Path:
    """Write a trained model's embeddings, by id and label, to ``out_dir`` -> the export.json path.

    Files (every one written to a temporary name, then renamed; export.json last):

    - ``entities.parquet``: id (int64), label (str), ``embedding`` list<float32> (d): the entity encoded
      in the head role; ``tail_embedding`` (d): encoded in the tail role; ``table_embedding`` (d): the
      trainable row e_S. Without features (or with a shared projection) the roles coincide.
    - ``entities.npy`` (E, d) float32 head role, ``entities_tail.npy`` tail role, ``entities_table.npy``
      e_S, row = id.
    - ``relations.parquet``: id, label, inverse (bool: id >= R is the reverse of id - R, same label),
      ``embedding`` (dr); ``normal`` (d) for TransH. ``relations.npy`` (R or 2R, dr),
      ``relations_normal.npy`` for TransH.
    - ``export.json``: score function, distance p, gamma, dims, sizes, files, and how to score.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from numpy.lib.format import open_memmap
    from tqdm import tqdm

    from kge.common import atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, E = trained.model, trained.num_entities
    d = int(model.entity_table.shape[1])
    schema = pa.schema(
        [
            ("id", pa.int64()),
            ("label", pa.string()),
            ("embedding", pa.list_(pa.float32())),
            ("tail_embedding", pa.list_(pa.float32())),
            ("table_embedding", pa.list_(pa.float32())),
        ]
    )
    arrays = {"head": "entities.npy", "tail": "entities_tail.npy", "table": "entities_table.npy"}
    with (
        atomic.atomic_path(out / "entities.parquet") as parquet_tmp,
        atomic.atomic_path(out / arrays["head"]) as head_tmp,
        atomic.atomic_path(out / arrays["tail"]) as tail_tmp,
        atomic.atomic_path(out / arrays["table"]) as table_tmp,
    ):
        # npy files are filled block by block through memory maps: a large table is never whole in memory.
        maps = {
            key: open_memmap(tmp, mode="w+", dtype=np.float32, shape=(E, d))
            for key, tmp in (("head", head_tmp), ("tail", tail_tmp), ("table", table_tmp))
        }
        with pq.ParquetWriter(parquet_tmp, schema) as writer:
            for start in tqdm(
                range(0, E, EXPORT_BLOCK), desc="export entities", unit="block", disable=not progress, mininterval=2.0
            ):
                ids = np.arange(start, min(start + EXPORT_BLOCK, E), dtype=np.int64)
                vectors = trained.encoded_entities(ids)
                for key, array in maps.items():
                    array[start : start + len(ids)] = vectors[key]
                writer.write_table(
                    pa.table(
                        {
                            "id": ids,
                            "label": pa.array(trained.entity_label(ids), pa.string()),
                            "embedding": _list_column(vectors["head"]),
                            "tail_embedding": _list_column(vectors["tail"]),
                            "table_embedding": _list_column(vectors["table"]),
                        },
                        schema=schema,
                    )
                )
        for array in maps.values():
            array.flush()
        del maps, array  # close the memory maps before the renames

    relation = model.relation.detach().float().cpu().numpy()
    count = relation.shape[0]
    base = np.arange(count) % trained.num_relations  # r + R is the reverse of r: same label
    columns = {
        "id": np.arange(count, dtype=np.int64),
        "label": pa.array(trained.relation_label(base), pa.string()),
        "inverse": np.arange(count) >= trained.num_relations,
        "embedding": _list_column(relation),
    }
    atomic.save_npy(out / "relations.npy", relation)
    if model.normal is not None:
        normal = model.normal.detach().float().cpu().numpy()
        columns["normal"] = _list_column(normal)
        atomic.save_npy(out / "relations_normal.npy", normal)
    else:
        (out / "relations_normal.npy").unlink(missing_ok=True)  # left by an earlier export of a TransH model
    with atomic.atomic_path(out / "relations.parquet") as tmp:
        pq.write_table(pa.table(columns), tmp)

    meta = {
        "format": EXPORT_FORMAT,
        "model": str(trained.model_path),
        "score_fn": model.score_fn,
        "distance": model.p if model.scorer.distance else None,
        "gamma": model.gamma if model.scorer.distance else None,
        "dim": d,
        "relation_dim": int(relation.shape[1]),
        "num_entities": E,
        "num_relations": trained.num_relations,
        "model_relations": count,
        "inverse_relations": trained.inverse_relations,
        "labels": trained.entity_labels is not None,
        "features": bool(model.use_features),
        "roles_identical": not model.use_features or bool(model.share_projection),
        "files": {
            "entities.parquet": "id, label, embedding (head role), tail_embedding (tail role), table_embedding (trainable e_S), list<float32>",
            "entities.npy": "(E, d) float32, row = entity id: encoded in the head role",
            "entities_tail.npy": "(E, d) float32: encoded in the tail role",
            "entities_table.npy": "(E, d) float32: the trainable table row e_S (before the feature branch)",
            "relations.parquet": "id, label, inverse, embedding" + (", normal" if model.normal is not None else ""),
            "relations.npy": f"({count}, relation_dim) float32, row = relation id"
            + (" (ids R..2R-1: the reverse of id - R)" if trained.inverse_relations else ""),
            **(
                {"relations_normal.npy": f"({count}, d) float32: TransH normals w_r (unnormalized)"}
                if model.normal is not None
                else {}
            ),
        },
        "scoring": (
            f"{model.scorer.formula}; h = entities.npy[head], t = entities_tail.npy[tail], "
            f"r = relations.npy[relation]"
            + (", normal = relations_normal.npy[relation]" if model.normal is not None else "")
            + "; kge.nn.scoring.score_triples(score_fn, h, r, t, p=distance, gamma=gamma, normal=normal) computes it"
        ),
    }
    atomic.save_json(out / "export.json", meta)
    return out / "export.json"


def format_table(frame, query: str) -> str:
    """A query's answer DataFrame -> readable text: the query, then rank, label, score (and known)."""
    has_known = "known" in frame.columns
    cells = [
        [rank, row.label, f"{row.score:.6g}", *(["yes" if row.known else ""] if has_known else [])]
        for rank, row in enumerate(frame.itertuples(index=False), start=1)
    ]
    columns = ["rank", "label", "score", *(["known"] if has_known else [])]
    lines = [query] + text_table(columns, cells, "><><"[: len(columns)], widths=[4, 5, 12, 5], sep="  ")
    return "\n".join(lines)


def frame_json(frame) -> str:
    """A query's answer DataFrame -> JSON list of {rank, label, id, score[, known]}."""
    rows = []
    for rank, row in enumerate(frame.to_dict("records"), start=1):
        item = {"rank": rank, "label": row["label"], "id": int(row["id"]), "score": float(row["score"])}
        if "known" in row:
            item["known"] = bool(row["known"])
        rows.append(item)
    return json.dumps(rows)
