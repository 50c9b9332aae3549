"""Sparse row Adam against torch.optim.Adam (the independent reference)."""

import torch

from kge.optim import SparseRowAdam


def test_all_rows_touched_matches_torch_adam():
    torch.manual_seed(0)
    table = torch.randn(6, 4, dtype=torch.float64)
    reference = torch.nn.Parameter(table.clone())
    torch_adam = torch.optim.Adam([reference], lr=0.01, betas=(0.9, 0.99), eps=1e-8)
    sparse = SparseRowAdam(table, beta1=0.9, beta2=0.99, eps=1e-8)
    for step in range(5):
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
