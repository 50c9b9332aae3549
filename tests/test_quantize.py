"""8-bit formats: round-trip error within the documented bound, saturation, unbiased stochastic
rounding, bytes per row, and a trained model quantized and scored through `kge predict`'s path.

Neighbouring representable values are found independently of kge.table.quantize, by enumerating every
bit pattern of the format.
"""

import numpy as np
import pytest
import torch

from kge.common.errors import KgeInputError
from kge.config import resolve_model_config
from kge.table.footprint import bytes_per_entity
from kge.table.quantize import (
    FORMATS,
    SCALINGS,
    dequantize,
    error_bound,
    format_spec,
    quantize,
    quantize_dequantize,
)

FP8 = [f for f in FORMATS if f.startswith("float8")]
COMBINATIONS = [(f, s) for f in FORMATS for s in SCALINGS if not (f == "int8" and s == "none")]
# Formats whose range (largest / smallest subnormal) is narrower than the test rows' 2^56 spread.
NARROW = ["float16", *FP8, "int8"]


def representable(fmt: str) -> torch.Tensor:
    """Every finite value of the format, sorted, float64."""
    if fmt == "int8":
        return torch.arange(-127, 128, dtype=torch.float64)
    spec = format_spec(fmt)
    signed = {1: np.int8, 2: np.int16, 4: np.int32}[spec.bytes]
    patterns = np.arange(2 ** (8 * spec.bytes), dtype=np.int64).astype(signed)  # every bit pattern (wraps to signed)
    values = torch.from_numpy(patterns).view(spec.dtype).double()
    return torch.unique(values[torch.isfinite(values)])  # sorted; -0.0 and 0.0 merged


def neighbours(y: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi), float64: the representable values with lo <= y <= hi (lo == hi when y is representable)."""
    grid = representable(fmt)
    y = y.double()
    hi_index = torch.searchsorted(grid, y).clamp(max=len(grid) - 1)
    hi = grid[hi_index]
    lo = torch.where(hi == y, hi, grid[(hi_index - 1).clamp(min=0)])
    return lo, hi


def wide_rows(n: int, d: int, seed: int, row_spread: float = 40.0, within_row: float = 16.0) -> torch.Tensor:
    """(n, d) float32 of both signs: row magnitudes 2^0 down to 2^-row_spread, values in a row
    log-uniform over 2^within_row below the row's magnitude (a wide range within and across rows)."""
    g = torch.Generator().manual_seed(seed)
    row_exponent = -torch.linspace(0, row_spread, n, dtype=torch.float64)[:, None]
    exponent = row_exponent - torch.rand(n, d, generator=g, dtype=torch.float64) * within_row
    sign = torch.where(torch.rand(n, d, generator=g) < 0.5, -1.0, 1.0).double()
    return (sign * torch.exp2(exponent)).float()


def scale_of(q) -> torch.Tensor | float:
    if q.scales is None:
        return 1.0
    return q.scales[:, None] if q.scaling == "row" else q.scales


def mean_row_relative_error(x: torch.Tensor, approx: torch.Tensor) -> float:
    """Mean over rows of ||approx - x|| / ||x||."""
    return float(((approx.double() - x.double()).norm(dim=1) / x.double().norm(dim=1)).mean())


def scaled(x: torch.Tensor, q) -> torch.Tensor:
    """x / scale as the format rounds it: computed in float32, saturated at +-max, returned as float64."""
    top = format_spec(q.format).max
    return (x / torch.as_tensor(scale_of(q), dtype=torch.float32)).clamp(-top, top).double()


@pytest.mark.parametrize("fmt,scaling", COMBINATIONS)
def test_round_trip_within_the_documented_bound(fmt, scaling):
    spec = format_spec(fmt)
    x = wide_rows(64, 96, seed=1)
    if scaling == "none":
        x = x * (spec.max / 2)  # within range, reaching the subnormals
    q = quantize(x, fmt, scaling)
    assert q.data.dtype == spec.dtype and q.data.shape == x.shape
    if scaling == "row":
        assert q.scales.dtype == torch.float32 and q.scales.shape == (64,)
        if spec.max < 2.0**100:  # (float32/bfloat16 scales of rows below 1 stop at 2^-126)
            assert torch.equal(
                q.data.float().abs().amax(dim=1), torch.full((64,), spec.max)
            )  # the row max maps onto max
    elif scaling == "tensor":
        assert q.scales.dtype == torch.float32 and q.scales.dim() == 0
    else:
        assert q.scales is None
    approx = dequantize(q)
    assert approx.dtype == torch.float32
    error = (approx.double() - x.double()).abs()
    assert bool((error <= error_bound(fmt, scaling).limit(x, scale_of(q))).all())
    # Nearest rounding: the stored value is the nearer neighbour of the scaled value.
    if fmt != "float32":
        y = scaled(x, q)
        lo, hi = neighbours(y, fmt)
        stored = q.data.double()
        assert bool(((stored == lo) | (stored == hi)).all())
        assert bool(((stored - y).abs() <= torch.minimum(y - lo, hi - y) * (1 + 1e-6) + 1e-300).all())


