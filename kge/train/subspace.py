"""Random-subspace optimisation of the dense parameters (arXiv:2011.04720), config ``subspace.dim``.

Each step, every dense parameter tensor p (flattened, n elements, n > k = ``subspace.dim``) has its
gradient g (n,) replaced by P (P^T g) with a fresh random P (n, k), entries N(0, 1/k), before the
Adam step. E[P P^T] = I, so the projected gradient is an unbiased estimate of g; the update lies in
a k-dimensional subspace of p's space that changes every step. Tensors with n <= k keep their
full gradient.

P is drawn from generators seeded by (seed, step, tensor index, chunk): the same on every worker,
so the projection needs no communication (it is applied to the all-reduced gradient, identically
on every replica), and a resumed run draws the same P as an uninterrupted one.

Memory: P is never materialised whole. Its rows are generated in chunks of ``chunk_rows(k)`` rows
(at most CHUNK_ELEMENTS = 2^20 numbers, 4 MiB in float32) from their own generator; the first
pass accumulates z = P^T g (k,) chunk by chunk, the second regenerates each chunk and writes
P_c z into g. Extra memory: one chunk plus z; extra work: 2 n k Gaussian draws and 4 n k flops
per tensor per step (one draw of n k when a single chunk holds the whole P). The chunk layout is
part of the definition of P: changing CHUNK_ELEMENTS changes the projections drawn.
"""

from __future__ import annotations

import hashlib
import math

import torch

CHUNK_ELEMENTS = 1 << 20


def projection_seed(seed: int, step: int, index: int, chunk: int) -> int:
    """Seed of the generator of rows chunk of P for dense tensor ``index`` at ``step`` (no rank: shared)."""
    digest = hashlib.blake2b(f"subspace:{seed}:{step}:{index}:{chunk}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (2**63 - 1)


def chunk_rows(k: int) -> int:
    """Rows of P generated together: as many as fit CHUNK_ELEMENTS numbers (at least one)."""
    return max(1, CHUNK_ELEMENTS // k)


def _chunk(
    n: int, k: int, start: int, rows: int, seed: int, step: int, index: int, chunk: int, device, dtype
) -> torch.Tensor:
    """Rows [start, start + rows) of P (rows, k), entries N(0, 1/k)."""
    generator = torch.Generator(device=device).manual_seed(projection_seed(seed, step, index, chunk))
    return torch.randn(min(rows, n - start), k, generator=generator, device=device, dtype=dtype) / math.sqrt(k)


def projection_matrix(
    n: int, k: int, seed: int, step: int, index: int, device=None, dtype=torch.float32
) -> torch.Tensor:
    """The whole P (n, k) that ``project_gradients_`` uses for tensor ``index`` at ``step`` (for tests and inspection)."""
    rows = chunk_rows(k)
    return torch.cat(
        [_chunk(n, k, s, rows, seed, step, index, c, device, dtype) for c, s in enumerate(range(0, n, rows))]
    )


def project_gradient(grad: torch.Tensor, k: int, seed: int, step: int, index: int) -> torch.Tensor:
    """grad (any shape, n elements) -> P (P^T g) in grad's shape (grad itself when n <= k)."""
    n = grad.numel()
    if k <= 0 or n <= k:
        return grad
    g = grad.reshape(-1)
    rows = chunk_rows(k)
    starts = range(0, n, rows)
    z = torch.zeros(k, device=g.device, dtype=g.dtype)
    cached = None
    for c, s in enumerate(starts):
        p = _chunk(n, k, s, rows, seed, step, index, c, g.device, g.dtype)
        z += p.T @ g[s : s + p.shape[0]]
        cached = p if len(starts) == 1 else None
    out = torch.empty_like(g)
    for c, s in enumerate(starts):
        p = cached if cached is not None else _chunk(n, k, s, rows, seed, step, index, c, g.device, g.dtype)
        out[s : s + p.shape[0]] = p @ z
    return out.view_as(grad)


def project_gradients_(params: list[torch.Tensor], k: int, seed: int, step: int) -> None:
    """Replace each ``params[i].grad`` (if any) by its projection with P drawn for (seed, step, i), in place.

    ``params`` in a fixed order (the model's ``dense_param_groups``), the same on every worker.
    """
    if k <= 0:
        return
    for index, param in enumerate(params):
        if param.grad is not None and param.grad.numel() > k:
            param.grad.copy_(project_gradient(param.grad, k, seed, step, index))
