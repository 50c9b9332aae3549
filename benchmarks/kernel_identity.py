"""The native L1 distance kernels of two builds, forward and backward, compared bit for bit.

    python benchmarks/kernel_identity.py ~/.cache/torch_extensions/py311_cpu/<an older build's directory>

Loads the older build's .so beside this checkout's build (kge.nn.fused_distance.native_module) and
runs every form (l1, shifted, complex, scaled) on shapes from 1 x 1 to 128 x 1024 x 256, with ties
(zero differences), on 1 and 2 threads. Used when a change to the build (headers, flags) must not
change a single number the kernels compute.
"""

from __future__ import annotations

import glob
import importlib.machinery
import importlib.util
import sys

import torch


def load_build(directory: str):
    so = glob.glob(f"{directory}/*.so")[0]
    name = so.rsplit("/", 1)[1][:-3]  # PyInit_<name> must match
    loader = importlib.machinery.ExtensionFileLoader(name, so)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
    loader.exec_module(module)
    return module


def main() -> int:
    from kge.nn import fused_distance

    old, new = load_build(sys.argv[1]), fused_distance.native_module()
    if new is None:
        print(f"no native build here: {fused_distance.native_build_error()}")
        return 1
    g = torch.Generator().manual_seed(0)
    cases = 0
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for form in fused_distance.FORMS.values():
            for B, M, d in ((1, 1, 8), (7, 13, 32), (64, 200, 64), (33, 517, 100), (128, 1024, 256)):
                q, t = torch.randn(B, d, generator=g), torch.randn(M, d, generator=g)
                t[: M // 3] = q[0]  # ties: zero differences, where the subgradient rules matter
                w, c, grad = (
                    torch.randn(B, d, generator=g),
                    torch.randn(B, M, generator=g),
                    torch.randn(B, M, generator=g),
                )
                if not torch.equal(
                    old.forward(form, q, t, w, c, q.new_empty(0)), new.forward(form, q, t, w, c, q.new_empty(0))
                ):
                    print(f"forward differs: form {form}, B, M, d = {B}, {M}, {d}, {threads} threads")
                    return 1
                for a, b in zip(old.backward(form, grad, q, t, w, c), new.backward(form, grad, q, t, w, c)):
                    if (a is None) != (b is None) or (a is not None and not torch.equal(a, b)):  # None: unused
                        print(f"backward differs: form {form}, B, M, d = {B}, {M}, {d}, {threads} threads")
                        return 1
                cases += 1
    print(f"{cases} cases: forward and backward identical bit for bit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
