"""Fused L1 distances of queries against tails, for training (forward and backward) and top-K.

Three forms, each (B, d) queries q against (M, d) tails t -> (B, M) distances D, summed over k:

- ``l1_distance``:          D[b, m] = sum_k |q_bk - t_mk|                       (TransE L1)
- ``shifted_l1_distance``:  D[b, m] = sum_k |q_bk - t_mk + c_bm w_bk|           (TransH L1: c = w.t)
- ``complex_l1_distance``:  D[b, m] = sum_j |z_j|, z = q - t as d/2 complex numbers stored
  ``[re | im]``                                                                (RotatE L1)
- ``scaled_l1_distance``:   D[b, m] = sum_k |q_bk - s_bk t_mk|                   (PairRE L1: s = r_T)

Memory is O(B x M): no (B, M, d) difference is ever formed, forward or backward. Subgradients are
those of the reference ``scoring.score_triples`` (torch's abs and complex modulus): sign(0) = 0 for
|x|, and a zero gradient for |z| at z = 0.

Backends, chosen once per process on first use and reported once on stderr:

- ``native``: ``kge/nn/csrc/distance.cpp``, register-tiled C++ built on first use by
  ``torch.utils.cpp_extension`` (needs a C++ compiler and ninja; -O3 -march=native, cached per CPU
  model and source content in torch's extension directory, so the build is paid once per machine,
  not once per checkout). CPU float32.
- ``compile``: ``torch.compile`` of the plain broadcast formulas with dynamic shapes (Triton on CUDA,
  C++ on CPU): the automatic choice on CUDA.
- ``eager``: the same formulas in plain torch over chunks of tails, with a hand-written backward that
  recomputes each chunk (memory O(B x chunk x d), capped): always available, and the fallback when
  a build or compilation fails.

``KGE_DISTANCE_KERNELS`` = ``auto`` (default) | ``native`` | ``compile`` | ``eager`` overrides the
choice. Inputs the chosen backend cannot take (float64, half precision, native on a GPU tensor) run
through ``eager``.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import time
from pathlib import Path

import torch

ENV_VAR = "KGE_DISTANCE_KERNELS"
BACKENDS = ("auto", "native", "compile", "eager")
# Elements of one (B, chunk, d) broadcast block of the eager path (about 128 MiB in float32).
CHUNK_ELEMENTS = 1 << 25
FORMS = {"l1": 0, "shifted_l1": 1, "complex_l1": 2, "scaled_l1": 3}
SOURCE = Path(__file__).parent / "csrc" / "distance.cpp"

_native = None  # the loaded extension module, or False once a build failed
_native_error = ""  # why the build failed
_compiled: dict = {}  # form -> compiled function, or False once compilation failed
_reported: set = set()  # (device type, backend) pairs already reported


# ----- backend choice ---------------------------------------------------------------------------
def requested_backend() -> str:
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{ENV_VAR}: expected one of {', '.join(BACKENDS)}, got {value!r}")
    return value


def _report(device_type: str, backend: str, detail: str) -> None:
    if (device_type, backend) not in _reported:
        _reported.add((device_type, backend))
        print(f"kge: L1 distance kernels on {device_type}: {backend} ({detail})", file=sys.stderr, flush=True)


def _cpu_tag() -> str:
    """A short hash of the CPU model and its flags (a -march=native build runs only where it was built)
    and of this torch installation (two environments with their own torch, say two virtualenvs, would
    otherwise take turns rebuilding one build directory: its include paths differ)."""
    text = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags", "Features", "CPU part")):
                text += line
                if line.startswith(("flags", "Features")):
                    break
    except OSError:
        text += platform.processor()
    return hashlib.sha1((text + torch.__version__ + os.path.dirname(torch.__file__)).encode()).hexdigest()[:10]


def _ninja_on_path() -> None:
    """torch runs the ``ninja`` on PATH; the ninja package's own binary sits in the environment's bin
    directory, which is not on PATH when that environment's python is called without activating it."""
    try:
        import ninja
    except ImportError:
        return
    directory = getattr(ninja, "BIN_DIR", None)
    path = os.environ.get("PATH", "")
    if directory and directory not in path.split(os.pathsep):
        os.environ["PATH"] = directory + (os.pathsep + path if path else "")


STALE_LOCK_SECONDS = 900  # a build takes about a minute; a lock this old was left by a killed build


def _extensions_root() -> Path:
    from torch.utils import cpp_extension

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root())


