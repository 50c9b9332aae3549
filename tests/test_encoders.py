"""Encoder variants of the feature branch and random-subspace optimization, against hand computations.

Grouped (block-diagonal) and fixed random projections M; the MLP's hidden layer with BatchNorm or
LayerNorm + Proxy Normalization (proxy moments against the analytic ReLU-of-a-Gaussian values,
batch independence, train/eval modes); P P^T g with P drawn from (seed, step, tensor); defaults
that keep older configs, hashes, state_dict keys and saved models as they were.
"""

from __future__ import annotations

import json
import math
import os
from importlib import resources
from pathlib import Path

import pytest
import torch

from kge.common.errors import KgeInputError
from kge.config import LATER_KEYS, MODEL_DEFAULTS, config_hash, load_model_config, resolve_model_config
from kge.nn.model import NORM_EPS, KGEModel, gaussian_proxy_points, proxy_statistics
from kge.train import subspace

D_MODEL, F = 8, 12


def _config(features: dict | None = None, **extra) -> dict:
    return resolve_model_config({"score_fn": "transe", "dim": D_MODEL, "features": features or {}, **extra})


def _model(features: dict | None = None, seed: int = 0, feature_dim: int = F, **extra) -> KGEModel:
    return KGEModel(_config(features, **extra), 3, feature_dim, torch.Generator().manual_seed(seed))


def _inputs(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D_MODEL, generator=g), torch.randn(n, F, generator=g)


def _mlp(norm: str, glu: bool = False, hidden: int = 4, **features) -> dict:
    return {"share_projection": True, **features, "mlp": {"hidden": hidden, "squeeze": True, "glu": glu, "norm": norm}}


# ----- configuration ------------------------------------------------------------------------------
def test_defaults_keep_older_configs_hashes_and_state_dict_keys():
    default = resolve_model_config({})
    assert default.features.projection == "dense" and default.features.mlp.norm == "none"
    assert default.subspace.to_dict() == {"dim": 0}
    # loss.mask_false_negatives is the one later key whose default is not the older behaviour:
    # the default config now trains differently, so its hash differs from the older one.
    config = resolve_model_config({"loss": {"mask_false_negatives": False}})
    assert config_hash(default) != config_hash(config)
    # The hash the default config had before these keys existed: older checkpoints still resume.
    assert config_hash(config) == "70ba8dfadd42181e"
    older = config.to_dict()
    for *parents, key in LATER_KEYS:
        node = older
        for parent in parents:
            node = node[parent]
        node.pop(key)
    assert config_hash(older) == config_hash(config)
    for changed in ({"subspace": {"dim": 4}}, {"features": {"projection": "random"}}, {"features": {"groups": 2}}):
        assert config_hash(resolve_model_config(changed)) != config_hash(config)
    # An older model.pt's config (without the keys) builds the same model, with today's keys: loading a
    # saved config goes through load_model_config (kge.predict.predictor.load_model).
    new = KGEModel(config, 3, F, torch.Generator().manual_seed(0))
    old = KGEModel(load_model_config(older), 3, F, torch.Generator().manual_seed(0))
    assert old.config == config
    assert list(new.state_dict()) == list(old.state_dict()) == ["relation", "head_projection", "tail_projection"]
    for key, value in new.state_dict().items():
        assert torch.equal(value, old.state_dict()[key])
    mlp = _model({"mlp": {"hidden": 4, "squeeze": True}})
    assert sorted(mlp.state_dict()) == sorted(
        ["relation", "head_projection", "tail_projection"]
        + [f"{r}_extras.{k}" for r in ("head", "tail") for k in ("w1", "b1", "w2", "b2")]
    )


