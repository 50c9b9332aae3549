"""A pytest plugin that reports how close every ``torch.testing.assert_close`` of the suite comes to
its tolerance, so that a new CPU's rounding (other kernels, other summation orders) is seen before it
fails a test:

    PYTHONPATH=benchmarks python -m pytest -q -p tolerance_margins
    sort -g -r /tmp/tolerance_margins/*.tsv | awk -F'\\t' '!seen[$2]++' | head

Each call appends "ratio<TAB>test id" to /tmp/tolerance_margins/<pid>.tsv (one file per xdist
worker; the directory is cleared by hand), where ratio = max |actual - expected| / (atol + rtol *
|expected|) with torch's default tolerances for the dtype when none are given: above 1 the call fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

OUT = Path(os.environ.get("TOLERANCE_MARGINS_DIR", "/tmp/tolerance_margins"))
# torch.testing.assert_close's defaults (rtol, atol) per dtype
DEFAULTS = {
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
    torch.float32: (1.3e-6, 1e-5),
    torch.float64: (1e-7, 1e-7),
}
_original = torch.testing.assert_close
_test = {"id": "?"}


def _ratio(actual, expected, rtol, atol) -> float | None:
    a, b = torch.as_tensor(actual).detach(), torch.as_tensor(expected).detach()
    if not a.is_floating_point() or a.shape != b.shape or a.numel() == 0:
        return None
    if rtol is None:
        rtol, atol = DEFAULTS.get(a.dtype, DEFAULTS[torch.float32])
    b = b.double()
    return float(((a.double() - b).abs() / (atol + rtol * b.abs())).nan_to_num(0.0).max())


def _recording_assert_close(actual, expected, *args, rtol=None, atol=None, **kwargs):
    try:
        ratio = _ratio(actual, expected, rtol, atol)
    except (TypeError, RuntimeError, ValueError):  # not tensors of one shape: nothing to measure
        ratio = None
    if ratio is not None:
        OUT.mkdir(parents=True, exist_ok=True)
        with open(OUT / f"{os.getpid()}.tsv", "a") as f:
            f.write(f"{ratio:.4f}\t{_test['id']}\n")
    return _original(actual, expected, *args, rtol=rtol, atol=atol, **kwargs)


torch.testing.assert_close = _recording_assert_close


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _test["id"] = item.nodeid
