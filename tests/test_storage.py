"""Storage dtypes, round-to-nearest and exact stochastic rounding, bytes per entity row.

Neighbours are found independently of kge.table.storage with torch.nextafter on the storage dtype.
"""

import math

import pytest
import torch

from kge.common.errors import KgeInputError
from kge.table.footprint import bytes_per_entity
from kge.table.storage import (
    BF16_MAX,
    FP16_MAX,
    STORAGE_DTYPES,
    _sr_bfloat16,
    _sr_float16,
    round_to,
    storage_dtype,
)

REDUCED = [torch.bfloat16, torch.float16]
MAX = {torch.bfloat16: BF16_MAX, torch.float16: FP16_MAX}


def neighbours(x: torch.Tensor, dtype: torch.dtype):
    """(lo, hi) as float64: the two representable values around float32 x (lo == hi if exact)."""
    y = x.to(dtype)
    yf = y.to(torch.float64)
    xf = x.to(torch.float64)
    down = torch.nextafter(y, torch.full_like(y, -math.inf)).to(torch.float64)
    up = torch.nextafter(y, torch.full_like(y, math.inf)).to(torch.float64)
    lo = torch.where(yf > xf, down, yf)
    hi = torch.where(yf < xf, up, yf)
    return lo, hi


def spread(n: int, lo_exp: float, hi_exp: float, seed: int) -> torch.Tensor:
    """n float32 values of both signs, magnitudes log-uniform in [2^lo_exp, 2^hi_exp]."""
    g = torch.Generator().manual_seed(seed)
    exps = torch.rand(n, generator=g, dtype=torch.float64) * (hi_exp - lo_exp) + lo_exp
    signs = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
    return (signs * torch.exp2(exps)).to(torch.float32)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    assert a.dtype == b.dtype and a.element_size() == 2
    return torch.equal(a.view(torch.int16), b.view(torch.int16))


def test_storage_names():
    assert STORAGE_DTYPES == {"float32", "bfloat16", "float16"}
    assert storage_dtype("float32") == torch.float32
    assert storage_dtype("bfloat16") == torch.bfloat16
    assert storage_dtype("float16") == torch.float16
    with pytest.raises(KgeInputError, match="storage.*'fp16'"):
        storage_dtype("fp16")


@pytest.mark.parametrize("dtype", REDUCED)
def test_nearest_is_torch_cast(dtype):
    x = torch.cat(
        [
            spread(5000, -150, 128, seed=1),  # fp32 subnormals up to beyond bf16 max
            torch.tensor([0.0, -0.0, 65504.0, 65519.0, 65520.0, -70000.0, 3.4e38, math.inf, -math.inf, math.nan]),
        ]
    )
    assert same_bits(round_to(x, dtype), x.to(dtype))
    assert torch.equal(round_to(x[:-1], torch.float32), x[:-1])


@pytest.mark.parametrize("dtype", REDUCED)
def test_stochastic_lands_on_a_neighbour_and_keeps_the_sign(dtype):
    lo_exp = -149 if dtype == torch.bfloat16 else -40  # fp16: its subnormals and far below them
    x = spread(4000, lo_exp, math.log2(MAX[dtype]), seed=2).repeat(8)
    g = torch.Generator().manual_seed(3)
    r = round_to(x, dtype, g)
    assert r.dtype == dtype
    lo, hi = neighbours(x, dtype)
    rf = r.to(torch.float64)
    assert torch.all((rf == lo) | (rf == hi))
    assert torch.equal(torch.signbit(r), torch.signbit(x))
    # Both neighbours do occur (it is not round-to-nearest in disguise).
    assert torch.any(rf != x.to(dtype).to(torch.float64))


@pytest.mark.parametrize("dtype", REDUCED)
def test_stochastic_leaves_representable_values_unchanged(dtype):
    g = torch.Generator().manual_seed(4)
    bits = torch.randint(0, 2**16, (20000,), generator=g, dtype=torch.int32).to(torch.int16)
    exact = bits.view(dtype)
    exact = exact[torch.isfinite(exact)]
    extremes = torch.tensor([0.0, -0.0, MAX[dtype], -MAX[dtype]]).to(dtype)
    subnormal = torch.nextafter(torch.zeros(3, dtype=dtype), torch.ones(3, dtype=dtype)) * torch.tensor([1, -1, 7]).to(
        dtype
    )
    exact = torch.cat([exact, extremes, subnormal])
    assert same_bits(round_to(exact.to(torch.float32), dtype, g), exact)