def test_every_new_key_has_a_description():
    schema = json.loads(resources.files("kge").joinpath("schemas/model.schema.json").read_text())
    features = schema["properties"]["features"]["properties"]
    for node in (
        features["projection"],
        features["groups"],
        features["mlp"]["properties"]["norm"],
        schema["properties"]["subspace"],
        schema["properties"]["subspace"]["properties"]["dim"],
    ):
        assert node.get("description")
    assert schema["properties"]["subspace"]["additionalProperties"] is False
    assert MODEL_DEFAULTS["subspace"] == {"dim": 0}


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"dim": 8, "features": {"projection": "grouped", "groups": 3}}, "'features.groups' = 3 must divide dim = 8"),
        ({"features": {"mlp": {"norm": "batch"}}}, "'features.mlp.norm'"),
        ({"features": {"projection": "random", "mlp": {"hidden": 4}}}, "'features.projection'"),
        ({"features": {"projection": "sparse"}}, "key 'features.projection'"),
        ({"features": {"mlp": {"hidden": 4, "squeeze": True, "norm": "group"}}}, "key 'features.mlp.norm'"),
        ({"subspace": {"dim": -1}}, "key 'subspace.dim'"),
        ({"subspace": {"rank": 4}}, "unknown key 'subspace.rank'"),
    ],
)
def test_bad_encoder_settings_name_the_key(overrides, fragment):
    with pytest.raises(KgeInputError) as err:
        resolve_model_config(overrides)
    assert fragment in str(err.value)