def _content_addressed_source(root: Path) -> tuple[Path, str]:
    """SOURCE copied to root/kge_sources/<content hash>/distance.cpp (once; atomically) -> (copy, hash).

    torch's build cache follows the source's path and ninja its modification time, so building from
    the checkout's own file rebuilt the kernels (about a minute) in every new clone or worktree.
    The same content gets the same path and an old modification time: a second checkout loads the
    build the first one made."""
    text = SOURCE.read_bytes()
    digest = hashlib.sha1(text).hexdigest()[:10]
    copy = root / "kge_sources" / digest / SOURCE.name
    if not copy.exists() or copy.read_bytes() != text:
        copy.parent.mkdir(parents=True, exist_ok=True)
        partial = copy.with_name(f".{SOURCE.name}.{os.getpid()}.tmp")
        partial.write_bytes(text)
        os.replace(partial, copy)
    return copy, digest


def _remove_stale_lock(build_dir: Path) -> None:
    """torch's build lock is a file that a killed build leaves behind, and every later build waits on
    it forever; one older than STALE_LOCK_SECONDS is removed (with a note on stderr)."""
    lock = build_dir / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except OSError:
        return
    if age > STALE_LOCK_SECONDS:
        print(f"kge: removing a stale build lock ({age:.0f} s old): {lock}", file=sys.stderr, flush=True)
        lock.unlink(missing_ok=True)


def native_module():
    """The built extension (built on first call, then loaded from torch's cache), or None if it
    cannot be built here (the reason in ``native_build_error()``)."""
    global _native, _native_error
    if _native is None:
        start = time.perf_counter()
        last = None
        for flags in (["-O3", "-march=native"], ["-O3"]):  # some compilers lack -march=native
            try:
                from torch.utils import cpp_extension  # imports setuptools

                _ninja_on_path()
                root = _extensions_root()
                source, digest = _content_addressed_source(root)
                name = f"kge_distance_{_cpu_tag()}_{digest}"
                build_directory = getattr(cpp_extension, "_get_build_directory", None)  # torch-private
                if build_directory is not None:
                    _remove_stale_lock(Path(build_directory(name, False)))
                _native = cpp_extension.load(name=name, sources=[str(source)], extra_cflags=flags, verbose=False)
                _native_error = f"built or loaded in {time.perf_counter() - start:.1f} s"
                break
            except Exception as error:  # no compiler, no ninja, or a compiler error: fall back
                last = error
        else:
            _native = False
            _native_error = f"{type(last).__name__}: {str(last).strip().splitlines()[-1] if str(last).strip() else ''}"
    return _native or None


def native_build_error() -> str:
    return _native_error


def backend_for(x: torch.Tensor) -> str:
    """The backend that will compute distances of tensors like ``x`` (reported once per device type)."""
    wanted = requested_backend()
    fp32 = x.dtype == torch.float32
    if wanted == "eager" or not fp32:
        return "eager"
    if wanted == "auto":
        wanted = "native" if x.device.type == "cpu" else "compile"
    if wanted == "native":
        if x.device.type != "cpu":
            return "eager"
        if native_module() is not None:
            _report("cpu", "native", _native_error)
            return "native"
        _report("cpu", "eager", f"the native build failed: {_native_error}")
        return "eager"
    _report(x.device.type, "compile", "torch.compile, dynamic shapes")
    return "compile"


# ----- eager reference: chunked broadcast, backward recomputed chunk by chunk --------------------
def _chunk(b: int, d: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(1, b * d))


def _eager_forward(form: int, q, t, w, c) -> torch.Tensor:
    B, d = q.shape
    M = t.shape[0]
    if form == 0:
        return torch.cdist(q.unsqueeze(0), t.unsqueeze(0), p=1).squeeze(0)
    out = q.new_empty(B, M)
    step = _chunk(B, d)
    for s in range(0, M, step):  # the broadcast formulas, one capped chunk of tails at a time
        e = min(M, s + step)
        out[:, s:e] = _broadcast(form, q, t[s:e], w, c[:, s:e] if c is not None else None)
    return out


def _eager_backward(form: int, g, q, t, w, c):
    B, d = q.shape
    M = t.shape[0]
    gq, gt = torch.zeros_like(q), torch.empty_like(t)
    gw = torch.zeros_like(q) if form in (1, 3) else None
    gc = torch.empty_like(g) if form == 1 else None
    step = _chunk(B, d)
    for s in range(0, M, step):
        e = min(M, s + step)
        gg = g[:, s:e].unsqueeze(-1)  # (B, c, 1)
        if form == 3:  # d/dq = u, d/ds = -u t, d/dt = -u s with u = g sign(q - s t)
            u = torch.sign(q.unsqueeze(1) - w.unsqueeze(1) * t[s:e].unsqueeze(0)) * gg
            gq += u.sum(1)
            gw -= (u * t[s:e].unsqueeze(0)).sum(1)
            gt[s:e] = -(u * w.unsqueeze(1)).sum(0)
            continue
        diff = q.unsqueeze(1) - t[s:e].unsqueeze(0)  # (B, c, d)
        if form == 2:
            re, im = diff.chunk(2, dim=-1)
            sq = re * re + im * im
            inv = torch.where(sq > 0, torch.rsqrt(torch.where(sq > 0, sq, torch.ones_like(sq))), torch.zeros_like(sq))
            part = torch.cat([re * inv, im * inv], dim=-1) * gg
        else:
            if form == 1:
                diff = diff + c[:, s:e, None] * w.unsqueeze(1)
            sign = torch.sign(diff)
            part = sign * gg
            if form == 1:
                gw += (part * c[:, s:e, None]).sum(1)
                gc[:, s:e] = (sign * w.unsqueeze(1)).sum(-1) * g[:, s:e]
        gq += part.sum(1)
        gt[s:e] = -part.sum(0)
    return gq, gt, gw, gc