# Values strictly between two neighbours: normal, negative, fp16 subnormal range, below fp16's
# smallest subnormal (2^-24 ~ 5.96e-8), near the top of the range, fp32 subnormal (bf16).
UNBIASED = {
    torch.float16: [1.0001, -0.3333, 3.14159, 1e-5, -4.2e-6, 7.5e-8, -3e-8, 1e-8, 6.1e-5, 65500.3, -1234.567],
    torch.bfloat16: [1.0001, -0.3333, 3.14159, 1e-5, -2.5e-8, 1e-40, -3e-39, 3.0e38, 65500.3, -1234.567],
}


@pytest.mark.parametrize("dtype", REDUCED)
def test_stochastic_rounding_is_unbiased(dtype):
    """Each value is rounded N times; the number of round-ups is Binomial(N, p), p = (x-lo)/(hi-lo).

    Accept |ups/N - p| <= 6 sigma, sigma = sqrt(p(1-p)/N): under an unbiased rounding a 6-sigma
    deviation has probability ~2e-9 per value, < 3e-8 over the values here (Bonferroni), and the
    seed is fixed, so the test is deterministic. A rounding biased by 1% of p would sit at
    0.01 * p / sigma ~ 5 to 15 sigma for these p, and round-to-nearest at many hundred sigma.
    """
    n = 20000
    values = torch.tensor(UNBIASED[dtype], dtype=torch.float32)
    x = values.repeat_interleave(n)
    r = round_to(x, dtype, torch.Generator().manual_seed(5)).to(torch.float64).view(-1, n)
    lo, hi = neighbours(values, dtype)
    assert torch.all(lo < hi), "test values must not be representable"
    p = (values.to(torch.float64) - lo) / (hi - lo)
    ups = (r == hi[:, None]).sum(dim=1).to(torch.float64)
    assert torch.all((r == hi[:, None]) | (r == lo[:, None]))
    sigma = torch.sqrt(p * (1 - p) / n)
    assert torch.all((ups / n - p).abs() <= 6 * sigma), (ups / n, p)
    # E[result] = x: the same bound on the sample mean, in units of (hi - lo).
    assert torch.all(((r.mean(dim=1) - values.to(torch.float64)) / (hi - lo)).abs() <= 6 * sigma)


def test_bfloat16_probabilities_are_exact():
    """Over all 2^16 random integers the mean of the results is exactly x (not just statistically)."""
    rand = torch.arange(2**16, dtype=torch.int32)
    for value in [1.0001, -0.3333, 1e-40, -2.5e-8, 3.0e38]:
        x = torch.full((2**16,), value, dtype=torch.float32)
        total = _sr_bfloat16(x, rand).to(torch.float64).sum()
        assert total == 2**16 * x[0].to(torch.float64)


def test_float16_probabilities_are_exact():
    """Enumerating every value of the top `drop` bits of the 62-bit word gives exactly x on average."""
    for value, drop in [(1.0001, 13), (-3.14159, 13), (65500.3, 13), (6.1e-5, 14), (-6.0e-5, 14), (1e-5, 16)]:
        count = 2**drop
        rand = torch.arange(count, dtype=torch.int64) << (62 - drop)
        x = torch.full((count,), value, dtype=torch.float32)
        total = _sr_float16(x, rand, lambda n: pytest.fail("no extra words expected")).to(torch.float64).sum()
        assert total == count * x[0].to(torch.float64), value


