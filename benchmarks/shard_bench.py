"""Benchmark kge.bess.shard.shard_dataset on synthetic WikiKG90Mv2-layout inputs.

For each triple count T: generate ROOT/wikikg90m-v2 under --work (train_hrt (T,3) int64 with
power-law-ish entity and relation ids, written chunk by chunk into an open_memmap), then shard it in
a SUBPROCESS so generation memory does not count, recording wall time, rows/s and the child's peak
RSS (resource.getrusage ru_maxrss). The feature file (E, F) float16 is generated once and hard-linked
into every root. Results go to --out as JSON; --work is deleted afterwards unless --keep.

    PYTHONPATH=. python benchmarks/shard_bench.py --triples 10000000 100000000 \\
        --entities 10000000 --relations 1000 --feat-dim 64 --shards 16 --writer writers dataset \\
        --out benchmarks/results/shard_100m.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

GEN_CHUNK = 5_000_000


def _gen_triples(path: Path, t: int, e: int, r: int, seed: int) -> None:
    """(T,3) int64; heads/tails ~ E*u^3 (a few hub entities, long tail), relations ~ R*u^5 (relation 0
    takes ~15% like WikiKG90Mv2's relation 481 dominates)."""
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.int64, shape=(t, 3))
    for lo in range(0, t, GEN_CHUNK):
        n = min(t, lo + GEN_CHUNK) - lo
        block = np.empty((n, 3), dtype=np.int64)
        block[:, 0] = (e * rng.random(n) ** 3).astype(np.int64)
        block[:, 1] = (r * rng.random(n) ** 5).astype(np.int64)
        block[:, 2] = (e * rng.random(n) ** 3).astype(np.int64)
        out[lo : lo + n] = block
    out.flush()
    del out


def _gen_features(path: Path, e: int, f: int, seed: int) -> None:
    rng = np.random.default_rng(seed + 1)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(e, f))
    rows = max(1, (64 << 20) // (4 * f))
    for lo in range(0, e, rows):
        n = min(e, lo + rows) - lo
        out[lo : lo + n] = rng.standard_normal((n, f), dtype=np.float32).astype(np.float16)
    out.flush()
    del out


def _make_root(work: Path, t: int, e: int, r: int, feat: Path, seed: int) -> Path:
    import torch

    root = work / f"root_{t}"
    ds = root / "wikikg90m-v2"
    proc = ds / "processed"
    if (proc / "train_hrt.npy").exists():
        return root
    proc.mkdir(parents=True, exist_ok=True)
    (ds / "RELEASE_v1.txt").write_text("synthetic benchmark\n")
    torch.save({"num_entities": int(e), "num_relations": int(r)}, ds / "meta.pt")
    os.link(feat, proc / "entity_feat.npy")
    tmp = proc / "train_hrt.tmp.npy"
    _gen_triples(tmp, t, e, r, seed)
    os.replace(tmp, proc / "train_hrt.npy")
    return root


def _vm_hwm_mb() -> float:
    """Peak RSS of THIS process image (VmHWM, reset at exec). ru_maxrss is also recorded, but on Linux
    a child inherits the parent's high-water mark through fork+exec, so after generating inputs in
    the parent it reports the parent's peak, not the sharder's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _child(args: argparse.Namespace) -> None:
    """Runs in the subprocess: shard once, print one JSON line."""
    import torch  # noqa: F401 - import cost is part of a real run's baseline RSS

    from kge.bess.shard import shard_dataset

    base_rss = _vm_hwm_mb()
    t0 = time.perf_counter()
    out = shard_dataset(
        args.root,
        args.shard_out,
        n_shards=args.shards,
        seed=0,
        chunk_rows=args.chunk_rows,
        progress=False,
        writer=args.writer,
    )
    wall = time.perf_counter() - t0
    meta = json.loads((out / "shard_meta.json").read_text())
    size = lambda p: sum(f.stat().st_size for f in p.rglob("*") if f.is_file())  # noqa: E731
    print(
        json.dumps(
            {
                "wall_s": round(wall, 2),
                "triples_phase_s": meta["seconds"]["triples"],
                "peak_rss_mb": _vm_hwm_mb(),
                "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "baseline_rss_after_imports_mb": base_rss,
                "triples_parquet_bytes": size(out / "triples"),
                "features_bytes": size(out / "features"),
                "empty_buckets": meta["empty_buckets"],
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--triples", type=int, nargs="+", default=[10_000_000, 100_000_000])
    ap.add_argument("--entities", type=int, default=10_000_000)
    ap.add_argument("--relations", type=int, default=1000)
    ap.add_argument("--feat-dim", type=int, default=64)
    ap.add_argument("--shards", type=int, nargs="+", default=[16])
    ap.add_argument("--writer", nargs="+", default=["writers"], choices=["writers", "dataset"])
    ap.add_argument("--chunk-rows", type=int, default=4_000_000)
    ap.add_argument("--work", type=Path, default=Path("benchmarks/work"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/shard_100m.json"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the generated inputs under --work")
    # internal: the measured subprocess
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--shard-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.shards = args.shards[0]
        args.writer = args.writer[0]
        _child(args)
        return

    args.work.mkdir(parents=True, exist_ok=True)
    feat = args.work / f"entity_feat_{args.entities}x{args.feat_dim}.npy"
    t0 = time.perf_counter()
    if not feat.exists():
        _gen_features(feat, args.entities, args.feat_dim, args.seed)
    print(f"features {feat.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    runs = []
    try:
        for t in args.triples:
            t0 = time.perf_counter()
            root = _make_root(args.work, t, args.entities, args.relations, feat, args.seed)
            gen_s = time.perf_counter() - t0
            in_bytes = (root / "wikikg90m-v2" / "processed" / "train_hrt.npy").stat().st_size
            print(f"T={t:,}: input {in_bytes / 1e9:.2f} GB generated in {gen_s:.1f}s", file=sys.stderr)
            for d in args.shards:
                for writer in args.writer:
                    shard_out = args.work / f"shards_{t}_{d}_{writer}"
                    cmd = [
                        sys.executable,
                        __file__,
                        "--child",
                        "--root",
                        str(root),
                        "--shard-out",
                        str(shard_out),
                        "--shards",
                        str(d),
                        "--writer",
                        writer,
                        "--chunk-rows",
                        str(args.chunk_rows),
                    ]
                    res = subprocess.run(
                        cmd, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()}
                    )
                    rec = json.loads(res.stdout.strip().splitlines()[-1])
                    rec.update(
                        num_triples=t,
                        n_shards=d,
                        writer=writer,
                        train_hrt_bytes=in_bytes,
                        triples_rows_per_s=round(t / rec["triples_phase_s"]),
                        overall_rows_per_s=round(t / rec["wall_s"]),
                    )
                    runs.append(rec)
                    print(json.dumps(rec), file=sys.stderr)
                    shutil.rmtree(shard_out)
    finally:
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
    result = {
        "benchmark": "kge.bess.shard.shard_dataset",
        "command": "PYTHONPATH=. python " + " ".join([sys.argv[0]] + sys.argv[1:]),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "ram_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pyarrow": __import__("pyarrow").__version__,
        },
        "params": {
            "num_entities": args.entities,
            "num_relations": args.relations,
            "feat_dim": args.feat_dim,
            "features_bytes": args.entities * args.feat_dim * 2,
            "chunk_rows": args.chunk_rows,
            "compression": "snappy",
            "id_distribution": "h, t ~ E*u^3; r ~ R*u^5",
        },
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
