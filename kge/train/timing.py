"""Wall time per phase of the training step, for `kge bench`: a context manager around each phase.

The buckets are coarser than the phases: ``sample`` (the prepared batch), ``gather`` (table rows
and features), ``compute`` (encode, score, loss, backward; the tails or scores exchange inside it
included), ``exchange`` (waiting on the id routing and the gradient all-reduce) and ``optimizer``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

STEP_BUCKETS = ("sample", "gather", "compute", "exchange", "optimizer")


class PhaseTimer:
    """Seconds per bucket, accumulated over the phases timed with ``phase(bucket)``.

    ``seconds``: {bucket: float}, in the order of ``buckets``; callers may reset or replace it.
    Disabled (``enabled=False``), ``phase`` costs one attribute test and records nothing. On CUDA
    it synchronises the device at both ends of a phase: kernels run asynchronously, and the time
    charged must be the time the phase's kernels ran, not the time it took to queue them.
    """

    def __init__(self, buckets: Iterable[str] = STEP_BUCKETS, device: torch.device | None = None, enabled: bool = True):
        self.seconds: dict[str, float] = dict.fromkeys(buckets, 0.0)
        self.enabled = enabled
        self._cuda = device if device is not None and device.type == "cuda" else None

    def _now(self) -> float:
        if self._cuda is not None:
            torch.cuda.synchronize(self._cuda)
        return time.perf_counter()

    @contextmanager
    def phase(self, bucket: str) -> Iterator[None]:
        """Charge the wall time of the ``with`` body to ``bucket`` (nothing if it raises)."""
        if not self.enabled:
            yield
            return
        start = self._now()
        yield
        self.seconds[bucket] += self._now() - start
