"""Sparse row Adam against torch.optim.Adam (the independent reference), and its storage precisions."""

import pytest
import torch

from kge.common.errors import KgeInputError
from kge.table.sparse_adam import SparseRowAdam
from kge.table.storage import round_to


def test_all_rows_touched_matches_torch_adam():
    torch.manual_seed(0)
    table = torch.randn(6, 4, dtype=torch.float64)
    reference = torch.nn.Parameter(table.clone())
    torch_adam = torch.optim.Adam([reference], lr=0.01, betas=(0.9, 0.99), eps=1e-8)
    sparse = SparseRowAdam(table, beta1=0.9, beta2=0.99, eps=1e-8)
    for _step in range(5):
        grad = torch.randn(6, 4, dtype=torch.float64)
        reference.grad = grad.clone()
        torch_adam.step()
        sparse.step(torch.arange(6), grad, lr=0.01)
    torch.testing.assert_close(table, reference.detach(), rtol=1e-12, atol=1e-12)


def test_untouched_rows_and_their_state_stay_put():
    table = torch.randn(5, 3, dtype=torch.float64)
    before = table.clone()
    adam = SparseRowAdam(table)
    adam.step(torch.tensor([1, 3]), torch.ones(2, 3, dtype=torch.float64), lr=0.1)
    assert torch.equal(table[[0, 2, 4]], before[[0, 2, 4]])
    assert not torch.equal(table[[1, 3]], before[[1, 3]])
    assert torch.count_nonzero(adam.m[[0, 2, 4]]) == 0
    # First Adam step moves every touched coordinate by lr (bias-corrected m/sqrt(v) = sign(g)).
    torch.testing.assert_close(table[[1, 3]], before[[1, 3]] - 0.1, rtol=0, atol=1e-6)


def test_lazy_rows_use_global_bias_correction():
    """A row first touched at step 3 uses the step-3 bias correction, as the submission's lazy Adam."""
    table = torch.zeros(2, 1, dtype=torch.float64)
    adam = SparseRowAdam(table, beta1=0.9, beta2=0.999, eps=0.0)
    adam.step(torch.tensor([0]), torch.ones(1, 1, dtype=torch.float64), lr=1.0)
    adam.step(torch.tensor([0]), torch.ones(1, 1, dtype=torch.float64), lr=1.0)
    adam.step(torch.tensor([1]), torch.full((1, 1), 2.0, dtype=torch.float64), lr=1.0)
    m = 0.1 * 2.0 / (1 - 0.9**3)
    v = 0.001 * 4.0 / (1 - 0.999**3)
    torch.testing.assert_close(table[1, 0], torch.tensor(-m / v**0.5, dtype=torch.float64))


# ----- storage precision (kge.table.storage) -----------------------------------------------------------

REDUCED = ["bfloat16", "float16"]
DTYPE = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _legacy_step(table, m, v, step_count, rows, grad, lr, beta1, beta2, eps):
    """The implementation before storage options existed, copied verbatim."""
    mm = m[rows].mul_(beta1).add_(grad, alpha=1 - beta1)
    vv = v[rows].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    m[rows] = mm
    v[rows] = vv
    update = (mm / (1 - beta1**step_count)) / ((vv / (1 - beta2**step_count)).sqrt_() + eps)
    table[rows] -= lr * update


