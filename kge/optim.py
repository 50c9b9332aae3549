"""Adam with lazy sparse row updates for the entity table.

Only rows touched in a step are updated (their m and v decay only when touched), while the step
count and bias correction are global: the submission's "lazy sparse Adam".
"""

from __future__ import annotations

import torch


class SparseRowAdam:
    """Adam state for a (rows, d) table, updated row-subset by row-subset."""

    def __init__(self, table: torch.Tensor, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        self.table = table
        self.m = torch.zeros_like(table)
        self.v = torch.zeros_like(table)
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.step_count = 0

    @torch.no_grad()
    def step(self, rows: torch.Tensor, grad: torch.Tensor, lr: float) -> None:
        """rows (n,) unique int64 rows; grad (n, d) their summed gradient."""
        self.step_count += 1
        m = self.m[rows].mul_(self.beta1).add_(grad, alpha=1 - self.beta1)
        v = self.v[rows].mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        self.m[rows] = m
        self.v[rows] = v
        bias1 = 1 - self.beta1**self.step_count
        bias2 = 1 - self.beta2**self.step_count
        update = (m / bias1) / ((v / bias2).sqrt_() + self.eps)
        self.table[rows] -= lr * update

    def state_dict(self) -> dict:
        return {"m": self.m, "v": self.v, "step_count": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        self.m.copy_(state["m"])
        self.v.copy_(state["v"])
        self.step_count = int(state["step_count"])
