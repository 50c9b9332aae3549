"""The scorer registry (kge/nn/scorers.py) and the two scorers added through it, RESCAL and PairRE:
hand-computed values, an independent plain formula for the matrix and head paths, the registry as
the one source of the schema / CLI / recipe names, FLOP counts, and `kge train` smokes.

The generic checks of tests/test_scoring.py (matrix == score_triples in values and gradients,
head queries, chunked L1 with checkpointing, zero distance, float32) run over every registry entry
too; tests/test_predict_topk.py and tests/test_inference.py cover top-K and export for both."""

from __future__ import annotations

import argparse
import json
import math
from importlib import resources

import pytest
import torch

from kge.cli.main import build_parser
from kge.common.errors import KgeInputError
from kge.config import resolve_model_config
from kge.nn import scoring
from kge.nn.scorers import SCORERS, get_scorer, recipe_scorer
from kge.nn.scoring import head_query_vectors, query_vectors, score_matrix, score_queries, score_triples

D64 = torch.float64


def t64(*rows):
    return torch.tensor(rows, dtype=D64)


# ---------------------------------------------------------------- the schema's names are the registry's
def test_schema_score_fn_enum_is_the_registry():
    """kge.config sits below kge.nn (the model reads the typed config), so the schema lists the scorer
    names itself; this keeps the list equal to the registry's, in order, and resolving accepts each."""
    raw = json.loads(resources.files("kge").joinpath("schemas/model.schema.json").read_text())
    assert raw["properties"]["score_fn"]["enum"] == list(SCORERS)
    for name in SCORERS:
        assert resolve_model_config({"score_fn": name}, where="t").score_fn == name
    with pytest.raises(KgeInputError, match="'hole' is not one of .*'rescal', 'pairre'"):
        resolve_model_config({"score_fn": "hole"}, where="t")


def test_get_scorer_names_the_accepted_ones():
    assert get_scorer("pairre").name == "pairre"
    with pytest.raises(
        KgeInputError,
        match=r"expected one of \['complex', 'distmult', 'pairre', 'rescal', 'rotate', 'transe', 'transh'\]",
    ):
        get_scorer("hole")
    with pytest.raises(KgeInputError):
        get_scorer(None)


def test_derived_name_sets():
    assert scoring.SCORE_FNS == frozenset(SCORERS)
    assert scoring.DOT_FNS == {"distmult", "complex", "rescal"}
    assert scoring.DISTANCE_FNS == {"transe", "transh", "rotate", "pairre"}
    assert scoring.COMPLEX_FNS == {"rotate", "complex"}
    with pytest.raises(AttributeError):
        scoring.NO_SUCH_SET  # noqa: B018


def test_cli_bench_accepts_every_registry_name(capsys):
    parser = build_parser()
    for name in SCORERS:
        assert parser.parse_args(["bench", "train", "--score-fn", name]).score_fn == name
        assert parser.parse_args(["bench", "predict", "--score-fn", name]).score_fn == name
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "train", "--score-fn", "hole"])
    assert "invalid choice: 'hole'" in capsys.readouterr().err


def test_recipe_maps_its_names_and_rejects_others():
    from kge.ensemble.recipe import entry_settings

    for json_name, ours in (
        ("TransE", "transe"),
        ("TransH", "transh"),
        ("RotatE", "rotate"),
        ("DistMult", "distmult"),
        ("ComplEx", "complex"),
    ):
        assert recipe_scorer(json_name).name == ours
    for name in ("RESCAL", "PairRE", "hole"):
        with pytest.raises(KgeInputError, match="no kge scorer maps it"):
            recipe_scorer(name)
    # An entry naming one of them stops at the name, before any other field is read.
    with pytest.raises(KgeInputError, match="'PairRE': no kge scorer maps it"):
        entry_settings({"config.model.score_fn": "PairRE", "config.model.distance_fn": "L1"})


def test_entries_are_consistent():
    for name, s in SCORERS.items():
        assert s.name == name and s.formula.startswith("score = ")
        assert s.distance != s.dot
        assert s.query_dim(16) == 16 or not s.dot  # the fused dot losses need (B, d) queries
        assert s.bench_p in (1, 2)
    with pytest.raises(ValueError):
        SCORERS["distmult"].__class__(**{**SCORERS["distmult"].__dict__, "distance": True})


