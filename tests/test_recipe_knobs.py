"""The recipe's less common knobs, against hand computations: feature MLP and its switches, bias,
gate and weight of the feature branch, per-role learning-rate modifiers, inverse-relation
augmentation, the adversarial temperature and negatives per shard (the a2a size)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kge.bess.partition import Partition
from kge.bess.sampling import BessSampler
from kge.bess.shard import triples_dataset
from kge.common.errors import KgeInputError
from kge.config import resolve_model_config
from kge.nn import losses
from kge.nn.model import KGEModel

D_MODEL, F = 6, 10


def _model(features: dict, **extra) -> KGEModel:
    config = resolve_model_config({"score_fn": "transe", "dim": D_MODEL, "features": features, **extra})
    return KGEModel(config, 3, F, torch.Generator().manual_seed(0))


def _inputs(n=5):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, D_MODEL, generator=g), torch.randn(n, F, generator=g)


def test_plain_encoder_is_embedding_plus_projection():
    model = _model({})
    e_s, e_f = _inputs()
    e, f = model.encode(e_s, e_f, "head")
    torch.testing.assert_close(f, e_f @ model.head_projection.T)
    torch.testing.assert_close(e, e_s + e_f @ model.head_projection.T)
    _, f_tail = model.encode(e_s, e_f, "tail")  # separate projections by default
    torch.testing.assert_close(f_tail, e_f @ model.tail_projection.T)
    assert not torch.allclose(f_tail, f)


@pytest.mark.parametrize(
    "squeeze,residual,concat,glu",
    [
        (True, True, False, False),  # the recipe's two MLP models
        (True, False, True, False),  # the recipe's third switch combination
        (False, False, False, True),
        (False, False, True, False),
    ],
)
def test_feature_mlp_matches_hand_computation(squeeze, residual, concat, glu):
    hidden = 4
    model = _model(
        {
            "share_projection": True,
            "mlp": {
                "hidden": hidden,
                "squeeze": squeeze,
                "residual": residual,
                "concat_embeddings": concat,
                "glu": glu,
            },
        }
    )
    ex = model.head_extras
    e_s, e_f = _inputs()
    projected = e_f @ model.head_projection.T if squeeze else None
    x = projected if squeeze else e_f
    if concat:
        x = torch.cat([e_s, x], 1)
    pre = x @ ex.w1.T + ex.b1
    h = pre[:, :hidden] * torch.sigmoid(pre[:, hidden:]) if glu else torch.relu(pre)
    out = h @ ex.w2.T + ex.b2
    if residual:
        out = out + projected
    expected_e = out if concat else e_s + out
    e, f = model.encode(e_s, e_f, "tail")  # shared: the tail role uses the same branch
    torch.testing.assert_close(f, out)
    torch.testing.assert_close(e, expected_e)
    assert ex.w1.shape == ((2 if glu else 1) * hidden, (D_MODEL if squeeze else F) + (D_MODEL if concat else 0))
    assert (model.head_projection is not None) == squeeze  # an unsqueezed MLP reads e_F itself


def test_bias_gate_and_weight():
    model = _model({"bias": True, "gated": True, "weight": True})
    ex = model.head_extras
    with torch.no_grad():
        ex.bias.copy_(torch.arange(D_MODEL, dtype=torch.float32))
        ex.gate.copy_(torch.linspace(-2, 2, D_MODEL))
        ex.weight.fill_(0.7)
    e_s, e_f = _inputs()
    f_expected = (
        0.7 * torch.sigmoid(torch.linspace(-2, 2, D_MODEL)) * (e_f @ model.head_projection.T + torch.arange(D_MODEL))
    )
    e, f = model.encode(e_s, e_f, "head")
    torch.testing.assert_close(f, f_expected)
    torch.testing.assert_close(e, e_s + f_expected)
    # All three are trained: they have gradients through the encoder.
    e.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (ex.bias, ex.gate, ex.weight))


def test_residual_without_squeeze_is_refused():
    with pytest.raises(KgeInputError, match="residual"):
        resolve_model_config({"features": {"mlp": {"hidden": 8, "residual": True}}})


def test_per_role_learning_rate_modifiers_scale_the_first_adam_step(mini_shards, tmp_path):
    """Adam's first step moves every parameter with a nonzero gradient by lr x modifier."""
    from kge.train.trainer import Trainer

    lr = 1e-3
    config = resolve_model_config(
        {
            "score_fn": "distmult",
            "dim": 8,
            "batch_size": 64,
            "negatives": 64,
            "learning_rate": lr,
            "lr_decay": "none",
            "features": {"mlp": {"hidden": 4, "squeeze": True}},
            "lr_modifiers": {"head_feature_projection": 0.3, "tail_feature_projection": 2.0, "relation": 0.5},
        }
    )
    trainer = Trainer(config, mini_shards, tmp_path)
    model = trainer.model
    tracked = {
        "head M": (model.head_projection, 0.3),
        "head MLP": (model.head_extras.w2, 0.3),
        "tail M": (model.tail_projection, 2.0),
        "tail MLP": (model.tail_extras.w1, 2.0),
        "relation": (model.relation, 0.5),
    }
    before = {k: p.detach().clone() for k, (p, _) in tracked.items()}
    trainer.train_step()
    for key, (param, modifier) in tracked.items():
        moved = (param.detach() - before[key]).abs()
        moved = moved[moved > 0]
        assert moved.numel() > 0, key
        # |step| = lr * mod * |m_hat| / (sqrt(v_hat) + eps) = lr * mod * |g| / (|g| + eps)
        assert moved.max().item() == pytest.approx(lr * modifier, rel=1e-3), key
        assert moved.median().item() == pytest.approx(lr * modifier, rel=0.05), key


