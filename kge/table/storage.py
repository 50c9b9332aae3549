"""Storage precision of the entity table and its Adam state (compute stays fp32).

The WikiKG90Mv2 winning submission stored, per entity row, the trainable embedding, Adam m and
sqrt(Adam v) in fp16 (sqrt keeps the second moment inside fp16 range); touched rows are cast to
fp32, updated and written back. This module names the storage options, rounds fp32 results back
to a storage dtype (round-to-nearest or stochastic rounding).

Bytes per entity row, Adam, 768-d fp16 feature (``kge.table.footprint.bytes_per_entity``); the last column is the
whole table (E = 91,230,610 WikiKG90Mv2 entities, 10^9 bytes)::

    d    storage    embedding  m     v or sqrt v  feature  total  x E
    256  float32    1024       1024  1024         1536     4608   420.4 GB
    256  bfloat16    512        512   512         1536     3072   280.3 GB
    256  float16     512        512   512         1536     3072   280.3 GB
    400  float32    1600       1600  1600         1536     6336   578.0 GB
    400  bfloat16    800        800   800         1536     3936   359.1 GB
    400  float16     800        800   800         1536     3936   359.1 GB

Without the features the trainable part alone halves: d=256 3072 -> 1536 bytes, d=400 4800 -> 2400.

Rounding (``round_to``):

- nearest (no generator): exactly ``x.to(dtype)`` (ties to even; finite values beyond the
  format's range become +-inf, as torch does).
- stochastic (a ``torch.Generator``): a finite x with |x| <= max of the format becomes one of the
  two neighbouring representable values lo <= x <= hi, hi with probability exactly
  (x - lo) / (hi - lo), so E[result] = x exactly (a representable x is returned unchanged).
  The probabilities are exact because they are decided with integer comparisons on random
  integers, never with float uniforms:

  * bfloat16 shares fp32's exponent range, so bf16 neighbours are the fp32 bit pattern with
    its low 16 bits cleared, and the fp32 patterns between two neighbours are equally spaced
    (subnormals included): add a uniform integer in [0, 2^16) to the pattern and clear the low
    16 bits (on the magnitude: the sign bit is untouched).
  * float16: the magnitude's 24-bit significand M is split at the fp16 quantum. With ``drop``
    bits of M below the quantum and ``rem`` their value, the result rounds up iff a uniform
    integer R in [0, 2^drop) is < rem; R is the top ``drop`` bits of one 62-bit random word per
    element. fp16 normals (|x| >= 2^-14): drop = 13, done as the bf16 trick with 13 bits. fp16
    subnormal range: the quantum is 2^-24 whatever the fp32 exponent, drop = 14..125, done with
    integer shifts on those elements only; for |x| < 2^-63 (drop > 62, probability of rounding
    up < 2^-39) two more words are drawn, for those elements only, to test the high bits of R.

  Saturation, documented difference from nearest: a finite |x| above the format's largest
  finite value (65504 for fp16, about 3.39e38 for bf16) becomes +-max, never inf (biased, but
  a stored optimizer value must not turn into inf). +-inf and NaN are passed through as
  ``x.to(dtype)``. The sign is kept, including -0.0 for negative values that round to zero.
  Random integers are drawn on the generator's device and moved to x's device, so a CPU
  generator gives the same result on any device. Random words drawn per call: bf16 one int32
  per element, fp16 one int64 per element (+2 per element with |x| < 2^-63).
"""

from __future__ import annotations

import torch

from kge.common.errors import KgeInputError

STORAGE_DTYPES = {"float32", "bfloat16", "float16"}

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
OPTIMIZERS = {"adam": 2, "sgd": 0}  # per-row state tensors of the table's width

BF16_MAX = float(torch.finfo(torch.bfloat16).max)
FP16_MAX = float(torch.finfo(torch.float16).max)  # 65504


def _check(name: str, what: str = "storage") -> str:
    if name not in STORAGE_DTYPES:
        raise KgeInputError(f"{what}: expected one of {sorted(STORAGE_DTYPES)}, got {name!r}")
    return name


def storage_dtype(name: str) -> torch.dtype:
    """The torch dtype of a storage name ("float32", "bfloat16", "float16")."""
    return _DTYPES[_check(name)]


def storage_name(dtype: torch.dtype) -> str:
    """Inverse of storage_dtype."""
    for name, value in _DTYPES.items():
        if value == dtype:
            return name
    raise KgeInputError(f"storage: dtype {dtype} is not one of {sorted(STORAGE_DTYPES)}")


# ----- rounding ---------------------------------------------------------------------------