def test_float16_far_below_the_smallest_subnormal():
    """|x| < 2^-63: round up iff the low 24 random bits < significand and the h = drop-24 high bits are 0."""
    x = torch.tensor([-1.5 * 2.0**-70])  # significand 1.5 * 2^23; drop = 69, h = 45 high bits
    rem = int(1.5 * 2**23)
    zeros = lambda n: torch.zeros((n, 2), dtype=torch.int64)  # noqa: E731
    assert _sr_float16(x, torch.tensor([rem - 1]), zeros).item() == -(2.0**-24)
    assert _sr_float16(x, torch.tensor([rem]), zeros).item() == 0.0
    assert torch.signbit(_sr_float16(x, torch.tensor([rem]), zeros)).item()
    lowest_high_bit = lambda n: torch.full((n, 2), 1 << (62 - 45), dtype=torch.int64)  # noqa: E731
    just_below = lambda n: torch.tensor([[(1 << (62 - 45)) - 1, 2**62 - 1]] * n)  # noqa: E731
    assert _sr_float16(x, torch.tensor([0]), lowest_high_bit).item() == 0.0
    assert _sr_float16(x, torch.tensor([0]), just_below).item() == -(2.0**-24)
    # Through the public function (random words): only 0 or the smallest subnormal, sign kept.
    tiny = torch.tensor([1e-30, -1e-40, 2.0**-100, -(2.0**-64)]).repeat(1000)
    r = round_to(tiny, torch.float16, torch.Generator().manual_seed(6))
    assert torch.all((r.abs() == 0) | (r.abs().to(torch.float64) == 2.0**-24))
    assert torch.equal(torch.signbit(r), torch.signbit(tiny))


@pytest.mark.parametrize("dtype", REDUCED)
def test_stochastic_saturates_and_passes_specials(dtype):
    big = MAX[dtype] * 1.001 if dtype == torch.float16 else 3.4e38
    x = torch.tensor([big, -big, math.inf, -math.inf, math.nan])
    r = round_to(x, dtype, torch.Generator().manual_seed(7))
    assert r[0].item() == MAX[dtype] and r[1].item() == -MAX[dtype]
    assert r[2].item() == math.inf and r[3].item() == -math.inf and math.isnan(r[4].item())


def test_stochastic_is_reproducible_from_the_seed():
    x = spread(1000, -30, 10, seed=8)
    for dtype in REDUCED:
        a = round_to(x, dtype, torch.Generator().manual_seed(9))
        b = round_to(x, dtype, torch.Generator().manual_seed(9))
        c = round_to(x, dtype, torch.Generator().manual_seed(10))
        assert same_bits(a, b) and not same_bits(a, c)


def test_bytes_per_entity_by_hand():
    # The submission's layout: Adam's m and v (or sqrt v) beside the row, a 768-d float16 feature.
    def row(dim, storage, **kw):
        return bytes_per_entity(dim, storage, **{"optimizer": "adam", "feature_dim": 768, **kw})

    assert row(256, "float16") == {
        "values": 512,
        "indices": 0,
        "scale": 0,
        "m": 512,
        "v": 512,
        "feature": 1536,
        "total": 256 * 2 * 3 + 768 * 2,
    }
    assert row(256, "bfloat16")["total"] == 3072
    assert row(256, "float32")["total"] == 256 * 4 * 3 + 768 * 2 == 4608
    assert row(400, "float32")["total"] == 400 * 4 * 3 + 1536 == 6336
    assert row(400, "float16")["total"] == 400 * 2 * 3 + 1536 == 3936
    assert row(400, "float16", feature_dim=0)["total"] == 2400
    assert row(256, "float32", feature_format="float32")["feature"] == 768 * 4
    assert row(256, "float16", optimizer="sgd") == {
        "values": 512,
        "indices": 0,
        "scale": 0,
        "m": 0,
        "v": 0,
        "feature": 1536,
        "total": 2048,
    }
    assert bytes_per_entity(256, "float16")["total"] == 512  # the row alone: no optimizer state, no feature
    for bad in (
        {"storage": "half"},
        {"storage": "float16", "feature_format": "int8"},  # int8 needs a scale
        {"storage": "float16", "optimizer": "adagrad"},
        {"storage": "float8_e4m3fn", "optimizer": "adam"},  # only 32/16-bit tables train
    ):
        with pytest.raises(KgeInputError):
            bytes_per_entity(256, **bad)