# ----- projections --------------------------------------------------------------------------------
def test_grouped_projection_is_block_diagonal():
    G = 4
    model = _model({"projection": "grouped", "groups": G})
    blocks = model.head_projection
    assert blocks.shape == (G, D_MODEL // G, F // G)
    dense = _model({})
    assert blocks.numel() * G == dense.head_projection.numel()  # G times fewer parameters
    assert model.parameter_count(0) == dense.parameter_count(0) - 2 * (G - 1) * blocks.numel()
    e_s, e_f = _inputs()
    M = torch.block_diag(*blocks)  # (d, F): block g maps inputs [g F/G, (g+1) F/G) to outputs [g d/G, (g+1) d/G)
    e, f = model.encode(e_s, e_f, "head")
    torch.testing.assert_close(f, e_f @ M.T)
    torch.testing.assert_close(e, e_s + e_f @ M.T)
    for g in range(G):  # one output block by hand
        torch.testing.assert_close(f[:, g * 2 : (g + 1) * 2], e_f[:, g * 3 : (g + 1) * 3] @ blocks[g].T)
    # torch's default init with fan-in F/G; trained (a gradient reaches every block).
    assert blocks.abs().max() <= 1 / math.sqrt(F // G)
    f.sum().backward()
    assert all(blocks.grad[g].abs().sum() > 0 for g in range(G))
    with pytest.raises(KgeInputError, match="divide"):
        _model({"projection": "grouped", "groups": 8}, feature_dim=12, dim=8)  # 8 divides d but not F = 12


def test_random_projection_is_a_fixed_buffer():
    model = _model({"projection": "random"}, dim=64, feature_dim=768)
    M = model.head_projection
    assert not isinstance(M, torch.nn.Parameter) and not M.requires_grad
    assert {"head_projection", "tail_projection"} <= set(model.state_dict())
    assert all(p is not M for p in model.parameters())
    assert [id(p) for g in model.dense_param_groups() for p in g["params"]] == [id(model.relation)]  # no empty groups
    assert model.parameter_count(0) == model.relation.numel()
    assert abs(M.mean().item()) < 0.002 and M.var().item() == pytest.approx(1 / 768, rel=0.03)  # N(0, 1/F)
    assert not torch.equal(model.head_projection, model.tail_projection)  # one per role
    # Drawn from the model seed: the same seed gives the same matrix, another seed another one.
    assert torch.equal(_model({"projection": "random"}, dim=64, feature_dim=768).head_projection, M)
    assert not torch.equal(_model({"projection": "random"}, seed=1, dim=64, feature_dim=768).head_projection, M)
    shared = _model({"projection": "random", "share_projection": True})
    assert shared.head_projection is shared.tail_projection
    e_s, e_f = _inputs()
    e, f = shared.encode(e_s, e_f, "tail")
    torch.testing.assert_close(f, e_f @ shared.head_projection.T)
    # With extras the role keeps a group holding only its trained parts.
    mlp = _model(_mlp("none", projection="random"))
    assert [len(g["params"]) for g in mlp.dense_param_groups()] == [1, 4]
    torch.optim.Adam(mlp.dense_param_groups())  # the optimizer accepts them


# ----- normalized MLP -----------------------------------------------------------------------------
def _relu_gaussian_moments(mu: float, sigma: float) -> tuple[float, float]:
    a = mu / sigma
    phi, Phi = math.exp(-a * a / 2) / math.sqrt(2 * math.pi), 0.5 * (1 + math.erf(a / math.sqrt(2)))
    mean = sigma * phi + mu * Phi
    second = (mu * mu + sigma * sigma) * Phi + mu * sigma * phi
    return mean, second - mean * mean


def test_proxy_statistics_match_relu_of_a_gaussian():
    points = gaussian_proxy_points()
    assert points.shape == (256,)
    assert abs(points.mean().item()) < 1e-6 and points.var(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
    mus = torch.tensor([0.0, 1.0, -1.5, 0.3, 2.0])
    sigmas = torch.tensor([1.0, 0.5, 2.0, 0.1, 3.0])
    mean, var = proxy_statistics(sigmas, mus, False, points)
    for i, (mu, sigma) in enumerate(zip(mus.tolist(), sigmas.tolist())):
        m, v = _relu_gaussian_moments(mu, sigma)
        assert mean[i].item() == pytest.approx(m, abs=2e-3 * sigma), (mu, sigma)
        assert var[i].item() == pytest.approx(v, abs=3e-3 * sigma * sigma), (mu, sigma)


def test_proxy_statistics_of_glu_factorise():
    """a * sigmoid(b) with independent proxies a ~ N(mu_a, s_a^2), b ~ N(mu_b, s_b^2): quadrature by hand."""
    weight = torch.tensor([0.7, 1.3, 0.4, 2.0])  # gammas of (a_0, a_1, b_0, b_1)
    bias = torch.tensor([0.5, -1.0, 0.2, -0.8])
    mean, var = proxy_statistics(weight, bias, True, gaussian_proxy_points())
    x = torch.linspace(-12, 12, 200_001, dtype=torch.float64)
    density = torch.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    for c in range(2):
        s = torch.sigmoid(bias[2 + c].double() + weight[2 + c].double() * x)
        es, es2 = torch.trapezoid(s * density, x), torch.trapezoid(s * s * density, x)
        ea, ea2 = bias[c].double(), bias[c].double() ** 2 + weight[c].double() ** 2
        assert mean[c].item() == pytest.approx((ea * es).item(), abs=2e-3)
        assert var[c].item() == pytest.approx((ea2 * es2 - (ea * es) ** 2).item(), abs=3e-3)


def _set_norm_params(extras, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        extras.norm_weight.copy_(0.5 + torch.rand(extras.norm_weight.shape, generator=g))
        extras.norm_bias.copy_(torch.randn(extras.norm_bias.shape, generator=g) * 0.5)


@pytest.mark.parametrize("glu", [False, True])
def test_layer_proxy_mlp_matches_hand_computation(glu):
    hidden = 4
    model = _model(_mlp("layer_proxy", glu=glu, hidden=hidden))
    ex = model.head_extras
    _set_norm_params(ex)
    width = (2 if glu else 1) * hidden
    assert ex.norm_weight.shape == ex.norm_bias.shape == (width,)
    assert "head_extras.proxy_points" not in model.state_dict()  # a constant, rebuilt on load
    assert {"head_extras.norm_weight", "head_extras.norm_bias"} <= set(model.state_dict())
    e_s, e_f = _inputs()
    projected = e_f @ model.head_projection.T
    u = projected @ ex.w1.T + ex.b1
    y = (u - u.mean(1, keepdim=True)) / torch.sqrt(
        u.var(1, unbiased=False, keepdim=True) + NORM_EPS
    ) * ex.norm_weight + ex.norm_bias
    h = y[:, :hidden] * torch.sigmoid(y[:, hidden:]) if glu else torch.relu(y)
    # Proxy: Y_c ~ N(bias_c, weight_c^2) through the same activation, its moments over the points.
    z = gaussian_proxy_points()
    proxy = ex.norm_bias[:, None] + ex.norm_weight[:, None] * z
    if glu:
        a, s = proxy[:hidden], torch.sigmoid(proxy[hidden:])
        mean = a.mean(1) * s.mean(1)
        var = (a * a).mean(1) * (s * s).mean(1) - mean * mean
    else:
        mean, var = torch.relu(proxy).mean(1), torch.relu(proxy).var(1, unbiased=False)
    expected = ((h - mean) / torch.sqrt(var + NORM_EPS)) @ ex.w2.T + ex.b2
    e, f = model.encode(e_s, e_f, "head")
    assert e.shape == f.shape == (6, D_MODEL)
    torch.testing.assert_close(f, expected)
    # Gradients reach the LayerNorm's affine parameters (through the layer and the proxy statistics).
    f.square().sum().backward()
    assert ex.norm_weight.grad.abs().sum() > 0 and ex.norm_bias.grad.abs().sum() > 0


def test_batch_norm_mlp_train_and_eval():
    hidden = 4
    model = _model(_mlp("batch", hidden=hidden))
    ex = model.head_extras
    _set_norm_params(ex)
    assert {"head_extras.running_mean", "head_extras.running_var"} <= set(model.state_dict())
    assert ex.b1 is None  # BatchNorm would cancel it
    e_s, e_f = _inputs()
    u = (e_f @ model.head_projection.T) @ ex.w1.T
    # Training: the batch's statistics; running averages move with momentum 0.1 (variance unbiased).
    expected = (
        torch.relu((u - u.mean(0)) / torch.sqrt(u.var(0, unbiased=False) + NORM_EPS) * ex.norm_weight + ex.norm_bias)
        @ ex.w2.T
        + ex.b2
    )
    _, f = model.encode(e_s, e_f, "head")
    torch.testing.assert_close(f, expected)
    torch.testing.assert_close(ex.running_mean, 0.1 * u.mean(0).detach())
    torch.testing.assert_close(ex.running_var, 0.9 + 0.1 * u.var(0).detach())
    assert [id(t) for t in model.running_statistics()] == [id(ex.running_mean), id(ex.running_var)]
    # Eval (prediction): the running statistics, left unchanged.
    model.eval()
    running = [t.clone() for t in model.running_statistics()]
    rm, rv = running
    expected = torch.relu((u - rm) / torch.sqrt(rv + NORM_EPS) * ex.norm_weight + ex.norm_bias) @ ex.w2.T + ex.b2
    with torch.no_grad():
        _, f = model.encode(e_s, e_f, "head")
    torch.testing.assert_close(f, expected.detach())
    assert all(torch.equal(a, b) for a, b in zip(running, model.running_statistics()))


@pytest.mark.parametrize("norm", ["layer_proxy", "batch"])
def test_batch_independence(norm):
    """A row's encoding under layer_proxy never depends on the other rows; under batch norm it does in training."""
    model = _model(_mlp(norm, projection="grouped", groups=2))
    e_s, e_f = _inputs(8)
    other_s, other_f = _inputs(8, seed=9)
    for training in (True, False):
        model.train(training)
        with torch.no_grad():
            alone = model.encode(e_s[:3], e_f[:3], "head")[0]
            mixed = model.encode(torch.cat([e_s[:3], other_s]), torch.cat([e_f[:3], other_f]), "head")[0][:3]
        if norm == "layer_proxy" or not training:
            torch.testing.assert_close(alone, mixed)
        else:
            assert not torch.allclose(alone, mixed, atol=1e-4)


@pytest.mark.parametrize("projection", ["dense", "grouped", "random"])
@pytest.mark.parametrize("norm", ["none", "batch", "layer_proxy"])
def test_encode_shapes(projection, norm):
    features = {
        "projection": projection,
        "groups": 2,
        "mlp": {"hidden": 6, "squeeze": True, "residual": True, "glu": norm == "batch", "norm": norm},
    }
    model = _model(features)
    e_s, e_f = _inputs(5)
    for training in (True, False):
        model.train(training)
        for role in ("head", "tail"):
            e, f = model.encode(e_s, e_f, role)
            assert e.shape == f.shape == (5, D_MODEL) and torch.isfinite(e).all()


# ----- training, saving, loading ----------------------------------------------------------------------
def _train_config(**extra) -> dict:
    return resolve_model_config(
        {
            "score_fn": "distmult",
            "dim": 8,
            "batch_size": 64,
            "negatives": 64,
            "steps": 2,
            "learning_rate": 0.05,
            # Adam's slope lr / eps at g = 0 multiplies rounding differences into the updated
            # parameters; 1e-3 keeps it at 50 (tests/test_distributed.py::_configs). With 1e-4 the
            # largest difference was 0.88 of the tolerance on an AVX-512 CPU, 0.10 with 1e-3.
            "adam": {"eps": 1e-3},
            **extra,
        }
    )


def test_batch_norm_and_random_projection_train_save_and_load(mini_shards, tmp_path):
    """One worker matches the single-process reference (same rows per encoder call), the random
    projection never moves and gets no Adam state, and the saved model predicts in eval mode."""
    from bess_reference import reference_steps

    from kge.predict.predictor import load_model
    from kge.train.trainer import Trainer

    config = _train_config(features={"projection": "random", "mlp": {"hidden": 4, "squeeze": True, "norm": "batch"}})
    trainer = Trainer(config, mini_shards, tmp_path)
    model = trainer.model
    assert model.training
    before = model.head_projection.clone()
    batches = []
    for _ in range(2):
        trainer.train_step()
        batches.append([trainer.last_step["batch"]])
    assert torch.equal(model.head_projection, before)
    state_ids = {id(p) for p in trainer.dense_optimizer.state}
    assert id(model.head_projection) not in state_ids and id(model.head_extras.w1) in state_ids
    assert not torch.equal(model.head_extras.running_mean, torch.zeros(4))
    ref = reference_steps(config, mini_shards, batches)
    torch.testing.assert_close(model.entity_table, ref["table"], rtol=2e-5, atol=1e-5)
    for key, value in ref["dense"].items():  # running statistics included
        torch.testing.assert_close(model.state_dict()[key], value, rtol=2e-5, atol=1e-5, msg=key)
    trainer.save_final()
    loaded, saved, _ = load_model(tmp_path / "model.pt", device="cpu")
    assert not loaded.training and not loaded.head_extras.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    rows = torch.arange(5)
    feats = trainer.features.gather(rows)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.encode(loaded.entity_table[rows], feats, "tail")[0],
            model.encode(model.entity_table[rows], feats, "tail")[0],
        )


# ----- random-subspace optimization ------------------------------------------------------------------
def test_projected_gradient_by_hand():
    n, k, seed, step = 10, 3, 7, 5
    g = torch.randn(2, 5, generator=torch.Generator().manual_seed(0))
    small = torch.randn(3, generator=torch.Generator().manual_seed(1))
    params = [
        torch.nn.Parameter(torch.zeros(2, 5)),
        torch.nn.Parameter(torch.zeros(3)),
        torch.nn.Parameter(torch.zeros(4, 4)),
    ]
    params[0].grad, params[1].grad = g.clone(), small.clone()  # params[2] has no gradient
    subspace.project_gradients_(params, k, seed, step)
    P = torch.randn(
        n, k, generator=torch.Generator().manual_seed(subspace.projection_seed(seed, step, 0, 0))
    ) / math.sqrt(k)
    torch.testing.assert_close(params[0].grad, (P @ (P.T @ g.reshape(-1))).view(2, 5))
    torch.testing.assert_close(P, subspace.projection_matrix(n, k, seed, step, 0))
    assert torch.equal(params[1].grad, small)  # n <= k: the full gradient
    assert params[2].grad is None
    params[0].grad = g.clone()
    subspace.project_gradients_(params, 0, seed, step)  # dim 0: off
    assert torch.equal(params[0].grad, g)


def test_projection_is_generated_in_chunks(monkeypatch):
    """P is drawn chunk by chunk (rows per chunk = CHUNK_ELEMENTS // k) and never held whole."""
    monkeypatch.setattr(subspace, "CHUNK_ELEMENTS", 12)
    n, k = 23, 4
    assert subspace.chunk_rows(k) == 3
    g = torch.randn(n, generator=torch.Generator().manual_seed(2))
    P = subspace.projection_matrix(n, k, 1, 2, 3)
    assert P.shape == (n, k)
    chunk1 = torch.randn(3, k, generator=torch.Generator().manual_seed(subspace.projection_seed(1, 2, 3, 1))) / 2
    torch.testing.assert_close(P[3:6], chunk1)
    torch.testing.assert_close(subspace.project_gradient(g, k, 1, 2, 3), P @ (P.T @ g))


def test_projection_is_unbiased_and_deterministic():
    n, k, draws = 10, 3, 4000
    g = torch.randn(n, generator=torch.Generator().manual_seed(0))
    samples = torch.stack([subspace.project_gradient(g, k, 0, step, 0) for step in range(draws)])
    # E[P P^T] = I: each draw is about g (sd of a component about |g| / sqrt(k)), the mean is g.
    assert (samples.mean(0) - g).abs().max() < 5 * g.norm() / math.sqrt(k * draws)
    assert (samples - g).norm(dim=1).mean() > 0.5 * g.norm()  # and single draws are not g
    P = subspace.projection_matrix(2000, 50, 0, 0, 0)
    assert P.var().item() == pytest.approx(1 / 50, rel=0.03) and abs(P.mean().item()) < 2e-3
    # Deterministic per (seed, step, tensor), fresh for another step, seed or tensor.
    again = subspace.project_gradient(g, k, 0, 17, 0)
    assert torch.equal(again, samples[17])
    for other in ((0, 18, 0), (1, 17, 0), (0, 17, 1)):
        assert not torch.allclose(subspace.project_gradient(g, k, *other), again)


def test_trainer_projects_the_dense_gradients(mini_shards, tmp_path):
    """Same batches with and without subspace: every dense gradient is P P^T of the full one."""
    from kge.train.trainer import Trainer

    k = 6
    full = Trainer(_train_config(seed=3), mini_shards, tmp_path / "full")
    projected = Trainer(_train_config(seed=3, subspace={"dim": k}), mini_shards, tmp_path / "sub")
    for step in range(2):
        full.train_step()
        projected.train_step()
        assert torch.equal(full.last_step["batch"].head, projected.last_step["batch"].head)
        for index, (a, b) in enumerate(zip(full.dense_params, projected.dense_params)):
            assert a.grad.numel() > k
            if step == 0:  # from the same parameters, so the same full gradient
                torch.testing.assert_close(b.grad, subspace.project_gradient(a.grad, k, 3, 0, index))
    assert not torch.allclose(full.model.relation, projected.model.relation)


# ----- two workers ----------------------------------------------------------------------------------
def _batch_norm_worker(rank: int, world_size: int, init_file: str, config: dict, shard_dir: str, out_dir: str) -> None:
    from bess_reference import _join_gloo, _save_and_leave

    from kge.train.trainer import Trainer

    comm = _join_gloo(rank, world_size, init_file)
    trainer = Trainer(config, shard_dir, Path(out_dir) / "model", comm)
    for _ in range(2):
        trainer.train_step()
    _save_and_leave(
        {k: v.clone() for k, v in trainer.model.state_dict().items()}, os.path.join(out_dir, f"bn{rank}.pt")
    )


def test_batch_norm_running_statistics_stay_replicated(mini_shards, tmp_path):
    """Each worker normalizes with its own batch; the running statistics are averaged, so replicas agree."""
    from conftest import spawn_workers

    config = _train_config(
        workers=2,
        subspace={"dim": 5},
        features={"projection": "grouped", "groups": 2, "mlp": {"hidden": 4, "squeeze": True, "norm": "batch"}},
    )
    spawn_workers(_batch_norm_worker, (2, str(tmp_path / "init"), config, str(mini_shards), str(tmp_path)), 2)
    states = [torch.load(tmp_path / f"bn{r}.pt", weights_only=False) for r in range(2)]
    assert not torch.equal(states[0]["head_extras.running_mean"], torch.zeros(4))
    for key, value in states[0].items():
        torch.testing.assert_close(states[1][key], value, rtol=1e-6, atol=1e-7, msg=key)
