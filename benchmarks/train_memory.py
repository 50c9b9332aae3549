"""Where a training job's memory goes: RSS (anonymous and file-backed) after each part of the Trainer.

    PYTHONPATH=$PWD python benchmarks/train_memory.py --config results/scale-f128/models/distmult_softmax/config.json \
        --root data/scaled-f128-s0 --shard-dir results/scale-f128/shards [--steps 200] [--validate]

Prints one line per stage: RSS, RssAnon, RssFile (from /proc/self/status) and the increase over the
previous stage, then bytes per owned entity row of each increase.
"""

import argparse
import time

import torch


def rss() -> dict:
    out = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--shard-dir", required=True)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--validate", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    last = rss()

    def mark(stage):
        nonlocal last
        now = rss()
        rows.append((stage, now, {k: now[k] - last[k] for k in ("VmRSS", "RssAnon", "RssFile")}))
        last = now

    mark("interpreter + torch")
    from kge.cli.train import _load_model_config
    from kge.train.trainer import Trainer

    config = _load_model_config(args.config)
    mark("kge imported")
    trainer = Trainer(config, args.shard_dir, "/tmp/train_memory_out")
    mark("Trainer built (partition, features, sampler, table, Adam)")
    start = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step()
    mark(f"{args.steps} steps ({(time.perf_counter() - start) / args.steps * 1e3:.0f} ms/step)")
    trainer.save_checkpoint()
    mark("one checkpoint written")
    if args.validate:
        from kge.data.layout import open_dataset
        from kge.predict.predictor import curve_evaluator

        ds = open_dataset(args.root, check=False)
        evaluator = curve_evaluator(ds.val_hr, ds.val_t, ds.train_hrt, config.validate_queries, seed=config.seed)
        mark("evaluator built")
        evaluator(trainer)
        mark("one validation")
    n = len(trainer.owned) * trainer.shard_size
    print(f"owned entity rows: {n:,}; dim {config.dim}; peak RSS (VmHWM) {rss()['VmHWM'] / 1e9:.2f} GB")
    for stage, now, delta in rows:
        print(
            f"{stage:60s} RSS {now['VmRSS'] / 1e9:6.2f} GB (anon {now['RssAnon'] / 1e9:5.2f}, file {now['RssFile'] / 1e9:5.2f})"
            f"  +{delta['VmRSS'] / 1e9:6.2f} GB = {delta['VmRSS'] / n:7.0f} B/row; peak so far {now['VmHWM'] / 1e9:5.2f} GB"
        )


if __name__ == "__main__":
    main()
