"""Adam with lazy sparse row updates for the entity table.

Only rows touched in a step are updated (their m and v decay only when touched), while the step
count and bias correction are global: the submission's "lazy sparse Adam".

Storage (see :mod:`kge.table.storage`): with ``storage="float32"`` the table, m and v are kept as given
(updated in 11 passes over the touched rows, see ``step``). With ``"bfloat16"`` or ``"float16"`` the table and m are
stored in that dtype and, instead of v, s = sqrt(v) (which stays inside fp16 range: s <= max |g|).
A step gathers the touched rows, casts them to fp32, does the Adam update in fp32 (v = s^2) and
writes table row, m and sqrt(v) back rounded: to nearest, or stochastically when
``stochastic_rounding`` (random integers from the ``generator`` given to ``step`` or else the
optimizer's own CPU generator, whose state is part of ``state_dict``; drawn in the order table,
m, sqrt(v)).
"""

from __future__ import annotations

import math

import torch

from kge.common.errors import KgeInputError
from kge.table.storage import round_to, storage_dtype


class SparseRowAdam:
    """Adam state for a (rows, d) table, updated row-subset by row-subset.

    table: (rows, d). For float32 storage it is used in place whatever its float dtype. For
    bfloat16/float16 storage a table of another dtype is converted (round to nearest) into a new
    tensor: use ``optimizer.table`` afterwards, not the tensor passed in.
    """

    def __init__(
        self,
        table: torch.Tensor,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        storage: str = "float32",
        stochastic_rounding: bool = False,
        seed: int = 0,
    ):
        self.storage = storage
        self.dtype = storage_dtype(storage)  # KgeInputError on a bad name
        self.stochastic_rounding = bool(stochastic_rounding)
        if storage == "float32":
            self.table = table
            self.m = torch.zeros_like(table)
            self.v = torch.zeros_like(table)
            self.sqrt_v = None
        else:
            self.table = table if table.dtype == self.dtype else table.to(self.dtype)
            self.m = torch.zeros_like(self.table)
            self.v = None
            self.sqrt_v = torch.zeros_like(self.table)
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.step_count = 0
        # Used only by stochastic rounding when step() gets no generator.
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def step(self, rows: torch.Tensor, grad: torch.Tensor, lr: float, generator: torch.Generator | None = None) -> None:
        """rows (n,) unique int64 rows; grad (n, d) their summed gradient.

        generator: the random source of stochastic rounding for this step (any device); ignored
        unless the optimizer was built with stochastic_rounding=True.
        """
        self.step_count += 1
        # rows are unique: index_select / index_copy_ (the same values as [rows] gets and sets, a
        # fraction of advanced indexing's time on CPU).
        rows = rows.to(self.m.device)
        if self.sqrt_v is None:
            # 11 passes over the touched rows (were 17): m by lerp, the bias corrections folded
            # into one step size and eps (PyTorch Adam's form: lr/b1 * m / (sqrt(v)/sqrt(b2) + eps)
            # = lr*sqrt(b2)/b1 * m / (sqrt(v) + eps*sqrt(b2))), and the row update as one
            # index_add_ instead of gather, subtract and scatter. Not bit-identical to the old
            # order of roundings: within a few fp32 ulps of a float64 Adam (tests/test_optim.py).
            m = self.m.index_select(0, rows).lerp_(grad, 1 - self.beta1)
            v = self.v.index_select(0, rows).mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
            self.m.index_copy_(0, rows, m)
            self.v.index_copy_(0, rows, v)
            bias1 = 1 - self.beta1**self.step_count
            root2 = math.sqrt(1 - self.beta2**self.step_count)
            step = m.div_(v.sqrt_().add_(self.eps * root2))  # m and v are stored: reuse their memory
            self.table.index_add_(0, rows, step, alpha=-lr * root2 / bias1)
            return
        grad = grad.to(torch.float32)
        m = self.m.index_select(0, rows).to(torch.float32).mul_(self.beta1).add_(grad, alpha=1 - self.beta1)
        v = (
            self.sqrt_v.index_select(0, rows)
            .to(torch.float32)
            .square_()
            .mul_(self.beta2)
            .addcmul_(grad, grad, value=1 - self.beta2)
        )
        bias1 = 1 - self.beta1**self.step_count
        bias2 = 1 - self.beta2**self.step_count
        update = (m / bias1) / ((v / bias2).sqrt_() + self.eps)
        row = self.table.index_select(0, rows).to(torch.float32) - lr * update
        source = None
        if self.stochastic_rounding:
            source = generator if generator is not None else self.generator
        self.table.index_copy_(0, rows, round_to(row, self.dtype, source))
        self.m.index_copy_(0, rows, round_to(m, self.dtype, source))
        self.sqrt_v.index_copy_(0, rows, round_to(v.sqrt_(), self.dtype, source))

    def state_dict(self) -> dict:
        if self.sqrt_v is None:
            state = {"m": self.m, "v": self.v, "step_count": self.step_count, "storage": self.storage}
        else:
            state = {"m": self.m, "sqrt_v": self.sqrt_v, "step_count": self.step_count, "storage": self.storage}
        if self.stochastic_rounding:
            state["generator_state"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restores m, v (or sqrt v), the step count and the own generator; the table is the caller's.

        A state without "storage" (written before storage existed) counts as float32.
        """
        self.load_rows(slice(None), state)
        self.step_count = int(state["step_count"])
        if self.stochastic_rounding and "generator_state" in state:
            self.generator.set_state(state["generator_state"])

    def load_rows(self, rows: slice, state: dict) -> None:
        """Restore one block of rows (one shard) from ``state_dict()``-shaped pieces of that block."""
        stored = state.get("storage", "float32")
        if stored != self.storage:
            raise KgeInputError(
                f"entity optimizer state was stored as {stored!r} but this run uses storage {self.storage!r}"
            )
        for key in ("m", "v") if self.sqrt_v is None else ("m", "sqrt_v"):
            target = getattr(self, key)
            target[rows] = state[key].to(target.device)