def test_float32_storage_is_the_original_update_within_fp32_rounding():
    """The 11-pass float32 update (lerp, folded bias corrections, index_add_) changed the order of
    roundings, not the update: against the original implementation run in float64 it is as close
    as the original fp32 implementation itself (a few ulps over 30 steps), and m, v agree too."""
    g = torch.Generator().manual_seed(1)
    rows_n, d = 40, 16
    table = torch.randn(rows_n, d, generator=g)
    legacy = [table.clone(), torch.zeros(rows_n, d), torch.zeros(rows_n, d)]  # the original, in fp32
    exact = [table.double(), torch.zeros(rows_n, d, dtype=torch.float64), torch.zeros(rows_n, d, dtype=torch.float64)]
    adam = SparseRowAdam(table, 0.9, 0.99, 1e-8, storage="float32")
    assert adam.table is table and adam.v is not None and adam.sqrt_v is None
    for step in range(1, 31):
        rows = torch.randperm(rows_n, generator=g)[:13]
        grad = torch.randn(13, d, generator=g) * (10.0 ** torch.randint(-4, 2, (13, 1), generator=g))
        adam.step(rows, grad, lr=0.05)
        _legacy_step(*legacy, step, rows, grad, 0.05, 0.9, 0.99, 1e-8)
        _legacy_step(*exact, step, rows, grad.double(), 0.05, 0.9, 0.99, 1e-8)
    for ours, old, ref in zip((table, adam.m, adam.v), legacy, exact):
        err = (ours.double() - ref).abs().max()
        old_err = (old.double() - ref).abs().max()
        scale = ref.abs().max()
        assert err <= 2e-6 * scale  # a few fp32 ulps of the largest value
        assert err <= 4 * old_err + 1e-12 * scale  # no worse than the original fp32 rounding, give or take
        torch.testing.assert_close(ours, old, rtol=1e-5, atol=1e-6 * float(scale))


@pytest.mark.parametrize("stochastic", [False, True])
@pytest.mark.parametrize("storage", REDUCED)
def test_reduced_storage_is_an_fp32_step_then_rounding(storage, stochastic):
    """By hand, in fp32: m' = b1 m + (1-b1) g, v' = b2 s^2 + (1-b2) g^2, row' = row - lr m'/c1 / (sqrt(v'/c2) + eps);
    stored: round(row'), round(m'), round(sqrt(v')) in the order table, m, sqrt v (same random words)."""
    dtype = DTYPE[storage]
    b1, b2, eps, lr = 0.9, 0.99, 1e-6, 0.01
    g = torch.Generator().manual_seed(2)
    start = torch.randn(30, 16, generator=g)
    adam = SparseRowAdam(start.clone(), b1, b2, eps, storage=storage, stochastic_rounding=stochastic)
    assert adam.table.dtype == adam.m.dtype == adam.sqrt_v.dtype == dtype and adam.v is None
    assert torch.equal(_bits(adam.table), _bits(start.to(dtype)))
    for step in range(1, 5):
        rows = torch.randperm(30, generator=g)[:10]
        untouched = torch.ones(30, dtype=torch.bool)
        untouched[rows] = False
        grad = torch.randn(10, 16, generator=g) * 10.0 ** torch.randint(-3, 3, (10, 1), generator=g)
        before = [t.clone() for t in (adam.table, adam.m, adam.sqrt_v)]
        row0, m0, s0 = (t[rows].to(torch.float32) for t in before)
        m1 = torch.add(m0 * b1, grad, alpha=1 - b1)
        v1 = torch.addcmul((s0 * s0) * b2, grad, grad, value=1 - b2)
        c1, c2 = 1 - b1**step, 1 - b2**step
        row1 = row0 - lr * ((m1 / c1) / (torch.sqrt(v1 / c2) + eps))
        source = torch.Generator().manual_seed(100 + step) if stochastic else None
        adam.step(rows, grad, lr, generator=torch.Generator().manual_seed(100 + step) if stochastic else None)
        expected = [round_to(t, dtype, source) for t in (row1, m1, torch.sqrt(v1))]
        for stored, old, want in zip((adam.table, adam.m, adam.sqrt_v), before, expected):
            assert torch.equal(_bits(stored[rows]), _bits(want))
            assert torch.equal(_bits(stored[untouched]), _bits(old[untouched]))
        if not stochastic:
            for stored, want in zip((adam.table, adam.m, adam.sqrt_v), (row1, m1, torch.sqrt(v1))):
                assert torch.equal(_bits(stored[rows]), _bits(want.to(dtype)))
    assert adam.step_count == 4