def test_documented_relative_bounds():
    assert error_bound("float8_e4m3fn", "row").relative == 1 / 16
    assert error_bound("float8_e4m3fnuz", "none").relative == 1 / 16
    assert error_bound("float8_e5m2", "tensor").relative == 1 / 8
    assert error_bound("float8_e5m2fnuz", "row").relative == 1 / 8
    assert error_bound("float16", "none").relative == 2.0**-11
    assert error_bound("bfloat16", "none").relative == 2.0**-8
    assert error_bound("int8", "row").absolute == 0.5 and error_bound("int8", "row").relative == 0
    # The fnuz variants: exponent bias one larger, so everything (max, subnormals) is half as large.
    assert format_spec("float8_e4m3fn").max == 448 and format_spec("float8_e4m3fnuz").max == 240
    assert format_spec("float8_e4m3fnuz").smallest_subnormal == format_spec("float8_e4m3fn").smallest_subnormal / 2
    assert format_spec("float8_e5m2fnuz").smallest_subnormal == format_spec("float8_e5m2").smallest_subnormal / 2
    for fmt in [f for f in FORMATS if f != "float32"]:  # the spec agrees with the enumerated values
        grid = representable(fmt)
        assert grid.max() == format_spec(fmt).max
        assert grid[grid > 0].min() == format_spec(fmt).smallest_subnormal


@pytest.mark.parametrize("fmt", NARROW)
def test_row_scaling_beats_tensor_scaling_on_rows_of_different_magnitude(fmt):
    x = wide_rows(64, 96, seed=2)
    by_row = mean_row_relative_error(x, quantize_dequantize(x, fmt, "row"))
    by_tensor = mean_row_relative_error(x, quantize_dequantize(x, fmt, "tensor"))
    assert by_row < 0.5 * by_tensor, (by_row, by_tensor)


@pytest.mark.parametrize("fmt", [*FP8, "float16"])
def test_unscaled_values_beyond_the_range_saturate(fmt):
    top = format_spec(fmt).max
    x = torch.tensor([[1e30, -1e30, 3 * top, -1.5 * top, top, 1.0]])
    generator = torch.Generator().manual_seed(0)
    for rounded in (quantize(x, fmt, "none"), quantize(x, fmt, "none", generator)):
        values = rounded.data.float()
        assert bool(torch.isfinite(values).all())
        assert values[0, :5].tolist() == [top, -top, top, -top, top]
    with pytest.raises(KgeInputError, match="NaN or inf"):
        quantize(torch.tensor([[float("nan"), 1.0]]), fmt, "none")


@pytest.mark.parametrize(
    "fmt,scaling",
    [
        *[(f, "none") for f in FP8],
        ("float16", "none"),
        ("bfloat16", "none"),
        ("int8", "row"),
        ("float8_e4m3fn", "row"),
        ("float8_e5m2", "tensor"),
    ],
)
def test_stochastic_rounding_is_unbiased(fmt, scaling):
    draws = 4000
    spec = format_spec(fmt)
    # 128 values over the normal and subnormal ranges (and some exactly representable ones).
    if spec.name == "int8":
        base = wide_rows(1, 128, seed=3, row_spread=0, within_row=8) * 127
    else:
        base = wide_rows(1, 128, seed=3, row_spread=0, within_row=30) * spec.max * 0.9
    if scaling == "none":
        base[0, :8] = representable(fmt)[-8:].float()  # the largest values, max included: stored unchanged
    x = base.expand(draws, -1).contiguous()  # every row the same: each column is drawn `draws` times
    q = quantize(x, fmt, scaling, torch.Generator().manual_seed(4))
    y = scaled(x, q)
    lo, hi = neighbours(y, fmt)
    stored = q.data.double()
    assert bool(((stored == lo) | (stored == hi)).all()), "each draw is one of the two neighbours"
    # Mean of the draws (scaled units): within 5 standard errors, sigma <= spacing / 2 per draw.
    mean, target = stored.mean(0), y[0]
    spacing = (hi - lo)[0]
    assert bool(((mean - target).abs() <= 5 * spacing / 2 / draws**0.5 + 1e-12 * target.abs()).all())
    # Draws do mix (both neighbours occur), representable values never move, the seed decides.
    went_up = (stored == hi).double().mean(0)
    assert bool(((went_up > 0) & (went_up < 1)).any())
    assert torch.equal(stored[:, spacing == 0], y[:, spacing == 0])
    again = quantize(x, fmt, scaling, torch.Generator().manual_seed(4)).data
    assert torch.equal(again.float(), q.data.float())