def test_flop_counts():
    d, queries, pairs = 128, 512, 512 * 1024
    # DistMult (all recipe scorers): forward 2d per pair, backward twice that: the old 6 B M d.
    assert get_scorer("distmult").train_flops(d, queries, pairs) == 6.0 * pairs * d
    assert get_scorer("transe").predict_flops(d, queries, pairs) == 2.0 * pairs * d
    # RESCAL adds the (d, d) fold of each query; PairRE's pair costs two d-wide products.
    assert get_scorer("rescal").train_flops(d, queries, pairs) == 3 * (2.0 * pairs * d + 2.0 * queries * d * d)
    assert get_scorer("pairre").train_flops(d, queries, pairs) == 12.0 * pairs * d


# ---------------------------------------------------------------- RESCAL
def test_rescal_by_hand():
    # h = [1, 2], R = [[1, 2], [3, 4]] (row-major [1, 2, 3, 4]), t = [5, 6]
    # h^T R = [1 + 6, 2 + 8] = [7, 10]; . t = 35 + 60 = 95
    # R t = [5 + 12, 15 + 24] = [17, 39]; h . R t = 17 + 78 = 95
    h, r, t = t64([1.0, 2.0]), t64([1.0, 2.0, 3.0, 4.0]), t64([5.0, 6.0])
    assert score_triples("rescal", h, r, t).item() == 95.0
    assert score_matrix("rescal", h, r, t).item() == 95.0
    assert query_vectors("rescal", h, r).tolist() == [[7.0, 10.0]]
    assert head_query_vectors("rescal", t, r).tolist() == [[17.0, 39.0]]
    assert score_queries("rescal", head_query_vectors("rescal", t, r), h).item() == 95.0
    # Not symmetric: (t, r, h) = t^T R h = [5 + 18, 10 + 24] . [1, 2] = 23 + 68 = 91.
    assert score_triples("rescal", t, r, h).item() == 91.0
    assert score_triples("rescal", h, r, t, gamma=7.0, p=1).item() == 95.0  # gamma and p ignored


def plain_rescal(h, r, t):
    """(B, M) by explicit sums over i, j: sum_ij h_i R_ij t_j, R = r.reshape(d, d)."""
    b, d = h.shape
    out = torch.zeros(b, t.shape[0], dtype=h.dtype)
    for q in range(b):
        R = r[q].reshape(d, d)
        for m in range(t.shape[0]):
            out[q, m] = sum(h[q, i] * R[i, j] * t[m, j] for i in range(d) for j in range(d))
    return out


def test_rescal_matrix_and_heads_against_plain_formula():
    g = torch.Generator().manual_seed(0)
    h, r, t = (
        torch.randn(3, 4, generator=g, dtype=D64),
        torch.randn(3, 16, generator=g, dtype=D64),
        torch.randn(5, 4, generator=g, dtype=D64),
    )
    want = plain_rescal(h, r, t)
    torch.testing.assert_close(score_matrix("rescal", h, r, t), want, rtol=1e-12, atol=1e-12)
    # Head direction: queries (r_b, t_b) against candidate heads c -> plain c^T R_b t_b.
    cands = torch.randn(6, 4, generator=g, dtype=D64)
    got = score_queries("rescal", head_query_vectors("rescal", t[:3], r), cands)
    for q in range(3):
        expect = plain_rescal(cands, r[q : q + 1].expand(6, -1), t[q : q + 1])[:, 0]
        torch.testing.assert_close(got[q], expect, rtol=1e-12, atol=1e-12)


def test_rescal_rejects_a_relation_of_the_wrong_width():
    with pytest.raises(KgeInputError, match="d\\*d = 16"):
        query_vectors("rescal", torch.zeros(2, 4), torch.zeros(2, 8))
    assert scoring.relation_dim("rescal", 128) == 128 * 128


def test_rescal_init_is_scaled_identity_plus_noise():
    from kge.nn.model import KGEModel

    d = 32
    model = KGEModel(
        resolve_model_config({"score_fn": "rescal", "dim": d, "init_scale": 0.01}),
        50,
        8,
        torch.Generator().manual_seed(0),
    )
    R = model.relation.detach().reshape(50, d, d)
    eye = torch.eye(d, dtype=torch.bool)
    assert R.shape == (50, d, d) and model.normal is None
    assert abs(R[:, eye].mean().item() - 1 / math.sqrt(d)) < 1e-3
    assert abs(R[:, ~eye].mean().item()) < 1e-3
    assert abs(R[:, ~eye].std().item() - 0.01 / math.sqrt(d)) < 1e-4