def _random_words(shape, bits: int, generator: torch.Generator, device, dtype=torch.int64) -> torch.Tensor:
    """Uniform integers in [0, 2^bits) drawn on the generator's device, returned on `device`."""
    return torch.randint(0, 2**bits, shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def _sr_bfloat16(x: torch.Tensor, rand16: torch.Tensor) -> torch.Tensor:
    """Stochastic rounding of finite float32 x (clamped to +-BF16_MAX) with given integers in [0, 2^16)."""
    bits = x.clamp(-BF16_MAX, BF16_MAX).view(torch.int32)
    # Adding to the pattern moves the magnitude up (sign-magnitude), clearing truncates it:
    # no carry into the sign bit because |x| <= BF16_MAX = 0x7F7F0000.
    out = (bits + rand16.to(torch.int32)) & ~0xFFFF
    return out.view(torch.float32).to(torch.bfloat16)


def _sr_float16(x: torch.Tensor, rand62: torch.Tensor, extra_words) -> torch.Tensor:
    """Stochastic rounding of finite float32 x to float16.

    rand62: uniform integers in [0, 2^62) (int64, x's shape); extra_words(n) -> (n, 2) more of
    them, called only for the n elements with |x| < 2^-63.
    """
    a = x.abs().clamp_(max=FP16_MAX)
    # fp16 normal range (|x| >= 2^-14): the fp16 quantum is 2^13 fp32 ulps, so this is the bf16
    # trick with 13 bits: R = the top 13 bits of the word. |x| <= 65504 = 0x477FE000: no overflow.
    rounded = ((a.view(torch.int32) + (rand62 >> 49).to(torch.int32)) & ~0x1FFF).view(torch.float32)
    small = a < 2.0**-14
    if bool(small.any()):
        rounded[small] = _sr_float16_small(a[small], rand62[small], extra_words)
    return torch.copysign(rounded, x).to(torch.float16)


def _sr_float16_small(a: torch.Tensor, rand62: torch.Tensor, extra_words) -> torch.Tensor:
    """The fp16 subnormal range, 0 <= a < 2^-14 (float32): the result as float32 (exact fp16 values).

    Quantum 2^-24; a = M * 2^(max(E,1) - 150) with 24-bit significand M, so `drop` = 126 -
    max(E,1) bits (14..125) of M lie below the quantum, and the result rounds up iff a uniform
    integer R in [0, 2^drop) is < rem, the dropped part of M.
    """
    bits = a.view(torch.int32).to(torch.int64)
    exponent = bits >> 23  # biased fp32 exponent, 0 for fp32 subnormals
    significand = (bits & 0x7FFFFF) | ((exponent > 0).to(torch.int64) << 23)
    drop = 126 - exponent.clamp(min=1)  # 14..125
    shift = drop.clamp(max=63)
    lo = significand >> shift  # 0 when drop >= 24
    rem = significand - (lo << shift)
    up = (rand62 >> (62 - drop).clamp(min=0)) < rem  # R = the top `drop` bits of the word
    deep = drop > 62
    if bool(deep.any()):
        # R = [h = drop - 24 high bits][24 low bits]; rem < 2^24, so R < rem iff the high bits are
        # all zero and the low 24 bits are < rem. Low 24 bits: from rand62; high bits: two words.
        h = drop[deep] - 24  # 39..101
        words = extra_words(int(h.numel()))
        h1 = h.clamp(max=62)
        high_zero = ((words[:, 0] >> (62 - h1)) == 0) & ((words[:, 1] >> (62 - (h - h1))) == 0)
        up[deep] = ((rand62[deep] & 0xFFFFFF) < rem[deep]) & high_zero
    return (lo + up.to(torch.int64)).to(torch.float32) * 2.0**-24  # integer <= 2^10 times 2^-24: exact


def round_to(x: torch.Tensor, dtype: torch.dtype, generator: torch.Generator | None = None) -> torch.Tensor:
    """x (float32, any shape) rounded to `dtype` (float32, bfloat16 or float16).

    generator None: round to nearest, exactly ``x.to(dtype)``. Otherwise stochastic rounding
    (see the module docstring: exact probabilities, unbiased for |x| <= max, saturating beyond).
    float32 is returned as is (no rounding needed). Other float inputs are first cast to float32.
    """
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise KgeInputError(f"storage: dtype {dtype} is not one of {sorted(STORAGE_DTYPES)}")
    if generator is None or dtype == torch.float32:
        return x.to(dtype)
    x = x.to(torch.float32)
    finite = torch.isfinite(x)
    xf = torch.where(finite, x, torch.zeros((), dtype=x.dtype, device=x.device)).contiguous()
    if dtype == torch.bfloat16:
        rounded = _sr_bfloat16(xf, _random_words(xf.shape, 16, generator, xf.device, torch.int32))
    else:
        rounded = _sr_float16(
            xf,
            _random_words(xf.shape, 62, generator, xf.device),
            lambda n: _random_words((n, 2), 62, generator, xf.device),
        )
    return torch.where(finite, rounded, x.to(dtype))
