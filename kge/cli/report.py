"""`kge bench`, `kge plot`, `kge timing`, `kge status` and `kge resume`."""

from __future__ import annotations

import argparse
import json
import sys

from kge.dist.launch import join_workers, launch_workers


def _bench(args) -> None:
    from kge.report.bench import bench_predict, bench_train

    common = dict(root=args.root, shard_dir=args.shard_dir, device=args.device)
    if args.bench_command == "train":
        comm = None
        if args.workers > 1:
            from kge.dist.comm import launched_world_size
            from kge.report.bench import cached_data

            if launched_world_size() == 1 and not (args.root and args.shard_dir):
                # The workers must share one dataset: generate it once, before launching them.
                root, shards = cached_data(scale=0.2, n_shards=args.workers)
                launch_workers(args.workers, 0, ("--root", str(root), "--shard-dir", str(shards)))
            comm = join_workers(args.workers, args.device, args.threads, 0)
        result = bench_train(
            args.score_fn,
            args.dim,
            args.batch,
            args.negatives,
            args.workers,
            args.steps,
            comm=comm,
            exchange=args.exchange,
            distance=args.distance,
            loss=args.loss,
            features=not args.no_features,
            **common,
        )
    else:
        result = bench_predict(args.score_fn, args.dim, args.queries, args.top_k, distance=args.distance, **common)
    if result is not None:
        print(json.dumps(result))


def _plot(args) -> None:
    from kge.report.plots import ensemble_figure, family_figure, model_curves, training_curves

    training_curves(args.histories, args.curves)
    ensemble_figure(args.summary, args.ensemble)
    if args.families:
        family_figure(args.summary, args.families)
    if args.model_curves:
        model_curves(args.histories, args.model_curves)


def _status(args) -> None:
    import time

    from kge.report.status import status_text

    while True:
        text = status_text(args.results)
        if not args.watch:
            print(text)
            return
        print("\033[2J\033[H" + text, flush=True)  # clear the screen, redraw
        time.sleep(args.watch)


def _timing(args) -> None:
    from kge.report.plots import timing_figure

    timing_figure(args.benchmarks, args.out, args.table)


def _resume(args) -> None:
    from kge.report.resume import resume

    passed = args.snakemake_args[1:] if args.snakemake_args[:1] == ["--"] else args.snakemake_args
    code = resume(passed, workdir=args.directory)
    if code:
        sys.exit(code)


def _score_fn_name(name: str) -> str:
    """argparse type of --score-fn: a name of the scorer registry (imported only when the option is parsed:
    it brings in torch, which building the parser does not)."""
    from kge.nn.scorers import SCORERS

    if name not in SCORERS:
        raise argparse.ArgumentTypeError(f"invalid choice: {name!r} (choose from {', '.join(SCORERS)})")
    return name


def register(sub) -> None:
    """Add this group's commands to the ``kge`` subparsers ``sub``."""
    bench = sub.add_parser("bench", help="throughput benchmarks (one JSON line)").add_subparsers(
        dest="bench_command", required=True
    )
    for name, help_text in (("train", "training steps per second"), ("predict", "top-K queries per second")):
        p = bench.add_parser(name, help=help_text)
        p.add_argument(
            "--score-fn",
            default="distmult",
            type=_score_fn_name,
            help="a scoring function of the registry kge/nn/scorers.py (default: distmult)",
        )
        p.add_argument("--dim", type=int, default=128)
        p.add_argument("--root", default=None, help="dataset ROOT (with --shard-dir); default: a generated miniature")
        p.add_argument("--shard-dir", default=None)
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
        p.add_argument(
            "--distance",
            type=int,
            default=None,
            choices=[1, 2],
            help="L1 or L2 for transe/transh/rotate (default: L1 for transe, L2 for transh and rotate)",
        )
        p.set_defaults(func=_bench)
        if name == "train":
            p.add_argument("--batch", type=int, default=1024)
            p.add_argument("--negatives", type=int, default=1024)
            p.add_argument("--workers", type=int, default=1)
            p.add_argument(
                "--exchange", default="tails", choices=["tails", "scores"], help="move tails or scores between workers"
            )
            p.add_argument("--steps", type=int, default=30)
            p.add_argument(
                "--loss",
                default="softmax",
                choices=["softmax", "logsigmoid"],
                help="training loss (logsigmoid with adversarial scale 0, the default)",
            )
            p.add_argument("--no-features", action="store_true", help="embeddings only: no feature encoder")
        else:
            p.add_argument("--queries", type=int, default=2000)
            p.add_argument("--top-k", type=int, default=100)

    p = sub.add_parser("plot", help="report figures: training curves and the ensemble")
    p.add_argument("--histories", nargs="+", required=True)
    p.add_argument("--summary", required=True)
    p.add_argument("--curves", required=True)
    p.add_argument("--ensemble", required=True)
    p.add_argument("--families", help="figure of member MRR by scoring function and loss")
    p.add_argument("--model-curves", help="directory for one training-curve figure per model")
    p.set_defaults(func=_plot)

    p = sub.add_parser(
        "status", help="where every model of a run stands: done, training (step, loss, MRR, ETA), pending"
    )
    p.add_argument("results", nargs="?", default="results", help="the run's results_dir")
    p.add_argument("--watch", type=float, default=0, help="redraw every this many seconds")
    p.set_defaults(func=_status)
    p = sub.add_parser("timing", help="wall time per rule from Snakemake's benchmark files (figure + table)")
    p.add_argument("--benchmarks", required=True, help="the results' benchmarks/ directory")
    p.add_argument("--out", required=True, help="figure (PNG)")
    p.add_argument("--table", required=True, help="Markdown table")
    p.set_defaults(func=_timing)

    p = sub.add_parser(
        "resume",
        help="after a hard kill: unlock the workflow if no snakemake/kge job still runs there, then rerun snakemake",
        description="kge resume [SNAKEMAKE ARGUMENTS]: checks that no snakemake or kge process still works in the "
        "directory, runs `snakemake --unlock` if a stale lock is left, then `snakemake` with the same arguments.",
    )
    p.add_argument("--directory", default=".", help="the workflow directory (default: the current one)")
    p.add_argument(
        "snakemake_args", nargs=argparse.REMAINDER, help="passed to snakemake unchanged, e.g. --configfile my.yaml"
    )
    p.set_defaults(func=_resume)
