"""Dynamic block sparsity of the entity table (Graphcore, arXiv:2108.06277), config ``sparsity``.

Each entity row e_S (d,) is split into n_blocks = d / block blocks of ``block`` consecutive
coordinates; exactly k = max(1, round(density * n_blocks)) of them are active (round half up).
These counts are derived once, in ``kge.config.ModelConfig`` (block_count, active_blocks,
swap_count, stored_values_per_entity).
Inactive blocks hold exactly 0 in the table and in its Adam state (m and v, or sqrt(v) for 16-bit
storage). They stay 0 because the trainer zeroes the inactive coordinates of the gradient before
the sparse Adam step: with g = 0 and m = v = 0 the update is 0 / (0 + eps) = 0, and a stored 0 is
representable, so rounding (to nearest or stochastic) keeps it 0.

Dynamic sparsity (``every`` > 0): after every ``every`` optimizer steps (not after the last
step: nothing would train the regrown blocks), each row prunes the n = min(round(prune_fraction *
k), n_blocks - k) active blocks of smallest L2 norm (ties: lower block index first) and regrows n
blocks drawn uniformly among the blocks that were inactive before this prune; pruned and regrown
blocks get value 0 and Adam state 0 (zero-init regrowth), so every row keeps exactly k active
blocks. ``every`` = 0 keeps the initial random mask (static sparsity).

Randomness: the initial mask of a shard is drawn from a generator seeded by (seed, shard) and the
regrowth draws by (seed, step, shard), on the CPU, so a shard's mask does not depend on which
worker owns it or on the device (a W-worker run and its single-process reference agree), and a
resumed run draws what an uninterrupted one draws. The mask is part of each shard's checkpoint.

density = 1 is the dense model: nothing here runs and training is bit-identical to a config
without ``sparsity``.

Stored parameters (``kge.table.footprint.bytes_per_entity`` with ``sparsity``): a sparse row keeps k * block values and one block
index per active block (uint8 while n_blocks <= 256, else int16); with Adam, m and v (or sqrt v)
for the k * block active values. A model compares with a dense one of dim = k * block.
"""

from __future__ import annotations

import hashlib

import torch

from kge.common.errors import KgeInputError
from kge.config import ModelConfig

MASK_KEY = "sparsity_mask"  # in a checkpoint shard state: that shard's (S, n_blocks) bool mask