# ---------------------------------------------------------------- PairRE
def test_pairre_by_hand():
    # h = [3, 4] -> h/|h| = [0.6, 0.8]; t = [0, 2] -> [0, 1]; r_H = [2, 1], r_T = [1, 3]
    # h o r_H = [1.2, 0.8]; t o r_T = [0, 3]; difference [1.2, -2.2]
    # L1 = 3.4; L2 = sqrt(1.44 + 4.84) = sqrt(6.28)
    h, r, t = t64([3.0, 4.0]), t64([2.0, 1.0, 1.0, 3.0]), t64([0.0, 2.0])
    for p, dist in ((1, 3.4), (2, math.sqrt(6.28))):
        assert score_triples("pairre", h, r, t, p=p, gamma=5.0).item() == pytest.approx(5.0 - dist, abs=1e-12)
        assert score_matrix("pairre", h, r, t, p=p, gamma=5.0).item() == pytest.approx(5.0 - dist, abs=1e-12)
        q = head_query_vectors("pairre", t, r)  # [t/|t| o r_T | r_H]
        assert q.tolist() == [[0.0, 3.0, 2.0, 1.0]]
        assert score_queries("pairre", q, h, p=p, gamma=5.0).item() == pytest.approx(5.0 - dist, abs=1e-12)
    # The entity scale does not matter (normalized inside the score), the relation scale does.
    assert score_triples("pairre", 7 * h, r, 0.1 * t, p=1).item() == pytest.approx(-3.4, abs=1e-12)
    assert score_triples("pairre", h, 2 * r, t, p=1).item() == pytest.approx(-6.8, abs=1e-12)


def plain_pairre(h, r, t, p):
    """(B, M) by explicit loops: -|| h_b/|h_b| o r_H - t_m/|t_m| o r_T ||_p (gamma = 0)."""
    b, d = h.shape
    out = torch.zeros(b, t.shape[0], dtype=h.dtype)
    for q in range(b):
        hn = h[q] / math.sqrt(sum(float(x) ** 2 for x in h[q]))
        for m in range(t.shape[0]):
            tn = t[m] / math.sqrt(sum(float(x) ** 2 for x in t[m]))
            diff = [float(hn[k] * r[q, k] - tn[k] * r[q, d + k]) for k in range(d)]
            out[q, m] = -(sum(abs(x) for x in diff) if p == 1 else math.sqrt(sum(x * x for x in diff)))
    return out


@pytest.mark.parametrize("p", [1, 2])
def test_pairre_matrix_and_heads_against_plain_formula(p):
    g = torch.Generator().manual_seed(1)
    h, r, t = (
        torch.randn(3, 5, generator=g, dtype=D64),
        torch.randn(3, 10, generator=g, dtype=D64),
        torch.randn(6, 5, generator=g, dtype=D64),
    )
    torch.testing.assert_close(score_matrix("pairre", h, r, t, p=p), plain_pairre(h, r, t, p), rtol=1e-10, atol=1e-10)
    # Head direction: query q = (r_q, t_q), candidates c: -||c/|c| o r_H - t_q/|t_q| o r_T||.
    cands = torch.randn(4, 5, generator=g, dtype=D64)
    got = score_queries("pairre", head_query_vectors("pairre", t[:3], r), cands, p=p)
    for q in range(3):
        torch.testing.assert_close(
            got[q], plain_pairre(cands, r[q : q + 1].expand(4, -1), t[q : q + 1], p)[:, 0], rtol=1e-10, atol=1e-10
        )


def test_pairre_query_shapes_and_checks():
    q = query_vectors("pairre", torch.randn(4, 6), torch.randn(4, 12))
    assert q.shape == (4, 12)  # [a | r_T]: twice the entity width
    assert scoring.relation_dim("pairre", 6) == 12 and get_scorer("pairre").query_dim(6) == 12
    with pytest.raises(KgeInputError, match="2d = 12"):
        query_vectors("pairre", torch.randn(4, 6), torch.randn(4, 6))
    with pytest.raises(ValueError, match=r"expected query \(B, 12\)"):
        score_queries("pairre", torch.randn(4, 6), torch.randn(3, 6), p=1)
    with pytest.raises(KgeInputError, match="p: expected 1 or 2 for pairre"):
        score_matrix("pairre", torch.randn(4, 6), torch.randn(4, 12), torch.randn(3, 6), p=3)


def test_pairre_zero_entity_is_finite_in_the_matrix_path():
    """A zero entity row (e.g. a padding row) has no direction: F.normalize maps it to 0 with finite gradients."""
    h = torch.zeros(2, 4, dtype=D64, requires_grad=True)
    r = torch.randn(2, 8, dtype=D64, requires_grad=True)
    t = torch.cat([torch.zeros(1, 4, dtype=D64), torch.randn(2, 4, dtype=D64)]).requires_grad_()
    for p in (1, 2):
        s = score_matrix("pairre", h, r, t, p=p)
        assert torch.isfinite(s).all()
        assert all(torch.isfinite(g).all() for g in torch.autograd.grad(s.sum(), (h, r, t)))