# ----- torch.compile of the broadcast formulas ----------------------------------------------------
def _broadcast(form: int, q, t, w=None, c=None) -> torch.Tensor:
    if form == 3:
        return (q.unsqueeze(1) - w.unsqueeze(1) * t.unsqueeze(0)).abs().sum(-1)
    diff = q.unsqueeze(1) - t.unsqueeze(0)
    if form == 0:
        return diff.abs().sum(-1)
    if form == 1:
        return (diff + c.unsqueeze(-1) * w.unsqueeze(1)).abs().sum(-1)
    re, im = diff.chunk(2, dim=-1)
    sq = re * re + im * im
    pos = sq > 0  # double where: a zero (not NaN) gradient at z = 0
    return torch.where(pos, torch.sqrt(torch.where(pos, sq, torch.ones_like(sq))), torch.zeros_like(sq)).sum(-1)


def _compiled_fn(form: int):
    fn = _compiled.get(form)
    if fn is None:
        fn = torch.compile(lambda q, t, w, c: _broadcast(form, q, t, w, c), dynamic=True)
        _compiled[form] = fn
    return fn


# ----- the autograd function over native or eager kernels ------------------------------------------
def _native_forward(form: int, q, t, w, c, out: torch.Tensor) -> torch.Tensor:
    """The C++ forward into ``out`` (an empty tensor: allocated there); q stands in for unused w, c."""
    return native_module().forward(form, q, t, w if w is not None else q, c if c is not None else q, out)


class _FusedDistance(torch.autograd.Function):
    @staticmethod
    def forward(ctx, form: int, native: bool, q, t, w, c):
        if native:
            out = _native_forward(form, q, t, w, c, q.new_empty(0))
        else:
            out = _eager_forward(form, q, t, w, c)
        ctx.form, ctx.native = form, native
        ctx.save_for_backward(q, t, w, c)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        q, t, w, c = ctx.saved_tensors
        grad = grad.contiguous()
        if ctx.native:
            grads = native_module().backward(ctx.form, grad, q, t, w if w is not None else q, c if c is not None else q)
            gq, gt = grads[0], grads[1]
            gw = grads[2] if ctx.form in (1, 3) else None
            gc = grads[3] if ctx.form == 1 else None
        else:
            gq, gt, gw, gc = _eager_backward(ctx.form, grad, q, t, w, c)
        return None, None, gq, gt, gw, gc


def _distance(form: int, q: torch.Tensor, t: torch.Tensor, w=None, c=None) -> torch.Tensor:
    if q.ndim != 2 or t.ndim != 2 or q.shape[1] != t.shape[1]:
        raise ValueError(f"expected q (B, d) and t (M, d), got {tuple(q.shape)} and {tuple(t.shape)}")
    if form == 1 and (w is None or c is None or w.shape != q.shape or c.shape != (q.shape[0], t.shape[0])):
        raise ValueError("shifted_l1_distance: expected w (B, d) and c (B, M)")
    if form == 3 and (w is None or w.shape != q.shape):
        raise ValueError("scaled_l1_distance: expected s (B, d)")
    if form == 2 and q.shape[1] % 2:
        raise ValueError(f"complex_l1_distance: d must be even ([re | im] halves), got {q.shape[1]}")
    backend = backend_for(q)
    if backend == "compile":
        fn = _compiled.get(form)
        if fn is not False:
            try:
                return _compiled_fn(form)(q, t, w, c)
            except Exception as error:  # no working compiler: eager from here on
                _compiled[form] = False
                _report(q.device.type, "eager", f"torch.compile failed: {type(error).__name__}")
        backend = "eager"
    args = [x.contiguous() if x is not None else None for x in (q, t, w, c)]
    return _FusedDistance.apply(form, backend == "native", *args)