@pytest.mark.parametrize("storage", REDUCED)
def test_reduced_storage_first_step_moves_by_lr(storage):
    """First Adam step from zero state moves each touched coordinate by lr * sign(g) (eps = 0)."""
    table = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
    adam = SparseRowAdam(table, 0.9, 0.999, 0.0, storage=storage)
    adam.step(torch.tensor([1]), torch.tensor([[1e3, -1e-3]]), lr=0.5)  # g^2 = 1e6 would overflow fp16 v
    assert adam.table.tolist() == [[1.0, -2.0], [2.5, 4.5]]
    assert torch.all(torch.isfinite(adam.sqrt_v.float()))


def test_state_dict_names_storage_and_refuses_a_mismatch():
    table = torch.randn(4, 2)
    fp32 = SparseRowAdam(table.clone())
    assert fp32.state_dict()["storage"] == "float32"
    legacy = {"m": torch.zeros(4, 2), "v": torch.ones(4, 2), "step_count": 3}  # checkpoint without "storage"
    fp32.load_state_dict(legacy)
    assert fp32.step_count == 3 and torch.equal(fp32.v, torch.ones(4, 2))
    half = SparseRowAdam(table.clone(), storage="float16")
    assert set(half.state_dict()) == {"m", "sqrt_v", "step_count", "storage"}
    with pytest.raises(KgeInputError, match="float32.*float16"):
        half.load_state_dict(fp32.state_dict())
    with pytest.raises(KgeInputError, match="bfloat16"):
        fp32.load_state_dict(SparseRowAdam(table.clone(), storage="bfloat16").state_dict())
    with pytest.raises(KgeInputError, match="storage"):
        SparseRowAdam(table, storage="fp8")


@pytest.mark.parametrize("storage", REDUCED)
def test_resume_is_bit_exact_with_the_optimizers_own_generator(storage):
    g = torch.Generator().manual_seed(3)
    start = torch.randn(12, 4, generator=g)
    steps = [(torch.randperm(12, generator=g)[:5], torch.randn(5, 4, generator=g)) for _ in range(6)]
    straight = SparseRowAdam(start.clone(), storage=storage, stochastic_rounding=True, seed=7)
    for rows, grad in steps:
        straight.step(rows, grad, lr=0.1)
    first = SparseRowAdam(start.clone(), storage=storage, stochastic_rounding=True, seed=7)
    for rows, grad in steps[:3]:
        first.step(rows, grad, lr=0.1)
    saved = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in first.state_dict().items()}
    table = first.table.clone()
    for rows, grad in steps[3:]:
        first.step(rows, grad, lr=0.1)  # advances the generator past the saved state
    resumed = SparseRowAdam(table, storage=storage, stochastic_rounding=True, seed=999)
    resumed.load_state_dict(saved)
    for rows, grad in steps[3:]:
        resumed.step(rows, grad, lr=0.1)
    for a, b in ((straight.table, resumed.table), (straight.m, resumed.m), (straight.sqrt_v, resumed.sqrt_v)):
        assert torch.equal(_bits(a), _bits(b))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("storage", REDUCED)
def test_cuda_tables_use_their_device_and_cpu_random_words(storage):
    """Stochastic rounding is integer work on random words from a CPU generator: same bits on any device."""
    x = torch.randn(1000) * 10.0 ** torch.randint(-9, 4, (1000,))
    on_cpu = round_to(x, DTYPE[storage], torch.Generator().manual_seed(1))
    on_gpu = round_to(x.cuda(), DTYPE[storage], torch.Generator().manual_seed(1))
    assert on_gpu.is_cuda and torch.equal(_bits(on_gpu.cpu()), _bits(on_cpu))
    adam = SparseRowAdam(torch.randn(8, 4, device="cuda"), storage=storage, stochastic_rounding=True)
    before = adam.table.clone()
    adam.step(torch.tensor([1, 5], device="cuda"), torch.randn(2, 4, device="cuda"), lr=0.1)
    assert adam.table.is_cuda and adam.m.is_cuda and adam.sqrt_v.is_cuda
    assert torch.equal(_bits(adam.table[[0, 2, 3, 4, 6, 7]]), _bits(before[[0, 2, 3, 4, 6, 7]]))
