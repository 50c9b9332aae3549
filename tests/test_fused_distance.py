"""Fused distance kernels (kge.nn.fused_distance) against plain broadcast formulas in float64.

Each backend (native C++, eager chunks, torch.compile) computes values and gradients of the three
forms; the references below are written out here with torch's own abs / sqrt autograd, so the
subgradient conventions (sign(0) = 0, a zero gradient of |z| at z = 0) are torch's, as in
``scoring.score_triples``. The scoring-function level checks the six distance variants (TransE,
TransH, RotatE x L1, L2) through both training losses against the element-wise reference.
"""

from __future__ import annotations

import pytest
import torch

from kge.nn import fused_distance as fd
from kge.nn import losses, scoring

SHAPES = [(1, 1, 1), (5, 7, 3), (9, 13, 20), (17, 130, 18), (6, 300, 64)]  # tile edges, d % 8 != 0, > one tail block


def ref_distance(form, q, t, w=None, c=None):
    """(B, M) distances from the (B, M, d) broadcast (the formula, not the kernel)."""
    diff = q[:, None, :] - t[None, :, :]
    if form == "l1":
        return diff.abs().sum(-1)
    if form == "shifted_l1":
        return (diff + c[:, :, None] * w[:, None, :]).abs().sum(-1)
    if form == "scaled_l1":
        return (q[:, None, :] - w[:, None, :] * t[None, :, :]).abs().sum(-1)
    half = q.shape[1] // 2
    re, im = diff[..., :half], diff[..., half:]
    sq = re * re + im * im
    pos = sq > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, sq, torch.ones_like(sq))), torch.zeros_like(sq)).sum(-1)


def call(form, q, t, w=None, c=None):
    if form == "l1":
        return fd.l1_distance(q, t)
    if form == "shifted_l1":
        return fd.shifted_l1_distance(q, t, w, c)
    if form == "scaled_l1":
        return fd.scaled_l1_distance(q, t, w)
    return fd.complex_l1_distance(q, t)


def inputs(form, B, M, d, seed=0, integer=False):
    """q, t, w, c in float64 (w, c None unless shifted; w = s and c None when scaled); ``integer``: small integers, so many
    components tie exactly (|q - t| = 0) and float32 sums are exact."""
    if form == "complex_l1" and d % 2:
        d += 1
    g = torch.Generator().manual_seed(seed)
    draw = (
        (lambda *s: torch.randint(-2, 3, s, generator=g).double())
        if integer
        else (lambda *s: torch.randn(*s, generator=g, dtype=torch.float64))
    )
    q, t = draw(B, d), draw(M, d)
    w, c = (draw(B, d), draw(B, M)) if form == "shifted_l1" else (None, None)
    if form == "scaled_l1":
        w = draw(B, d)
    return q, t, w, c


def values_and_grads(fn, form, tensors, weights, dtype):
    leaves = [x.to(dtype).clone().requires_grad_(True) if x is not None else None for x in tensors]
    out = fn(form, *leaves)
    out.backward(weights.to(dtype))
    return out.double(), [x.grad.double() for x in leaves if x is not None]


@pytest.fixture(params=["native", "eager"])
def backend(request, monkeypatch):
    monkeypatch.setenv(fd.ENV_VAR, request.param)
    if request.param == "native":
        assert fd.native_module() is not None, f"the native kernels did not build: {fd.native_build_error()}"
    return request.param


@pytest.mark.parametrize("form", list(fd.FORMS))
@pytest.mark.parametrize("shape", SHAPES)
def test_float32_values_and_gradients_equal_reference(backend, form, shape):
    tensors = inputs(form, *shape)
    weights = torch.randn(shape[0], shape[1], generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert fd.backend_for(torch.zeros(1)) == backend
    got, got_grads = values_and_grads(call, form, tensors, weights, torch.float32)
    want, want_grads = values_and_grads(ref_distance, form, tensors, weights, torch.float64)
    scale = max(1.0, shape[2] ** 0.5)  # float32 rounding of sums over d (and over B or M) terms
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * scale)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4 * scale)