def test_int8_without_a_scale_and_unknown_names_are_refused():
    x = torch.ones(2, 3)
    with pytest.raises(KgeInputError, match="int8 needs a scale"):
        quantize(x, "int8", "none")
    with pytest.raises(KgeInputError, match="int8 needs a scale"):
        bytes_per_entity(8, "int8", scaling="none")["total"]
    with pytest.raises(KgeInputError, match="format.*'fp8'"):
        quantize(x, "fp8", "row")
    with pytest.raises(KgeInputError, match="scaling.*'block'"):
        quantize(x, "float16", "block")


def test_bytes_per_entity_of_quantized_rows():
    assert bytes_per_entity(256, "float32", scaling="none")["total"] == 1024
    assert bytes_per_entity(256, "bfloat16", scaling="none")["total"] == 512
    assert bytes_per_entity(256, "float16", scaling="tensor")["total"] == 512
    for fmt in FP8:
        assert bytes_per_entity(256, fmt, scaling="none")["total"] == 256
        assert bytes_per_entity(256, fmt, scaling="tensor")["total"] == 256
        assert bytes_per_entity(256, fmt, scaling="row")["total"] == 260
    assert bytes_per_entity(256, "int8", scaling="row")["total"] == 260
    assert bytes_per_entity(768, "int8", scaling="tensor")["total"] == 768


def test_zero_rows_and_tiny_rows():
    x = torch.zeros(3, 4)
    x[1] = 1e-40  # fp32 subnormal row: the scale stays a normal fp32 number
    x[2, 0] = -2.0
    for fmt, scaling in COMBINATIONS:
        q = quantize(x, fmt, scaling)
        assert q.scales is None or bool((q.scales >= 2.0**-126).all())
        approx = dequantize(q)
        assert bool(torch.isfinite(approx).all())
        assert torch.equal(approx[0], torch.zeros(4))
        assert abs(float(approx[2, 0]) + 2.0) <= 2.0 * 2.0**-22  # the maximum maps onto the format's max and back


# ----- a trained model ----------------------------------------------------------------------

SETTINGS = {
    "score_fn": "distmult",
    "dim": 16,
    "batch_size": 64,
    "negatives": 64,
    "steps": 3,
    "learning_rate": 0.02,
    "checkpoint_every": 1000,
    "validate_every": 0,
    "features": {"use": True},
}


@pytest.fixture(scope="module")
def trained(mini_shards, tmp_path_factory):
    from kge.train.trainer import train

    model_dir = tmp_path_factory.mktemp("quantise") / "m"
    train(resolve_model_config(SETTINGS), mini_shards, model_dir, progress=False)
    return model_dir / "model.pt"


def test_quantized_model_loads_and_holds_the_dequantized_table(trained, mini_shards, tmp_path):
    from kge.predict.predictor import load_model
    from kge.techniques.quantization import quantize_model
    from kge.train.checkpoint import load_entity_rows, read_model

    saved = read_model(trained)
    original = load_entity_rows(trained, saved).float()
    out = tmp_path / "e4m3"
    report = quantize_model(trained, out, "float8_e4m3fn", "row", progress=False)
    model, _, _ = load_model(out / "model.pt", "cpu")
    assert torch.equal(model.entity_table, dequantize(quantize(original, "float8_e4m3fn", "row")))
    assert report["table"]["bytes_per_entity"] == 16 + 4 and report["table"]["source_bytes_per_entity"] == 64
    assert report["features"]["bytes_per_entity"] == 2 * saved["feature_dim"] and not report["features"]["quantized"]
    assert report["bytes_per_entity"] == 20 + 2 * saved["feature_dim"]
    assert 0 < report["table"]["max_abs_error"] <= float(original.abs().max()) / 16 * (1 + 1e-6)
    assert 0 < report["table"]["mean_row_relative_error"] < 1 / 16
    assert (out / "quantization.json").is_file() and read_model(out / "model.pt")["quantization"] == report

    # Tensor scaling over the shards uses one scale for the whole table; stochastic rounding is seeded.
    report = quantize_model(
        trained, tmp_path / "int8", "int8", "tensor", generator=torch.Generator().manual_seed(0), progress=False
    )
    model, _, _ = load_model(tmp_path / "int8" / "model.pt", "cpu")
    scale = float(original.abs().max()) / 127
    assert (
        report["table"]["tensor_scale"] == pytest.approx(scale, rel=1e-6)
        and report["table"]["rounding"] == "stochastic"
    )
    steps = model.entity_table / report["table"]["tensor_scale"]
    assert torch.allclose(steps, steps.round(), atol=1e-4)  # every row on the one int8 grid
    assert float((model.entity_table - original).abs().max()) <= scale * (1 + 1e-5)  # within one step


