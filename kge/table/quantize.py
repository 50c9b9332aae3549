"""8-bit (and 16/32-bit) formats for stored rows: quantize, dequantize, bytes and error bounds.

A 2-D float tensor (one row per entity) is stored in a named format with a scaling mode:

formats (``FORMATS``)
    float32, bfloat16, float16; the four torch FP8 dtypes float8_e4m3fn (max 448), float8_e5m2
    (IEEE-like, max 57344), and their "fnuz" variants float8_e4m3fnuz (max 240) and
    float8_e5m2fnuz (max 57344), whose exponent bias is one larger (the FP8 formats of
    arXiv:2206.02915; no negative zero, no inf, one NaN); int8 (symmetric, [-127, 127]).
scaling (``SCALINGS``)
    ``none``: values are stored as they are (scale 1). ``tensor``: one fp32 scale for the whole
    tensor. ``row``: one fp32 scale per row. A scale maps the absolute maximum (of the tensor or
    row) onto the format's largest finite value (127 for int8): stored = x / scale, value =
    stored * scale. int8 needs a scale (``none`` is refused). An all-zero row or tensor gets
    scale 1; a scale is never below fp32's smallest normal 2^-126 (so for float32 and bfloat16,
    whose maximum is near fp32's, scaling of values below about 4 is an exact power of two and
    changes nothing).

Saturation: every finite value beyond the format's largest finite value, after scaling, becomes
+-max (never inf or NaN). This matters for ``none``: torch's own casts turn such values into inf
(float8_e5m2, float16) or NaN (the fnuz formats). With a scale it only absorbs the fp32 rounding of
x / scale at the row's maximum. Non-finite inputs are refused.

Rounding: nearest (ties to even; the default) or stochastic when a ``torch.Generator`` is given.
Stochastic rounding stores one of the two neighbouring representable values lo <= y <= hi of the
scaled value y, hi with probability (y - lo) / (hi - lo), so E[stored] = y for every y within range
(a representable y is stored unchanged). float16/bfloat16 use kge.table.storage.round_to (exact
probabilities). FP8 and int8 decompose the magnitude: the nearest value and its neighbour on the
other side of y (one step in the FP8 bit pattern, which is monotonic in the magnitude; floor and
floor + 1 for int8), then compare a float64 uniform from the generator (a multiple of 2^-53) with
p = (|y| - lo) / (hi - lo), which is exact in float64 (hi - lo is a power of two). The decision is
therefore exact whenever p is a multiple of 2^-53; it is not only for |y| far below the spacing
(below about 2^-29 of it), where the chance of rounding up is raised by less than 2^-53.

Error of nearest rounding (``error_bound``): a value y in the format's normal range is off by at
most 2^-(mantissa_bits + 1) of |y| (float8_e4m3*: 1/16, float8_e5m2*: 1/8, float16: 2^-11,
bfloat16: 2^-8, float32: 2^-24); below it (subnormals) by at most half the smallest subnormal;
int8 by at most 0.5. In units of x both absolute terms are multiplied by the scale, and the
fp32 divide and multiply by the scale add at most 2^-23 of |x|.

Bytes per row (``kge.table.footprint.bytes_per_entity``): the payload (d times 4, 2, 2, 1, 1, 1, 1, 1 bytes) plus 4 for
the fp32 scale under ``row`` scaling; a ``tensor`` scale is 4 bytes for the whole tensor. At d =
256: float32 1024, float16/bfloat16 512, FP8 and int8 256, FP8 or int8 with row scales 260.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kge.common.errors import KgeInputError
from kge.table import storage

FORMATS = (
    "float32",
    "bfloat16",
    "float16",
    "float8_e4m3fn",
    "float8_e4m3fnuz",
    "float8_e5m2",
    "float8_e5m2fnuz",
    "int8",
)
SCALINGS = ("none", "tensor", "row")

FP32_TINY = 2.0**-126  # smallest normal float32: the least scale used
SCALE_ARITHMETIC_SLACK = 2.0**-23  # the fp32 x / scale and q * scale: at most 2 roundings of 2^-24


@dataclass(frozen=True)
class FormatSpec:
    """What a format can hold: dtype, largest finite value, explicit mantissa bits, spacing near 0."""

    name: str
    dtype: torch.dtype
    max: float  # largest finite value (127 for int8)
    mantissa_bits: int  # explicit fraction bits (0 for int8)
    smallest_subnormal: float  # spacing of the representable values next to zero (1 for int8)
    bytes: int

    @property
    def is_float(self) -> bool:
        return self.dtype.is_floating_point


def _float_spec(name: str, mantissa_bits: int) -> FormatSpec:
    dtype = getattr(torch, name)
    info = torch.finfo(dtype)
    # The subnormal spacing is the smallest normal times 2^-mantissa_bits (finfo's eps is not
    # reliable for every FP8 dtype, so the mantissa widths are written out here).
    return FormatSpec(
        name, dtype, float(info.max), mantissa_bits, float(info.smallest_normal) * 2.0**-mantissa_bits, info.bits // 8
    )


_SPECS = {
    spec.name: spec
    for spec in (
        _float_spec("float32", 23),
        _float_spec("bfloat16", 7),
        _float_spec("float16", 10),
        _float_spec("float8_e4m3fn", 3),
        _float_spec("float8_e4m3fnuz", 3),
        _float_spec("float8_e5m2", 2),
        _float_spec("float8_e5m2fnuz", 2),
        FormatSpec("int8", torch.int8, 127.0, 0, 1.0, 1),
    )
}


def format_spec(fmt: str, what: str = "format") -> FormatSpec:
    """The FormatSpec of a format name; KgeInputError naming ``what`` for an unknown one."""
    if fmt not in _SPECS:
        raise KgeInputError(f"{what}: expected one of {list(FORMATS)}, got {fmt!r}")
    return _SPECS[fmt]


def check_scaling(fmt: str, scaling: str, what: str = "scaling") -> str:
    """``scaling`` if it is valid for ``fmt``; KgeInputError otherwise (int8 needs a scale)."""
    spec = format_spec(fmt)
    if scaling not in SCALINGS:
        raise KgeInputError(f"{what}: expected one of {list(SCALINGS)}, got {scaling!r}")
    if spec.name == "int8" and scaling == "none":
        raise KgeInputError(f"{what}: int8 needs a scale (tensor or row), got 'none'")
    return scaling


@dataclass(frozen=True)
class Quantized:
    """A quantized (n, d) tensor.

    data: (n, d) in the format's dtype (x / scale, rounded). scales: float32, (n,) for ``row``,
    0-d for ``tensor``, None for ``none``.
    """

    data: torch.Tensor
    scales: torch.Tensor | None
    format: str
    scaling: str


def compute_scales(x: torch.Tensor, fmt: str, scaling: str) -> torch.Tensor | None:
    """The fp32 scales mapping x's absolute maximum onto the format's max.

    x: (n, d) (any shape for ``tensor``). Returns (n,) for ``row``, 0-d for ``tensor``, None for
    ``none``. Zero maxima give scale 1; scales are at least 2^-126.
    """
    spec = format_spec(fmt)
    check_scaling(fmt, scaling)
    if scaling == "none":
        return None
    x = x.detach().float()
    if scaling == "row":
        if x.dim() != 2:
            raise KgeInputError(f"row scaling needs a 2-D tensor (rows, dim), got shape {tuple(x.shape)}")
        absmax = x.abs().amax(dim=1) if x.shape[1] else torch.zeros(x.shape[0], device=x.device)
    else:
        absmax = x.abs().max() if x.numel() else torch.zeros((), device=x.device)
    scales = (absmax / spec.max).clamp(min=FP32_TINY)
    return torch.where(absmax > 0, scales, torch.ones_like(scales))


def _uniform(shape, generator: torch.Generator, device) -> torch.Tensor:
    """float64 uniforms in [0, 1) (multiples of 2^-53) drawn on the generator's device, moved to ``device``."""
    return torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float64).to(device)