def test_modifier_of_one_role_falls_back_to_feature_projection():
    config = resolve_model_config(
        {
            "features": {"share_projection": False},
            "lr_modifiers": {"feature_projection": 0.3, "tail_feature_projection": 2.0},
        }
    )
    model = KGEModel(config, 3, F, torch.Generator().manual_seed(0))
    groups = model.dense_param_groups()
    modifier = {id(p): g["lr_modifier"] for g in groups for p in g["params"]}
    assert modifier[id(model.head_projection)] == 0.3 and modifier[id(model.tail_projection)] == 2.0


def test_inverse_relation_sampler(mini_shards):
    """Bucket (i, j) holds its own triples and the reversed triples of bucket (j, i) as r + R."""
    plain = BessSampler(mini_shards, 64, 8)
    aug = BessSampler(mini_shards, 64, 8, inverse_relations=True)
    R = plain.num_relations
    assert aug.num_model_relations == 2 * R and aug.num_owned_triples == 2 * plain.num_owned_triples
    counts = plain.bucket_relation_counts
    np.testing.assert_array_equal(aug.bucket_relation_counts[:, :, :R], counts)
    np.testing.assert_array_equal(aug.bucket_relation_counts[:, :, R:], counts.transpose(1, 0, 2))
    table = triples_dataset(mini_shards).to_table(columns=["h", "r", "t"])
    known = set(
        zip(
            table.column("h").to_numpy().tolist(),
            table.column("r").to_numpy().tolist(),
            table.column("t").to_numpy().tolist(),
        )
    )
    partition = Partition.load(mini_shards / "partition.npz")
    seen_inverse = 0
    for step in range(20):
        batch = aug.sample(torch.Generator().manual_seed(step))
        head_shard = partition.row_of(batch.head) // partition.shard_size
        tail_shard = partition.row_of(batch.tail) // partition.shard_size
        buckets = np.repeat(np.array(aug.buckets), 64 // len(aug.buckets), axis=0)
        np.testing.assert_array_equal(head_shard.numpy(), buckets[:, 0])  # BESS blocks kept
        np.testing.assert_array_equal(tail_shard.numpy(), buckets[:, 1])
        for h, r, t in zip(batch.head.tolist(), batch.relation.tolist(), batch.tail.tolist()):
            if r >= R:
                seen_inverse += 1
                assert (t, r - R, h) in known
            else:
                assert (h, r, t) in known
    # Cube-root sampling over 2R relations: about half the rows are reversed.
    assert 0.35 < seen_inverse / (20 * 64) < 0.65


def test_inverse_relations_train_and_load(mini_shards, tmp_path):
    """The model gets 2R relations, trains, and its saved model loads with them."""
    from kge.predict.predictor import load_model
    from kge.train.trainer import train

    config = resolve_model_config(
        {"score_fn": "complex", "dim": 8, "batch_size": 64, "negatives": 64, "steps": 3, "inverse_relations": True}
    )
    final = train(config, mini_shards, tmp_path / "m", progress=False)
    assert final["num_relations"] == 2 * BessSampler(mini_shards, 64, 8).num_relations
    model, saved, _ = load_model(tmp_path / "m" / "model.pt")
    assert model.relation.shape[0] == saved["num_relations"] == final["num_relations"]


def test_adversarial_temperature_is_inverse_scale():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 9, generator=g)
    positive = scores.diagonal()
    mask = torch.ones_like(scores, dtype=torch.bool)
    mask.fill_diagonal_(False)
    by_temperature = losses.logsigmoid_loss(
        positive,
        scores,
        mask,
        adversarial_scale=resolve_model_config({"loss": {"adversarial_temperature": 3.0}}).loss.adversarial,
    )
    # Hand computation: weights softmax(s / 3) over each row's negatives.
    weights = torch.softmax((scores / 3).masked_fill(~mask, float("-inf")), 1)
    expected = (
        -0.5 * torch.nn.functional.logsigmoid(positive)
        - 0.5 * (weights * torch.nn.functional.logsigmoid(-scores)).sum(1)
    ).mean()
    torch.testing.assert_close(by_temperature, expected)
    with pytest.raises(KgeInputError, match="adversarial_temperature"):
        resolve_model_config({"loss": {"adversarial_scale": 2.0, "adversarial_temperature": 3.0}})


def test_negatives_per_shard(mini_shards, tmp_path):
    from kge.train.trainer import Trainer

    config = resolve_model_config({"score_fn": "distmult", "dim": 8, "batch_size": 64, "negatives_per_shard": 12})
    assert config.negatives_per_step(2) == 24
    trainer = Trainer(config, mini_shards, tmp_path)
    trainer.train_step()
    assert trainer.last_step["batch"].negatives.shape == (24,)
    # A resolved config (with the default 'negatives') resolves to itself: the per-shard count wins.
    assert resolve_model_config(config).negatives_per_step(2) == 24