@pytest.mark.parametrize("form", list(fd.FORMS))
def test_subgradient_at_ties_is_torchs(backend, form):
    """Small-integer inputs: many |q_k - t_k| (and complex z) are exactly 0, where the kernels must
    take sign(0) = 0 (abs) and gradient 0 (modulus). Integer weights keep float32 sums exact."""
    tensors = inputs(form, 7, 11, 10, seed=3, integer=True)
    scale = tensors[2][:, None] if form == "scaled_l1" else 1.0
    diff = tensors[0][:, None] - scale * tensors[1][None]
    assert (diff == 0).float().mean() > 0.1  # the ties are really there
    weights = torch.randint(-3, 4, (7, 11), generator=torch.Generator().manual_seed(1)).double()
    got, got_grads = values_and_grads(call, form, tensors, weights, torch.float32)
    want, want_grads = values_and_grads(ref_distance, form, tensors, weights, torch.float64)
    if form != "complex_l1":  # integer sums: exact
        assert torch.equal(got, want)
        for a, b in zip(got_grads, want_grads):
            assert torch.equal(a, b)
    else:
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)
        for a, b in zip(got_grads, want_grads):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_transe_l1_ties_match_score_triples():
    """At h + r = t in some coordinates, the fused matrix path and score_triples take the same
    subgradient: the diagonal of score_matrix is score_triples of the aligned triples."""
    g = torch.Generator().manual_seed(0)
    h = torch.randint(-2, 3, (6, 12), generator=g).float()
    r = torch.randint(-2, 3, (6, 12), generator=g).float()
    t = (h + r).clone()
    t[:, ::2] = torch.randint(-2, 3, (6, 6), generator=g).float()  # every other coordinate differs
    grads = []
    for fn in ("matrix", "triples"):
        leaves = [x.clone().requires_grad_(True) for x in (h, r, t)]
        if fn == "matrix":
            s = scoring.score_matrix("transe", *leaves, p=1, gamma=1.0).diagonal()
        else:
            s = scoring.score_triples("transe", *leaves, p=1, gamma=1.0)
        s.sum().backward()
        grads.append((s.detach(), [x.grad for x in leaves]))
    assert torch.equal(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        assert torch.equal(a, b)


def test_native_with_two_threads_equals_one():
    """The backward's per-task tail gradients are summed: the same result with 2 threads."""
    if fd.native_module() is None:
        pytest.fail(f"the native kernels did not build: {fd.native_build_error()}")
    q, t, w, c = [x.float() if x is not None else None for x in inputs("shifted_l1", 64, 50, 24)]
    g = torch.randn(64, 50)
    m = fd.native_module()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = m.backward(1, g, q, t, w, c)
        torch.set_num_threads(2)
        two = m.backward(1, g, q, t, w, c)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("form", list(fd.FORMS))
def test_no_batch_by_tails_by_dim_allocation(backend, form, monkeypatch):
    """Memory O(B x M): no allocation as large as the (B, M, d) difference, forward or backward.
    The eager path's chunks are capped (here at a sixteenth of the full broadcast)."""
    B, M, d = 32, 256, 64
    monkeypatch.setattr(fd, "CHUNK_ELEMENTS", B * M * d // 16)
    q, t, w, c = [x.float().requires_grad_(True) if x is not None else None for x in inputs(form, B, M, d)]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        call(form, q, t, w, c).sum().backward()
    biggest = max((e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0), default=0)
    assert biggest < B * M * d * 4 // 4, f"an allocation of {biggest} bytes (the broadcast is {B * M * d * 4})"


def test_backend_choice_and_report(monkeypatch, capsys):
    monkeypatch.setenv(fd.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match=fd.ENV_VAR):
        fd.backend_for(torch.zeros(1))
    monkeypatch.setenv(fd.ENV_VAR, "eager")
    assert fd.backend_for(torch.zeros(1)) == "eager"
    monkeypatch.setenv(fd.ENV_VAR, "auto")
    assert fd.backend_for(torch.zeros(1, dtype=torch.float64)) == "eager"  # native takes float32 only
    assert fd.backend_for(torch.zeros(1)) == "native"
    monkeypatch.setattr(fd, "_reported", set())
    for _ in range(3):
        fd.backend_for(torch.zeros(1))
    assert capsys.readouterr().err.count("L1 distance kernels on cpu: native") == 1  # reported once


def test_compile_backend_equals_reference(monkeypatch):
    """torch.compile of the broadcast formula (the CUDA choice), on CPU here, with a second shape that
    must not need a recompilation to be right (dynamic shapes)."""
    monkeypatch.setenv(fd.ENV_VAR, "compile")
    for shape in ((5, 7, 6), (9, 13, 20)):
        tensors = inputs("shifted_l1", *shape)
        weights = torch.randn(shape[0], shape[1], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        got, got_grads = values_and_grads(call, "shifted_l1", tensors, weights, torch.float32)
        want, want_grads = values_and_grads(ref_distance, "shifted_l1", tensors, weights, torch.float64)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
        for a, b in zip(got_grads, want_grads):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    assert fd._compiled.get(fd.FORMS["shifted_l1"]) not in (None, False)


def _reference_loss(score_fn, p, loss, h, r, t, w, correction):
    """The loss on the (B, M) matrix of element-wise score_triples (float64), positives on the diagonal."""
    B, M = h.shape[0], t.shape[0]
    bi, mi = torch.arange(B).repeat_interleave(M), torch.arange(M).repeat(B)
    scores = scoring.score_triples(
        score_fn, h[bi], r[bi], t[mi], p=p, gamma=3.0, normal=w[bi] if w is not None else None
    ).view(B, M)
    mask = ~torch.eye(B, M, dtype=torch.bool)
    if loss == "softmax":
        neg = scores.clone()
        neg[:, B:] = neg[:, B:] + correction
        return losses.softmax_loss(scores.diagonal(), neg, mask)
    return losses.logsigmoid_loss(scores.diagonal(), scores, mask, adversarial_scale=1.0)


@pytest.mark.parametrize("loss", ["softmax", "logsigmoid"])
@pytest.mark.parametrize("score_fn,p", [(fn, p) for fn in ("transe", "transh", "rotate", "pairre") for p in (1, 2)])
def test_training_losses_equal_elementwise_reference(score_fn, p, loss):
    """The trainer's path for the distance variants (float32: fused L1 kernels, the fused L2 distance,
    the fused losses) against the float64 element-wise reference (score_triples, then the generic
    masked losses): loss and gradients of head, relation, tails and normal."""
    B, M, d = 12, 40, 16
    g = torch.Generator().manual_seed(5)
    h = torch.randn(B, d, generator=g, dtype=torch.float64)
    r = torch.randn(B, scoring.relation_dim(score_fn, d), generator=g, dtype=torch.float64)
    t = torch.randn(M, d, generator=g, dtype=torch.float64)
    w = torch.randn(B, d, generator=g, dtype=torch.float64) if score_fn == "transh" else None
    correction = 1.7
    results = []
    for dtype in (torch.float32, torch.float64):
        leaves = [x.to(dtype).clone().requires_grad_(True) if x is not None else None for x in (h, r, t, w)]
        if dtype == torch.float32:
            scores = scoring.score_matrix(score_fn, *leaves[:3], p=p, gamma=3.0, normal=leaves[3])
            if loss == "softmax":
                value = losses.batch_softmax_loss(scores, correction)
            else:
                value = losses.batch_logsigmoid_loss(scores, adversarial_scale=1.0)
        else:
            value = _reference_loss(score_fn, p, loss, *leaves, correction)
        value.backward()
        results.append((value.double(), [x.grad.double() for x in leaves if x is not None]))
    (got, got_grads), (want, want_grads) = results
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("form", list(fd.FORMS))
def test_scores_into_a_reused_buffer_view(backend, form):
    """Prediction's in-place blocks: gamma - D written into a column slice of a wider buffer equals the
    autograd path bit for bit, and nothing outside the slice is touched."""
    q, t, w, c = [x.float() if x is not None else None for x in inputs(form, 9, 37, 20)]
    buffer = torch.full((12, 50), 7.0)
    view = buffer[:9, :37]
    got = fd.distance_scores_into(form, q, t, 2.5, view, w, c)
    assert got.data_ptr() == buffer.data_ptr()
    assert torch.equal(view, 2.5 - call(form, q, t, w, c))
    assert (buffer[9:] == 7.0).all() and (buffer[:, 37:] == 7.0).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the compile backend's Triton kernels)")
@pytest.mark.parametrize("form", list(fd.FORMS))
def test_cuda_values_and_gradients_equal_reference(form, monkeypatch):
    """On a GPU the automatic choice is torch.compile of the broadcast formulas: values and gradients
    against the float64 reference on the CPU, at two shapes (no recompilation needed for either)."""
    monkeypatch.setenv(fd.ENV_VAR, "auto")
    assert fd.backend_for(torch.zeros(1, device="cuda")) == "compile"
    for shape in ((9, 13, 20), (64, 300, 64)):
        tensors = inputs(form, *shape)
        weights = torch.randn(shape[0], shape[1], generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        leaves = [x.float().cuda().requires_grad_(True) if x is not None else None for x in tensors]
        out = call(form, *leaves)
        out.backward(weights.float().cuda())
        want, want_grads = values_and_grads(ref_distance, form, tensors, weights, torch.float64)
        scale = max(1.0, shape[2] ** 0.5)
        torch.testing.assert_close(out.double().cpu(), want, rtol=1e-5, atol=1e-5 * scale)
        for a, b in zip([x.grad.double().cpu() for x in leaves if x is not None], want_grads):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4 * scale)


# ----- the native build's cache -----------------------------------------------------------------
def test_every_checkout_builds_from_one_content_addressed_source(tmp_path, monkeypatch):
    """Two checkouts of the same distance.cpp (different paths) get one copy, written once: the same
    path and modification time, so torch and ninja load the first build instead of rebuilding."""
    import os
    import time

    text = fd.SOURCE.read_bytes()
    first, second = tmp_path / "a" / "distance.cpp", tmp_path / "b" / "distance.cpp"
    for path in (first, second):
        path.parent.mkdir()
        path.write_bytes(text)
    root = tmp_path / "extensions"
    monkeypatch.setattr(fd, "SOURCE", first)
    copy, digest = fd._content_addressed_source(root)
    assert copy.read_bytes() == text and copy.parent.name == digest and copy.is_relative_to(root)
    os.utime(copy, (time.time() - 3600, time.time() - 3600))
    written = copy.stat().st_mtime
    monkeypatch.setattr(fd, "SOURCE", second)
    assert fd._content_addressed_source(root) == (copy, digest)
    assert copy.stat().st_mtime == written  # not rewritten
    second.write_bytes(text + b"\n// changed\n")  # other content: another copy, another build
    other, other_digest = fd._content_addressed_source(root)
    assert other_digest != digest and other != copy and other.read_bytes().endswith(b"// changed\n")


def test_a_killed_builds_lock_is_removed_a_live_one_kept(tmp_path, capsys):
    import os
    import time

    lock = tmp_path / "lock"
    lock.touch()
    fd._remove_stale_lock(tmp_path)
    assert lock.exists()  # a build may be running: wait for it, as torch does
    old = time.time() - fd.STALE_LOCK_SECONDS - 60
    os.utime(lock, (old, old))
    fd._remove_stale_lock(tmp_path)
    assert not lock.exists() and "stale build lock" in capsys.readouterr().err
    fd._remove_stale_lock(tmp_path)  # no lock: nothing to do