def _pick_neighbour(a: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """lo <= a <= hi (float32 magnitudes): hi with probability (a - lo) / (hi - lo), else lo."""
    a64, lo64, gap = a.double(), lo.double(), (hi - lo).double()
    p = torch.where(gap > 0, (a64 - lo64) / torch.where(gap > 0, gap, 1.0), 0.0)
    return torch.where(_uniform(a.shape, generator, a.device) < p, hi, lo)


def _stochastic_fp8(y: torch.Tensor, spec: FormatSpec, generator: torch.Generator) -> torch.Tensor:
    """float32 y with |y| <= max -> FP8, stochastically rounded (see the module docstring)."""
    a = y.abs()
    nearest = a.to(spec.dtype)
    near = nearest.float()
    # Positive FP8 bit patterns grow with the magnitude: the other neighbour is one pattern away.
    # No step leaves the finite range: going up needs near < a <= max, going down needs near > a >= 0.
    step = (near < a).to(torch.int16) - (near > a).to(torch.int16)
    other = (nearest.view(torch.uint8).to(torch.int16) + step).to(torch.uint8).view(spec.dtype).float()
    lo, hi = torch.minimum(near, other), torch.maximum(near, other)
    magnitude = _pick_neighbour(a, lo, hi, generator)
    # +0.0 for values that round to zero: the fnuz formats have no -0.0.
    signed = torch.where(magnitude > 0, torch.copysign(magnitude, y), torch.zeros_like(magnitude))
    return signed.to(spec.dtype)


def _stochastic_int8(y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """float32 y with |y| <= 127 -> int8: floor(|y|) or floor(|y|) + 1, signed."""
    a = y.abs()
    lo = a.floor()
    hi = torch.where(a > lo, lo + 1, lo)
    return torch.copysign(_pick_neighbour(a, lo, hi, generator), y).to(torch.int8)


def _round(y: torch.Tensor, spec: FormatSpec, generator: torch.Generator | None) -> torch.Tensor:
    """Scaled float32 y -> the format's dtype, saturating at +-max."""
    y = y.clamp(-spec.max, spec.max)
    if spec.name == "float32":
        return y
    if spec.name == "int8":
        return torch.round(y).to(torch.int8) if generator is None else _stochastic_int8(y, generator)
    if generator is None:
        return y.to(spec.dtype)
    if spec.name in ("bfloat16", "float16"):
        return storage.round_to(y, spec.dtype, generator)
    return _stochastic_fp8(y, spec, generator)


def quantize(
    x: torch.Tensor,
    fmt: str,
    scaling: str = "none",
    generator: torch.Generator | None = None,
    tensor_scale: float | torch.Tensor | None = None,
) -> Quantized:
    """x (n, d) float -> Quantized in format ``fmt`` with ``scaling``.

    generator None: round to nearest; else stochastic rounding drawn from it. ``tensor_scale``
    (``tensor`` scaling only) replaces the scale computed from x: blocks of a larger tensor
    (shards, feature blocks) then share the whole tensor's scale. Raises KgeInputError for an
    unknown format or scaling, int8 with ``none``, or non-finite values in x.
    """
    spec = format_spec(fmt)
    check_scaling(fmt, scaling)
    x = x.detach().float()
    if not bool(torch.isfinite(x).all()):
        raise KgeInputError(
            f"quantize: {int((~torch.isfinite(x)).sum())} values are NaN or inf; only finite tensors can be quantized"
        )
    if tensor_scale is not None:
        if scaling != "tensor":
            raise KgeInputError(f"quantize: tensor_scale is for tensor scaling, not {scaling!r}")
        scales = torch.as_tensor(tensor_scale, dtype=torch.float32, device=x.device).reshape(())
        if not bool(scales > 0) or not bool(torch.isfinite(scales)):
            raise KgeInputError(f"quantize: tensor_scale must be finite and > 0, got {float(scales)}")
    else:
        scales = compute_scales(x, fmt, scaling)
    if scales is None:
        y = x
    elif scaling == "row":
        y = x / scales[:, None]
    else:
        y = x / scales
    return Quantized(_round(y, spec, generator), scales, fmt, scaling)


def dequantize(q: Quantized) -> torch.Tensor:
    """Quantized -> (n, d) float32 values (stored * scale)."""
    values = q.data.float()
    if q.scales is None:
        return values
    if q.scaling == "row":
        return values * q.scales[:, None]
    return values * q.scales


def quantize_dequantize(
    x: torch.Tensor,
    fmt: str,
    scaling: str = "none",
    generator: torch.Generator | None = None,
    tensor_scale: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """dequantize(quantize(x, ...)): x (n, d) -> (n, d) float32 holding exactly what the format stores
    (simulated quantization: compute stays fp32)."""
    return dequantize(quantize(x, fmt, scaling, generator, tensor_scale))


@dataclass(frozen=True)
class ErrorBound:
    """Worst case of nearest rounding: |dequantized - x| <= max(relative * |x|, absolute * scale)
    + SCALE_ARITHMETIC_SLACK * |x| for finite x whose scaled value is within range.

    relative: 2^-(mantissa_bits + 1), for values in the format's normal range (0 for int8).
    absolute: in units of the scale (1 for ``none``): half the smallest subnormal, or 0.5 for int8.
    """

    relative: float
    absolute: float

    def limit(self, x: torch.Tensor, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
        """Per-element bound (float64) for x (n, d) and its scales ((n, 1), 0-d or a float)."""
        x = x.double().abs()
        scale = torch.as_tensor(scale, dtype=torch.float64, device=x.device)
        return torch.maximum(self.relative * x, self.absolute * scale) + SCALE_ARITHMETIC_SLACK * x


def error_bound(fmt: str, scaling: str) -> ErrorBound:
    """The documented worst-case error of nearest rounding in ``fmt`` with ``scaling``.

    float8_e4m3*: relative 1/16; float8_e5m2*: 1/8; float16: 2^-11; bfloat16: 2^-8; float32:
    2^-24; below the normal range half the smallest subnormal. int8 (tensor or row): 0.5 scale.
    """
    spec = format_spec(fmt)
    check_scaling(fmt, scaling)
    if spec.name == "int8":
        return ErrorBound(relative=0.0, absolute=0.5)
    return ErrorBound(relative=2.0 ** -(spec.mantissa_bits + 1), absolute=spec.smallest_subnormal / 2)


class DequantizedFeatures:
    """A FeatureStore whose gathered rows are quantize-dequantized (nearest rounding) on the way out.

    Provides what Predictor reads: ``gather(rows) -> (n, F) float32``, ``block(start, stop)``,
    ``num_rows`` and ``dim``.
    """

    def __init__(self, store, fmt: str, scaling: str, tensor_scale: float | None = None):
        check_scaling(fmt, scaling)
        if scaling == "tensor" and tensor_scale is None:
            raise KgeInputError("tensor-scaled features need the scale of the whole feature matrix")
        self.store, self.format, self.scaling, self.tensor_scale = store, fmt, scaling, tensor_scale

    @property
    def num_rows(self) -> int:
        return self.store.num_rows

    @property
    def dim(self) -> int:
        return self.store.dim

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """rows (n,) int64 local rows -> (n, F) float32, as the feature format stores them."""
        return quantize_dequantize(self.store.gather(rows), self.format, self.scaling, None, self.tensor_scale)

    def block(self, start: int, stop: int) -> torch.Tensor:
        return self.gather(torch.arange(start, stop))


def quantized_features(store, saved: dict):
    """The feature store a model's scoring reads: ``store`` itself, or for a model written by
    ``quantize_model`` with a feature format, ``store`` wrapped in DequantizedFeatures."""
    features = (saved.get("quantization") or {}).get("features") or {}
    if not features.get("quantized"):
        return store
    return DequantizedFeatures(store, features["format"], features["scaling"], features["tensor_scale"])