def test_pairre_init_starts_at_the_identity_relation():
    from kge.nn.model import KGEModel

    model = KGEModel(
        resolve_model_config({"score_fn": "pairre", "dim": 16, "init_scale": 0.01}),
        40,
        8,
        torch.Generator().manual_seed(0),
    )
    rel = model.relation.detach()
    assert rel.shape == (40, 32) and model.normal is None
    assert abs(rel.mean().item() - 1.0) < 1e-3 and abs(rel.std().item() - 0.01) < 2e-3


# ---------------------------------------------------------------- training through the Trainer and `kge train`
@pytest.mark.parametrize(
    "score_fn,p,loss",
    [("rescal", 1, "softmax"), ("rescal", 1, "logsigmoid"), ("pairre", 1, "softmax"), ("pairre", 2, "logsigmoid")],
)
def test_kge_train_smoke(mini_root, mini_shards, tmp_path, score_fn, p, loss):
    from kge import cli

    config = {
        "score_fn": score_fn,
        "distance": p,
        "gamma": 8.0,
        "dim": 16,
        "batch_size": 64,
        "negatives": 64,
        "steps": 40,
        "learning_rate": 0.02,
        "validate_every": 0,
        "validate_queries": 50,
        "checkpoint_every": 1000,
        "device": "cpu",
        "loss": {"type": loss},
    }
    cfg = tmp_path / "config.json"
    assert cli.main(["config", "model", "--name", "m", "--json", json.dumps(config), "--out", str(cfg)]) == 0
    out = tmp_path / "model"
    assert (
        cli.main(
            [
                "train",
                "--config",
                str(cfg),
                "--root",
                str(mini_root),
                "--shard-dir",
                str(mini_shards),
                "--out",
                str(out),
                "--threads",
                "1",
            ]
        )
        == 0
    )
    history = json.loads((out / "history.json").read_text())["history"]
    losses = [h["loss"] for h in history]
    assert len(losses) == 20 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) < sum(losses[:3])  # the mean loss of 2 steps went down
    assert 0.0 <= history[-1]["valid_mrr"] <= 1.0


@pytest.mark.parametrize("score_fn", ["rescal", "pairre"])
def test_bench_train_and_predict(mini_root, mini_shards, score_fn):
    from kge.bess.features import FeatureStore
    from kge.report.bench import FEATURE_FLOPS_PER_ROW, bench_predict, bench_train

    r = bench_train(score_fn, 16, 32, 32, steps=2, warmup=1, root=mini_root, shard_dir=mini_shards, device="cpu")
    assert r["score_fn"] == score_fn and r["triples_per_s"] > 0
    scorer = get_scorer(score_fn)
    # 2 steps of B = 32 queries against M = 32 + 32 columns, plus the feature encoder's share.
    features = FEATURE_FLOPS_PER_ROW * (32 + 64) * FeatureStore(mini_shards, 2).dim * 16 * 2
    flops = scorer.train_flops(16, 32 * 2, 32 * 64 * 2) + features
    assert r["model_gflops"] == pytest.approx(flops / r["seconds"] / 1e9, rel=1e-9)
    p = bench_predict(score_fn, 16, queries=40, k=5, root=mini_root, shard_dir=mini_shards, device="cpu")
    assert p["scoring_gflops"] == pytest.approx(
        scorer.predict_flops(16, 40, 40 * p["entities"]) / p["seconds"] / 1e9, rel=1e-9
    )


def test_parser_type_error_is_argparse_error():
    from kge.cli.report import _score_fn_name

    with pytest.raises(argparse.ArgumentTypeError):
        _score_fn_name("TransE")  # registry names are lower case


@pytest.mark.parametrize("score_fn,p", [("rescal", 1), ("pairre", 1)])
def test_exchange_of_scores_equals_exchange_of_tails(mini_shards, tmp_path, score_fn, p):
    """The "scores" exchange moves the folded queries ((B, 2d) for PairRE) and scores them with
    model.score_queries; the "tails" exchange scores after the move (fused loss for RESCAL): same losses."""
    from kge.train.trainer import Trainer

    losses = {}
    for exchange in ("tails", "scores"):
        config = resolve_model_config(
            {
                "score_fn": score_fn,
                "distance": p,
                "dim": 16,
                "batch_size": 32,
                "negatives": 32,
                "steps": 100,
                "exchange": exchange,
                "device": "cpu",
            },
            where="t",
        )
        trainer = Trainer(config, mini_shards, tmp_path / exchange)
        losses[exchange] = [trainer.train_step() for _ in range(3)]
    assert losses["tails"] == pytest.approx(losses["scores"], rel=1e-5)