def test_quantized_features_are_scored_as_stored(trained, mini_shards, tmp_path):
    from kge.bess.features import FeatureStore
    from kge.bess.partition import Partition
    from kge.predict.predictor import Predictor, load_model
    from kge.table.quantize import DequantizedFeatures, quantized_features
    from kge.techniques.quantization import quantize_model

    out = tmp_path / "f"
    report = quantize_model(
        trained, out, "float16", "none", "float8_e5m2", "tensor", shard_dir=mini_shards, progress=False
    )
    features = report["features"]
    assert (
        features["quantized"] and features["bytes_per_entity"] == features["dim"] > 0 and features["tensor_scale"] > 0
    )
    assert 0 < features["mean_row_relative_error"] < 1 / 8
    model, saved, device = load_model(out / "model.pt", "cpu")
    partition = Partition.load(mini_shards / "partition.npz")
    store = FeatureStore(mini_shards, partition.n_shards)
    scored = quantized_features(store, saved)
    assert isinstance(scored, DequantizedFeatures) and quantized_features(store, {"config": {}}) is store
    # A gathered block equals the block of the whole quantized matrix (one tensor scale for all).
    whole = quantize_dequantize(store.block(0, store.num_rows), "float8_e5m2", "tensor")
    rows = torch.tensor([5, 0, store.num_rows - 1, 17])
    assert torch.equal(scored.gather(rows), whole[rows])
    assert torch.equal(scored.block(3, 9), whole[3:9])
    hr = np.array([[0, 0], [1, 1], [2, 0]])
    ids, scores = Predictor(model, scored, partition, device).topk(hr, 5)
    assert ids.shape == (3, 5) and np.isfinite(scores).all()


def test_quantize_and_predict_commands(trained, mini_root, mini_shards, tmp_path, monkeypatch):
    """`kge quantise` writes the model; `kge predict` scores its features as stored and reports the bytes."""
    import json

    import kge.predict.predictor
    from kge.cli import main
    from kge.table.quantize import DequantizedFeatures

    out = tmp_path / "q"
    assert (
        main(
            [
                "quantise",
                "--model",
                str(trained),
                "--out",
                str(out),
                "--format",
                "float8_e4m3fnuz",
                "--scaling",
                "row",
                "--feature-format",
                "int8",
                "--feature-scaling",
                "row",
                "--shard-dir",
                str(mini_shards),
                "--stochastic",
                "--seed",
                "3",
            ]
        )
        == 0
    )
    report = json.loads((out / "quantization.json").read_text())
    assert report["table"]["rounding"] == "stochastic" and report["features"]["format"] == "int8"
    assert report["bytes_per_entity"] == (16 + 4) + (report["features"]["dim"] + 4)

    seen = []

    def fake_predict_splits(predictor, queries, k, query_batch):  # the wiring only, not 40000 queries
        seen.append(predictor.features)
        arrays = {}
        for split, hr in queries.items():
            arrays[f"{split}_ids"] = np.zeros((len(hr), k), dtype=np.int64)
            arrays[f"{split}_scores"] = np.zeros((len(hr), k), dtype=np.float32)
        return arrays, {split: 0.0 for split in queries}

    monkeypatch.setattr(kge.predict.predictor, "predict_splits", fake_predict_splits)
    assert (
        main(
            [
                "predict",
                "--model",
                str(out / "model.pt"),
                "--root",
                str(mini_root),
                "--shard-dir",
                str(mini_shards),
                "--top-k",
                "10",
                "--out",
                str(tmp_path / "p.npz"),
                "--metrics",
                str(tmp_path / "p.json"),
            ]
        )
        == 0
    )
    assert isinstance(seen[0], DequantizedFeatures) and seen[0].format == "int8"
    metrics = json.loads((tmp_path / "p.json").read_text())
    assert metrics["quantization"]["bytes_per_entity"] == report["bytes_per_entity"]
    assert metrics["quantization"]["table"] == {"format": "float8_e4m3fnuz", "scaling": "row", "rounding": "stochastic"}


def test_cli_errors_are_one_line(trained, tmp_path, capsys):
    from kge.cli import main

    for args, fragment in (
        (("--format", "fp8", "--scaling", "row"), "--format: expected one of"),
        (("--format", "int8", "--scaling", "none"), "--scaling: int8 needs a scale"),
        (
            ("--format", "int8", "--scaling", "row", "--feature-format", "e4m3", "--feature-scaling", "row"),
            "--feature-format: expected",
        ),
        (
            ("--format", "int8", "--scaling", "row", "--feature-format", "int8"),
            "--feature-format: needs --feature-scaling",
        ),
    ):
        assert main(["quantise", "--model", str(trained), "--out", str(tmp_path / "q"), *args]) == 2
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("kge: error: ") and fragment in lines[0], lines
    assert not (tmp_path / "q" / "model.pt").exists()