def _seed(*parts) -> int:
    digest = hashlib.blake2b(":".join(["sparsity", *map(str, parts)]).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (2**63 - 1)


def mask_seed(seed: int, shard: int) -> int:
    """Seed of shard ``shard``'s initial mask (no worker rank: the same whoever owns the shard)."""
    return _seed("mask", seed, shard)


def event_seed(seed: int, step: int, shard: int) -> int:
    """Seed of the regrowth draws of shard ``shard`` at the event after ``step`` completed steps."""
    return _seed("regrow", seed, step, shard)


def _first_of_each_row(keys: torch.Tensor, n: int) -> torch.Tensor:
    """keys (R, n_blocks) -> (R, n_blocks) bool marking each row's n smallest keys (ties: lower index)."""
    chosen = torch.sort(keys, dim=1, stable=True).indices[:, :n]
    return torch.zeros(keys.shape, dtype=torch.bool, device=keys.device).scatter_(1, chosen, True)


def random_mask(rows: int, n_blocks: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """(rows, n_blocks) bool with exactly k True per row, uniformly at random from ``generator`` (CPU)."""
    return _first_of_each_row(torch.rand(rows, n_blocks, generator=generator), k)


def initial_mask(config: ModelConfig, shards: list[int], shard_size: int) -> torch.Tensor:
    """Masks of ``shards`` concatenated -> (len(shards) * S, n_blocks) bool on the CPU."""
    n_blocks, k = config.block_count, config.active_blocks
    parts = [
        random_mask(shard_size, n_blocks, k, torch.Generator().manual_seed(mask_seed(config.seed, s))) for s in shards
    ]
    return torch.cat(parts) if parts else torch.zeros(0, n_blocks, dtype=torch.bool)


def expand(mask: torch.Tensor, block: int) -> torch.Tensor:
    """(R, n_blocks) block mask -> (R, n_blocks * block) coordinate mask."""
    return mask.repeat_interleave(block, dim=1)


def zero_blocks_(tensor: torch.Tensor, blocks: torch.Tensor) -> None:
    """tensor (R, d): set the coordinates of the blocks marked in ``blocks`` (R, n_blocks) to 0, in place."""
    tensor.masked_fill_(expand(blocks.to(tensor.device), tensor.shape[1] // blocks.shape[1]), 0)


def choose_prune_and_regrow(
    table: torch.Tensor, mask: torch.Tensor, n: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One shard's event: table (S, d) rows (any float dtype), mask (S, n_blocks) -> (pruned, regrown).

    pruned (S, n_blocks) bool: each row's n active blocks of smallest L2 norm (compared as fp32
    squared norms; ties: lower block index). regrown (S, n_blocks) bool: n blocks per row among
    those inactive in ``mask``, uniformly at random from the CPU ``generator`` (drawn whatever n,
    one (S, n_blocks) uniform tensor). Both on mask's device.
    """
    S, n_blocks = mask.shape
    draws = torch.rand(S, n_blocks, generator=generator).to(mask.device)
    norms = table.float().view(S, n_blocks, -1).square().sum(dim=2)
    pruned = _first_of_each_row(norms.masked_fill(~mask, float("inf")), n)
    regrown = _first_of_each_row(draws.masked_fill(mask, float("inf")), n)
    return pruned, regrown


class BlockSparsity:
    """The block mask of one worker's owned shards and its upkeep in training.

    mask: (len(shards) * S, n_blocks) bool on ``device``; rows in the order of the owned table.
    """

    def __init__(self, config: ModelConfig, shards: list[int], shard_size: int, device):
        if not config.sparsity.enabled:
            raise ValueError("BlockSparsity needs a block-sparse config (sparsity.density < 1)")
        self.config = config
        self.shards, self.shard_size = list(shards), shard_size
        self.block = config.sparsity.block
        self.k, self.n_swap = config.active_blocks, config.swap_count
        self.mask = initial_mask(config, self.shards, shard_size).to(device)

    def zero_inactive_(self, tensors: list[torch.Tensor]) -> None:
        """Each (rows, d) tensor (table, m, v or sqrt v): inactive coordinates set to 0, in place."""
        for tensor in tensors:
            zero_blocks_(tensor, ~self.mask)

    def mask_gradient(self, rows: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """rows (n,) local rows, grad (n, d) -> grad with the rows' inactive coordinates 0 (a new tensor)."""
        active = expand(self.mask.index_select(0, rows.to(self.mask.device)), self.block).to(grad.device)
        return grad.masked_fill(~active, 0)  # +0, not the -0 of a negative g times 0

    def event_due(self, step: int) -> bool:
        """Prune and regrow after ``step`` completed steps? Every ``every`` steps, not at the last step."""
        every = self.config.sparsity.every
        return every > 0 and self.n_swap > 0 and step % every == 0 and step < self.config.steps

    def prune_and_regrow_(self, step: int, table: torch.Tensor, state: list[torch.Tensor]) -> None:
        """The event after ``step`` completed steps, on every owned shard: updates the mask and zeroes
        pruned and regrown blocks in ``table`` (rows, d) and each Adam state tensor in ``state``."""
        S = self.shard_size
        for index, shard in enumerate(self.shards):
            rows = slice(index * S, (index + 1) * S)
            generator = torch.Generator().manual_seed(event_seed(self.config.seed, step, shard))
            pruned, regrown = choose_prune_and_regrow(table[rows], self.mask[rows], self.n_swap, generator)
            changed = pruned | regrown
            for tensor in [table, *state]:
                zero_blocks_(tensor[rows], changed)
            self.mask[rows] = (self.mask[rows] & ~pruned) | regrown

    def shard_mask(self, index: int) -> torch.Tensor:
        """The mask of the ``index``-th owned shard, (S, n_blocks)."""
        return self.mask[index * self.shard_size : (index + 1) * self.shard_size]

    def load_shard_mask(self, index: int, mask: torch.Tensor) -> None:
        """Restore the ``index``-th owned shard's mask (S, n_blocks) from a checkpoint."""
        if tuple(mask.shape) != tuple(self.shard_mask(index).shape):
            raise KgeInputError(
                f"sparsity mask of shape {tuple(mask.shape)} in the checkpoint, expected {tuple(self.shard_mask(index).shape)}"
            )
        self.mask[index * self.shard_size : (index + 1) * self.shard_size] = mask.to(self.mask.device)


def optimizer_state_tensors(optimizer) -> list[torch.Tensor]:
    """A SparseRowAdam's per-row state tensors, (rows, d) each: m and v, or m and sqrt(v)."""
    return [t for t in (optimizer.m, optimizer.v, optimizer.sqrt_v) if t is not None]
