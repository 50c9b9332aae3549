"""Predictor.topk equals torch.topk over the brute-force full score matrix, for every scoring function."""

import numpy as np
import pytest
import torch

from kge.bess.partition import make_partition
from kge.config import resolve_model_config
from kge.nn import scoring
from kge.nn.model import KGEModel
from kge.predict.predictor import Predictor
from kge.predict.topk import block_topk

E, R, F_DIM, D = 1003, 7, 24, 4  # 1003 entities over 4 shards of 251 rows: one padding row at the end


class TensorFeatures:
    """The two FeatureStore methods Predictor uses, over an in-memory (rows, F) table."""

    def __init__(self, table: torch.Tensor):
        self.table = table

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        return self.table[rows.cpu()]

    def block(self, start: int, stop: int) -> torch.Tensor:
        return self.table[start:stop]


def build(score_fn: str, p: int, use_features: bool, dim: int = 16):
    config = resolve_model_config(
        {
            "score_fn": score_fn,
            "distance": p,
            "dim": dim,
            "init_scale": 0.5,
            "features": {"use": use_features, "share_projection": False, "dropout": 0.0},
        }
    )
    partition = make_partition(E, D, seed=1)
    rows = partition.num_rows
    assert rows > E  # padding rows present
    gen = torch.Generator().manual_seed(0)
    model = KGEModel(config, R, F_DIM, gen).eval()
    model.entity_table = torch.randn(rows, config.dim, generator=gen) * config.init_scale
    features = torch.randn(rows, F_DIM, generator=gen)
    return model, TensorFeatures(features), partition


def brute_force(model, features, partition, hr, k):
    """Scores of every query against every real entity (global ids) -> torch.topk values."""
    row_of = partition.row_of(np.arange(E))
    rows = torch.as_tensor(row_of, dtype=torch.int64)
    table = features.table if model.use_features else None
    tails = model.encode(model.entity_table[rows], table[rows] if table is not None else None, "tail")[0]
    hrows = torch.as_tensor(partition.row_of(hr[:, 0]), dtype=torch.int64)
    heads = model.encode(model.entity_table[hrows], table[hrows] if table is not None else None, "head")[0]
    rel = torch.as_tensor(hr[:, 1])
    normal = model.normal[rel] if model.normal is not None else None
    full = scoring.score_matrix(
        model.score_fn, heads, model.relation[rel], tails, p=model.p, gamma=model.gamma, normal=normal
    )  # (Q, E), column = global id
    return full, torch.topk(full, k, dim=1)


@pytest.mark.parametrize(
    "score_fn,p",
    [
        ("distmult", 1),
        ("complex", 1),
        ("transe", 1),
        ("transe", 2),
        ("transh", 1),
        ("transh", 2),
        ("rotate", 1),
        ("rotate", 2),
        ("rescal", 1),
        ("pairre", 1),
        ("pairre", 2),
    ],
)
@pytest.mark.parametrize("use_features", [False, True])
def test_predictor_topk_equals_full_matrix(score_fn, p, use_features):
    model, features, partition = build(score_fn, p, use_features)
    rng = np.random.default_rng(0)
    hr = np.stack([rng.integers(0, E, 37), rng.integers(0, R, 37)], 1)
    k = 20
    full, (want_s, want_i) = brute_force(model, features, partition, hr, k)
    # blocks of 100 rows (cut at padding), query batches of 16 (the last one short)
    ids, scores = Predictor(model, features, partition, torch.device("cpu"), block_rows=100).topk(hr, k, query_batch=16)
    assert ids.shape == (37, k) and scores.dtype == np.float32 and ids.dtype == np.int64
    assert (ids >= 0).all() and (ids < E).all()
    torch.testing.assert_close(torch.from_numpy(scores), want_s, rtol=1e-5, atol=1e-5)
    # every returned id carries its own brute-force score, and ids are distinct per query
    torch.testing.assert_close(
        torch.gather(full, 1, torch.from_numpy(ids)), torch.from_numpy(scores), rtol=1e-5, atol=1e-5
    )
    assert all(len(set(row)) == k for row in ids.tolist())
    # one block over the whole table: the grouped selection path of block_topk
    ids2, scores2 = Predictor(model, features, partition, torch.device("cpu"), block_rows=4096).topk(
        hr, 5, query_batch=64
    )
    torch.testing.assert_close(torch.from_numpy(scores2), want_s[:, :5], rtol=1e-5, atol=1e-5)


def test_predictor_distmult_exact():
    """The matmul path scores exactly as the brute-force matrix: values are bit-identical."""
    model, features, partition = build("distmult", 1, True)
    hr = np.stack([np.arange(50) * 7 % E, np.arange(50) % R], 1)
    _, (want_s, _) = brute_force(model, features, partition, hr, 10)
    _, scores = Predictor(model, features, partition, torch.device("cpu"), block_rows=300).topk(hr, 10, query_batch=20)
    torch.testing.assert_close(torch.from_numpy(scores), want_s, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n,group", [(3200, 8), (3207, 8), (5000, 5), (9999, 16), (3200, 1)])
def test_block_topk_grouped_equals_topk(n, group):
    gen = torch.Generator().manual_seed(n)
    s = torch.randn(9, n, generator=gen)
    s[0, :] = 1.0  # all tied
    s[1, ::3] = 2.0  # many ties above the rest
    s[2, 5:50] = float("-inf")
    vals, cols = block_topk(s, 100, group=group)
    want = torch.topk(s, 100, dim=1).values
    assert torch.equal(vals.sort(1, descending=True).values, want)
    assert torch.equal(torch.gather(s, 1, cols), vals)
    assert all(len(set(row)) == 100 for row in cols.tolist())


def test_block_topk_narrow_block_falls_back():
    s = torch.randn(3, 50)
    vals, cols = block_topk(s, 100)
    assert vals.shape == (3, 50) and torch.equal(vals.sort(1, descending=True).values, torch.topk(s, 50, 1).values)