def l1_distance(q: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """sum_k |q_bk - t_mk|: q (B, d), t (M, d) -> (B, M)."""
    return _distance(0, q, t)


def shifted_l1_distance(q: torch.Tensor, t: torch.Tensor, w: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """sum_k |q_bk - t_mk + c_bm w_bk|: q (B, d), t (M, d), w (B, d), c (B, M) -> (B, M).

    TransH L1 with w the unit normal of each query's relation and c = w @ t.T (the tails' projection
    onto it); gradients flow to all four inputs.
    """
    return _distance(1, q, t, w, c)


def complex_l1_distance(q: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """sum_j |q_j - t_j| over the d/2 complex components stored [re | im]: q (B, d), t (M, d) -> (B, M)."""
    return _distance(2, q, t)


# ----- L2: matmul expansion with a hand-written backward ----------------------------------------------
def squared_l2_into(
    q: torch.Tensor, t: torch.Tensor, t_sq: torch.Tensor, out: torch.Tensor, scratch: torch.Tensor
) -> torch.Tensor:
    """|q_b|^2 + |t_m|^2 - 2 q_b.t_m into ``out`` (B, M), with ``scratch`` (B, M) and t_sq (M,): the one
    order of operations that training (``l2_distance``) and prediction
    (``scoring.l2_distance_scores_into``) share, so their scores agree bit for bit."""
    torch.matmul(q, t.T, out=out)
    out.mul_(2.0)  # 2 q.t, exactly
    torch.add((q * q).sum(-1, keepdim=True), t_sq.unsqueeze(0), out=scratch)
    return torch.sub(scratch, out, out=out)


class _L2Distance(torch.autograd.Function):
    """||q_b - t_m||_2 = sqrt(max(|q|^2 + |t|^2 - 2 q.t, eps)) (B, M), value for value as
    ``scoring.l2_distance_scores_into`` (both through ``squared_l2_into``), with a backward of
    two matmuls and three passes over (B, M) instead of autograd's chain through each elementwise step."""

    @staticmethod
    def forward(ctx, q, t, t_sq):
        out = squared_l2_into(q, t, t_sq, q.new_empty(q.shape[0], t.shape[0]), q.new_empty(q.shape[0], t.shape[0]))
        eps = torch.finfo(out.dtype).eps
        clamped = out < eps  # clamp's gradient is 0 there
        out.clamp_min_(eps).sqrt_()
        ctx.save_for_backward(q, t, out, clamped)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        q, t, dist, clamped = ctx.saved_tensors
        h = torch.div(grad, dist).masked_fill_(clamped, 0.0)  # 2 dL/d(sq) = g / dist
        grad_q = grad_t = None
        if ctx.needs_input_grad[0]:
            grad_q = torch.addmm(q * h.sum(1, keepdim=True), h, t, alpha=-1.0)  # rowsum(h) q - h t
        if ctx.needs_input_grad[1]:
            grad_t = torch.addmm(t * h.sum(0).unsqueeze(1), h.T, q, alpha=-1.0)  # colsum(h) t - h^T q
        return grad_q, grad_t, None


def l2_distance(q: torch.Tensor, t: torch.Tensor, t_sq: torch.Tensor | None = None) -> torch.Tensor:
    """||q_b - t_m||_2 of q (B, d) against t (M, d) -> (B, M), floored at sqrt(eps) (see
    ``scoring._sqrt_safe``); ``t_sq`` (M,) optionally the tails' squared norms |t_m|^2, precomputed
    by prediction (the backward differentiates them as |t|^2)."""
    if q.ndim != 2 or t.ndim != 2 or q.shape[1] != t.shape[1]:
        raise ValueError(f"expected q (B, d) and t (M, d), got {tuple(q.shape)} and {tuple(t.shape)}")
    if t_sq is None:
        t_sq = (t * t).sum(-1).detach()
    return _L2Distance.apply(q, t, t_sq)


def scaled_l1_distance(q: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """sum_k |q_bk - s_bk t_mk|: q, s (B, d), t (M, d) -> (B, M) (PairRE L1: q = h/|h| o r_H, s = r_T,
    t = t/|t|); gradients flow to all three inputs."""
    return _distance(3, q, t, s)


@torch.no_grad()
def distance_scores_into(
    form: str,
    q: torch.Tensor,
    t: torch.Tensor,
    gamma: float,
    out: torch.Tensor,
    w: torch.Tensor | None = None,
    c: torch.Tensor | None = None,
) -> torch.Tensor:
    """gamma - D of ``form`` ("l1", "shifted_l1", "complex_l1", "scaled_l1") into ``out`` (B, M), without
    autograd: prediction's blocks, written into a reused buffer (a view with unit column stride is
    fine) rather than two fresh (B, M) tensors per block, whose page faults cost more than the scan."""
    code = FORMS[form]
    if backend_for(q) == "native" and out.dtype == torch.float32 and out.device.type == "cpu":
        _native_forward(code, *[x.contiguous() if x is not None else None for x in (q, t, w, c)], out)
    else:
        out.copy_(_distance(code, q, t, w, c))
    return out.neg_().add_(gamma)
