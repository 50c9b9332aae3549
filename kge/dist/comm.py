"""Collective communication between BESS workers: the one seam every distributed call goes through.

``LocalComm`` is the single-worker case (every collective is the identity); ``ProcessGroupComm``
wraps torch.distributed (gloo on CPU, NCCL on CUDA) for workers launched by torchrun. An IPU or
other backend implements the same five methods.

Shapes: every exchange tensor has a leading axis of length W (world size). ``all_to_all(x)``
takes x[dst] = what this worker sends to worker dst and returns y[src] = what worker src sent to
this worker: over all workers, an AllToAll of a [src, dst, ...] tensor is its transpose.
The autograd versions send gradients back the same way (the backward of an AllToAll is an
AllToAll; the backward of an all-gather is an AllToAll of the gradients, summed).
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from kge.common.errors import KgeInputError


class LocalComm:
    """One worker: rank 0 of 1."""

    rank = 0
    world_size = 1

    def all_to_all(self, x: torch.Tensor) -> torch.Tensor:
        """x (W=1, ...) -> x (differentiable)."""
        return x

    def all_to_all_ints(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """x (...) -> (1, ...) (differentiable)."""
        return x.unsqueeze(0)

    def all_gather_ints(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(0)

    def all_reduce_(self, tensors: list[torch.Tensor]) -> None:
        """Sum in place across workers (nothing to do for one)."""

    def barrier(self) -> None:
        pass

    def broadcast_flag(self, flag: bool) -> bool:
        return flag


# torch renamed all_gather_into_tensor to all_gather_single; both take a (W * n, ...) output.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def _gather(x: torch.Tensor, group, world_size: int) -> torch.Tensor:
    """x (n, ...) from every worker -> (W, n, ...)."""
    flat = x.contiguous().reshape((x.shape[0] if x.dim() else 1, -1))
    out = flat.new_empty((world_size * flat.shape[0], flat.shape[1]))
    _all_gather_single(out, flat, group=group)
    return out.view((world_size,) + tuple(x.shape))


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        x = x.contiguous()
        out = torch.empty_like(x)  # after contiguous(): empty_like keeps strides, the collective assumes dense
        dist.all_to_all_single(out, x, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # Gradient of what src sent me goes back to src: the same exchange, reversed roles.
        grad = grad.contiguous()
        out = torch.empty_like(grad)
        dist.all_to_all_single(out, grad, group=ctx.group)
        return out, None


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group, world_size: int) -> torch.Tensor:
        ctx.group = group
        return _gather(x, group, world_size)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # grad[j] is this worker's gradient for worker j's piece: send it to j and sum what arrives.
        grad = grad.contiguous()
        out = torch.empty_like(grad)
        dist.all_to_all_single(out, grad, group=ctx.group)
        return out.sum(0), None, None


class ProcessGroupComm:
    """torch.distributed process group of the workers (already initialised, or initialised here)."""

    def __init__(self, device: torch.device, timeout_minutes: float = 30.0):
        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.device = device
        self.group = dist.group.WORLD

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[0] != self.world_size:
            raise ValueError(f"all_to_all: leading axis {x.shape[0]} != world size {self.world_size}")

    def all_to_all(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return _AllToAll.apply(x, self.group)

    def all_to_all_ints(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        x = x.contiguous()
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x, group=self.group)
        return out

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        return _AllGather.apply(x, self.group, self.world_size)

    def all_gather_ints(self, x: torch.Tensor) -> torch.Tensor:
        """x (...) -> (W, ...), no gradient."""
        return _gather(x, self.group, self.world_size)

    def all_reduce_(self, tensors: list[torch.Tensor]) -> None:
        """Sum in place; the tensors travel as one flat buffer (one collective, not one per tensor)."""
        if not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat, group=self.group)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    def barrier(self) -> None:
        dist.barrier(group=self.group)

    def broadcast_flag(self, flag: bool) -> bool:
        """Rank 0's boolean, on every worker (e.g. 'a checkpoint was found')."""
        t = torch.tensor([int(flag)], device=self.device)
        dist.broadcast(t, src=0, group=self.group)
        return bool(t.item())


def launched_world_size() -> int:
    """WORLD_SIZE set by torchrun (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def make_comm(workers: int, device: torch.device):
    """The communicator for a run configured with ``workers``; checks torchrun started that many."""
    launched = launched_world_size()
    if workers == 1 and launched == 1:
        return LocalComm()
    if launched != workers:
        raise KgeInputError(
            f"workers: the model config asks for {workers} workers but {launched} process(es) were launched; "
            f"run `kge train` without torchrun (it launches {workers} itself) or with --nproc-per-node matching"
        )
    return ProcessGroupComm(device)


def worker_device(device: torch.device) -> torch.device:
    """Each CUDA worker uses the GPU of its LOCAL_RANK; CPU workers share the CPU."""
    if device.type == "cuda" and launched_world_size() > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return device
