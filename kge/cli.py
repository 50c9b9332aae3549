"""The ``kge`` command: every step of the pipeline, called by the Snakemake rules through shell."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from kge.errors import KgeInputError


def _data_mini(args) -> None:
    from kge.data.mini import generate_mini

    generate_mini(args.out, seed=args.seed, scale=args.scale)


def _data_scaled(args) -> None:
    from kge.data.scaled import generate_scaled

    generate_scaled(args.out, fraction=args.fraction, seed=args.seed, chunk=args.chunk)


def _data_download(args) -> None:
    from kge.data.download import download_wikikg90mv2

    download_wikikg90mv2(args.out)


def _data_import(args) -> None:
    from kge.data.importer import DEFAULT_FEATURE_DIM, import_triples

    if args.feature_dim is None:
        args.feature_dim = DEFAULT_FEATURE_DIM
    import_triples(args.train, args.valid, args.test, args.out, fmt=args.format, feature_dim=args.feature_dim,
                   entity_features=args.entity_features, seed=args.seed)


def _data_example(args) -> None:
    from kge.data.example import write_example

    paths = write_example(args.out, seed=args.seed, people=args.people)
    print(" ".join(str(p) for p in paths.values()))


def _data_check(args) -> None:
    from kge.data.layout import open_dataset

    ds = open_dataset(args.root, check=True, check_features="full" if args.full else "sampled")
    print(json.dumps({"features_checked": "all rows" if args.full else "sampled", "num_entities": ds.num_entities, "num_relations": ds.num_relations, "train": int(ds.train_hrt.shape[0]),
                      "valid": int(ds.val_hr.shape[0]), "test-dev": int(ds.test_dev_hr.shape[0]),
                      "test-challenge": int(ds.test_challenge_hr.shape[0])}))
    if args.stamp:
        from kge import atomic

        atomic.save_text(args.stamp, "ok\n")


def _shard(args) -> None:
    from kge.data.layout import open_dataset
    from kge.shard import shard_dataset

    # Ids and shapes are re-checked here; the full feature scan (140 GB on the real data) is `kge data check`.
    open_dataset(args.root, check=True, check_features=False)
    shard_dataset(args.root, args.out, args.shards, seed=args.seed)


def _model_config(args) -> None:
    from kge import atomic
    from kge.config import resolve_model_config

    try:
        overrides = json.loads(args.json)
    except json.JSONDecodeError as err:
        raise KgeInputError(f"model '{args.name}': settings are not valid JSON ({err})") from None
    atomic.save_json(args.out, resolve_model_config(overrides, where=f"config.yaml models.{args.name}"))


def _recipe(args) -> None:
    from kge.recipe import write_recipe

    config = write_recipe(args.json, args.out)
    print(f"kge recipe: {len(config['models'])} models -> {args.out}", file=sys.stderr)


def _load_model_config(path: str) -> dict:
    from kge.config import resolve_model_config

    p = Path(path)
    if not p.exists():
        raise KgeInputError(f"{p}: missing model config")
    return resolve_model_config(json.loads(p.read_text()), where=str(p))


def _launch_workers(workers: int, max_restarts: int, extra_args: tuple = ()) -> None:
    """Re-run this very command under torchrun with ``workers`` local processes (replaces this process).

    torchrun restarts the whole group after any worker dies, up to ``max_restarts`` times; each
    restart resumes from the last complete checkpoint.
    """
    import os

    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={workers}",
            f"--max-restarts={max_restarts}", "-m", "kge", *sys.argv[1:], *extra_args]
    # With the rendezvous store shared between torchrun and the workers (the default), restarted
    # workers hang in init_process_group on the previous attempt's keys (pytorch issue 135712).
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def _join_workers(workers: int, device_name: str, threads: int, max_restarts: int):
    """This process's communicator: for workers > 1, launch torchrun first (unless it launched us)."""
    from kge.comm import launched_world_size, make_comm, worker_device
    from kge.device import resolve_device, set_threads

    if workers > 1 and launched_world_size() == 1:
        _launch_workers(workers, max_restarts)
    if workers > 1 and threads:  # the job's threads are shared by the workers on this node
        set_threads(max(1, threads // min(workers, int(os.environ.get("LOCAL_WORLD_SIZE", workers)))))
    return make_comm(workers, worker_device(resolve_device(device_name)))


def _train(args) -> None:
    from kge.data.layout import open_dataset
    from kge.predict import curve_evaluator
    from kge.train import train

    config = _load_model_config(args.config)
    if args.steps:
        config["steps"] = args.steps
    comm = _join_workers(config["workers"], config["device"], args.threads, args.max_restarts)
    ds = open_dataset(args.root, check=False)
    evaluator = curve_evaluator(ds.val_hr, ds.val_t, ds.train_hrt, config["validate_queries"], seed=config["seed"])
    train(config, args.shard_dir, args.out, evaluator=evaluator, comm=comm)


def _predict(args) -> None:
    import time

    import numpy as np

    from kge import atomic
    from kge.data.layout import open_dataset
    from kge.device import describe
    from kge.ensemble import mrr
    from kge.features import FeatureStore
    from kge.partition import Partition
    from kge.predict import Predictor, load_model, pad_top10, predict_splits
    from kge.quantize_model import quantization_summary, quantized_features

    from kge.checkpoint import read_model
    from kge.partition import owned_shards

    model_path = Path(args.model)
    saved = read_model(model_path)
    workers = args.workers or saved["config"]["workers"]
    comm = _join_workers(workers, saved["config"]["device"], args.threads, 0)
    partition = Partition.load(Path(args.shard_dir) / "partition.npz")
    if partition.n_shards != saved["n_shards"] or partition.seed != saved.get("partition_seed"):
        raise KgeInputError(f"{args.shard_dir}: not the partition {model_path} was trained on; see `kge reshard`")
    owned = owned_shards(partition.n_shards, comm.rank, comm.world_size)
    model, saved, device = load_model(model_path, getattr(comm, "device", None), shards=owned)
    ds = open_dataset(args.root, check=False)
    # A model written by `kge quantise` with a feature format scores its features as that format stores them.
    features = quantized_features(FeatureStore(args.shard_dir, partition.n_shards, shards=owned), saved)
    predictor = Predictor(model, features, partition, device, saved["config"]["predict_block"], owned=owned, comm=comm)
    queries = {"valid": np.asarray(ds.val_hr), "test-dev": np.asarray(ds.test_dev_hr), "test-challenge": np.asarray(ds.test_challenge_hr)}
    arrays, seconds = predict_splits(predictor, queries, args.top_k, saved["config"]["predict_batch"])
    if comm.rank != 0:
        return  # every worker holds the merged result; rank 0 writes it
    valid_mrr = mrr(pad_top10(arrays["valid_ids"]), np.asarray(ds.val_t))
    atomic.save_npz(args.out, **arrays)
    cfg = saved["config"]
    metrics = {
        "model": args.name or model_path.parent.name,
        "score_fn": cfg["score_fn"],
        "distance": cfg["distance"] if model.scorer.distance else None,
        "loss": cfg["loss"]["type"],
        "dim": cfg["dim"],
        "steps": saved["steps"],
        "valid_mrr": valid_mrr,
        "parameters": saved["parameters"],
        "train_seconds": saved["train_seconds"],
        "inference_seconds": seconds,
        "hardware": describe(device),
        "workers": comm.world_size,
        "top_k": int(arrays["valid_ids"].shape[1]),  # after clamping to the entity count
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if "quantization" in saved:
        metrics["quantization"] = quantization_summary(saved["quantization"])
    atomic.save_json(args.metrics, metrics)
    print(f"{metrics['model']}: validation MRR {valid_mrr:.4f}")


def _quantise(args) -> None:
    import torch

    from kge.quantize_model import quantize_model

    generator = torch.Generator().manual_seed(args.seed) if args.stochastic else None
    quantize_model(args.model, args.out, args.format, args.scaling, args.feature_format, args.feature_scaling,
                   shard_dir=args.shard_dir, generator=generator)


def _ensemble(args) -> None:
    from kge.ensemble_run import run_ensemble

    run_ensemble(args.root, args.predictions, args.out_dir, power=args.power, top_k=args.top_k, tune=args.tune,
                 powers=args.powers, weight_exponents=args.weight_exponents)


def _evaluate(args) -> None:
    from kge.evaluation_run import evaluate_model

    evaluate_model(args.model, args.root, args.shard_dir, args.out, args.arrays, name=args.name, splits=args.splits,
                   heads=args.heads, samples=args.samples, top_k=args.top_k, query_batch=args.query_batch, seed=args.seed)


def _evaluate_ensemble(args) -> None:
    from kge.evaluation_ensemble import run_evaluation_summary

    run_evaluation_summary(args.evaluations, args.out_dir, powers=args.powers, exponents=args.weight_exponents,
                           power=args.power, tune=not args.no_tune, seed=args.seed, root=args.root)


def _reshard(args) -> None:
    from kge.reshard import reshard

    what = reshard(args.model_dir, args.from_shards, args.to_shards, args.out)
    print(f"kge reshard: wrote the {what} of {args.model_dir} for {args.to_shards} to {args.out}")


def _submit(args) -> None:
    from kge.submission import run_submission

    run_submission(args.root, args.ensemble_dir, args.out_dir, answers=args.answers)


def _bench(args) -> None:
    from kge.bench import bench_predict, bench_train

    common = dict(root=args.root, shard_dir=args.shard_dir, device=args.device)
    if args.bench_command == "train":
        comm = None
        if args.workers > 1:
            from kge.bench import cached_data
            from kge.comm import launched_world_size

            if launched_world_size() == 1 and not (args.root and args.shard_dir):
                # The workers must share one dataset: generate it once, before launching them.
                root, shards = cached_data(scale=0.2, n_shards=args.workers)
                _launch_workers(args.workers, 0, ("--root", str(root), "--shard-dir", str(shards)))
            comm = _join_workers(args.workers, args.device, args.threads, 0)
        result = bench_train(args.score_fn, args.dim, args.batch, args.negatives, args.workers, args.steps, comm=comm,
                             exchange=args.exchange, distance=args.distance, loss=args.loss, features=not args.no_features, **common)
    else:
        result = bench_predict(args.score_fn, args.dim, args.queries, args.top_k, distance=args.distance, **common)
    if result is not None:
        print(json.dumps(result))


def _plot(args) -> None:
    from kge.plots import ensemble_figure, family_figure, model_curves, training_curves

    training_curves(args.histories, args.curves)
    ensemble_figure(args.summary, args.ensemble)
    if args.families:
        family_figure(args.summary, args.families)
    if args.model_curves:
        model_curves(args.histories, args.model_curves)


def _write_report(args, table: str, data) -> None:
    """A report command's outputs: the data as --json, the Markdown table as --out (both atomic), the table on stdout."""
    from kge import atomic

    atomic.save_json(args.json, data)
    atomic.save_text(args.out, table)
    print(table)


def _quantise_report(args) -> None:
    from kge.quantize_model import quantise_report

    _write_report(args, *quantise_report(args.baselines, args.variants))


def _study_report(args) -> None:
    from kge.studies import study_report

    _write_report(args, *study_report(args.name, args.baseline, args.variants, args.results, claim=args.claim))


def _sweep_report(args) -> None:
    import json

    from kge.studies import sweep_grid, sweep_report

    spec = json.loads(args.spec)
    grid = sweep_grid(args.name, spec, {spec["base"]: json.loads(args.base_settings)})
    _write_report(args, *sweep_report(args.name, spec, grid, args.results, plot=args.plot))


def _status(args) -> None:
    import time

    from kge.status import status_text

    while True:
        text = status_text(args.results)
        if not args.watch:
            print(text)
            return
        print("\033[2J\033[H" + text, flush=True)  # clear the screen, redraw
        time.sleep(args.watch)


def _timing(args) -> None:
    from kge.plots import timing_figure

    timing_figure(args.benchmarks, args.out, args.table)


def _results_model(results: str, name: str) -> Path:
    """RESULTS and a model name -> RESULTS/models/NAME/model.pt, or a one-line error naming the models present."""
    from kge.checkpoint import MODEL_NAME

    path = Path(results) / "models" / name / MODEL_NAME
    if not path.is_file():
        present = sorted(p.parent.name for p in (Path(results) / "models").glob(f"*/{MODEL_NAME}"))
        raise KgeInputError(f"{path}: no trained model {name!r} in {results}; finished models: {', '.join(present) or 'none'}")
    return path


def _query(args) -> None:
    from kge.inference import TrainedModel, format_table, frame_json

    if (args.head is None) == (args.tail is None):
        raise KgeInputError("query: give exactly one of --head (to predict tails) or --tail (to predict heads) with --relation")
    trained = TrainedModel(_results_model(args.results, args.model), shard_dir=args.shard_dir, root=args.root, device=args.device)
    if args.head is not None:
        frame = trained.predict_tails(args.head, args.relation, k=args.k, filter_known=args.filter_known)
        text = f"({args.head}, {args.relation}, ?)"
    else:
        frame = trained.predict_heads(args.relation, args.tail, k=args.k, filter_known=args.filter_known, heads=args.heads)
        text = f"(?, {args.relation}, {args.tail})"
    print(frame_json(frame) if args.json else format_table(frame, text))


def _export(args) -> None:
    from kge.inference import TrainedModel, export_embeddings

    trained = TrainedModel(_results_model(args.results, args.model), shard_dir=args.shard_dir, root=args.root, device=args.device)
    path = export_embeddings(trained, args.out)
    print(f"kge export: {trained.num_entities} entities, {trained.num_relations} relations -> {path.parent}", file=sys.stderr)


def _resume(args) -> None:
    from kge.resume import resume

    passed = args.snakemake_args[1:] if args.snakemake_args[:1] == ["--"] else args.snakemake_args
    code = resume(passed, workdir=args.directory)
    if code:
        sys.exit(code)


def _score_fn_name(name: str) -> str:
    """argparse type of --score-fn: a name of the scorer registry (imported only when the option is parsed:
    it brings in torch, which building the parser does not)."""
    from kge.scorers import SCORERS

    if name not in SCORERS:
        raise argparse.ArgumentTypeError(f"invalid choice: {name!r} (choose from {', '.join(SCORERS)})")
    return name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="get a dataset into the OGB WikiKG90Mv2 layout").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("mini", help="generate the embedded miniature of WikiKG90Mv2")
    p.add_argument("--out", required=True, help="ROOT; the dataset goes to ROOT/wikikg90m-v2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=float, default=1.0, help="multiplies entities and triples (queries stay 15000/15000/10000)")
    p.set_defaults(func=_data_mini)
    p = data.add_parser("scaled", help="stream a WikiKG90Mv2-shaped graph at 1/F of the real size (real proportions)")
    p.add_argument("--fraction", type=float, required=True, help="F >= 1: E = 91,230,610/F entities, T = 601,062,811/F triples")
    p.add_argument("--out", required=True, help="ROOT; the dataset goes to ROOT/wikikg90m-v2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=int, default=2_000_000, help="training rows per written window (memory bound; output unchanged)")
    p.set_defaults(func=_data_scaled)
    p = data.add_parser("download", help="download the real WikiKG90Mv2 (about 89 GB zip, resumable)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_data_download)
    p = data.add_parser("import", help="import your own KG from TSV/CSV/Parquet triples with string labels")
    p.add_argument("--train", required=True)
    p.add_argument("--valid", required=True)
    p.add_argument("--test", default=None, help="test triples, or (head, relation) queries without tails; optional")
    p.add_argument("--out", required=True)
    p.add_argument("--format", choices=["tsv", "csv", "parquet"], default=None)
    p.add_argument("--entity-features", default=None, help="entity features keyed by label: Parquet (label + vector "
                   "columns) or .npz (labels, features); default: uninformative random rows, train with features.use: false")
    p.add_argument("--feature-dim", type=int, default=None, help="width of the random features when no --entity-features "
                   "(default: the importer's narrow default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random features")
    p.set_defaults(func=_data_import)
    p = data.add_parser("example", help="write a small labelled example graph (train/valid/test TSV) to try `dataset: import`")
    p.add_argument("--out", required=True, help="folder for train.tsv, valid.tsv, test.tsv")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--people", type=int, default=2000, help="size of the world (about 7 triples per person)")
    p.set_defaults(func=_data_example)
    p = data.add_parser("check", help="validate every array of a dataset and print its sizes")
    p.add_argument("--root", required=True)
    p.add_argument("--stamp", help="write this file when the check passes")
    p.add_argument("--full", action="store_true",
                   help="scan every feature row for NaN/inf (a full read: hours on the real 140 GB file); "
                        "default: every id, and the features on 16 blocks of 64 MiB")
    p.set_defaults(func=_data_check)

    p = sub.add_parser("shard", help="Parquet buckets by (head shard, tail shard) + per-shard features")
    p.add_argument("--root", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--shards", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_shard)

    cfg = sub.add_parser("config", help="model configurations").add_subparsers(dest="config_command", required=True)
    p = cfg.add_parser("model", help="validate one model's settings, fill defaults, write JSON")
    p.add_argument("--name", required=True)
    p.add_argument("--json", required=True, help="the model's settings as JSON")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_model_config)

    p = sub.add_parser("recipe", help="write the 85-model recipe config from the submission's configs JSON")
    p.add_argument("--json", required=True, help="wikiwiki-85-configs-and-results.json (column-oriented)")
    p.add_argument("--out", required=True, help="Snakemake config to write, e.g. workflow/ensembles/wikikg90mv2-85.yaml")
    p.set_defaults(func=_recipe)
    p = sub.add_parser("train", help="train one model (resumes from its checkpoint)")
    p.add_argument("--config", required=True, help="model config JSON (from `kge config model`)")
    p.add_argument("--root", required=True)
    p.add_argument("--shard-dir", required=True)
    p.add_argument("--out", required=True, help="model directory")
    p.add_argument("--steps", type=int, default=None, help="override the configured number of steps")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default); split among local workers")
    p.add_argument("--max-restarts", type=int, default=3, help="workers > 1: times torchrun restarts a failed group")
    p.set_defaults(func=_train)

    p = sub.add_parser("reshard", help="convert a checkpoint (or a trained model) to another entity partition / D")
    p.add_argument("--model-dir", required=True, help="model directory with checkpoint/ or model.pt")
    p.add_argument("--from-shards", required=True, help="shard directory it was trained on")
    p.add_argument("--to-shards", required=True, help="shard directory of the new partition")
    p.add_argument("--out", required=True, help="new model directory")
    p.set_defaults(func=_reshard)

    p = sub.add_parser("predict", help="top-K over all entities for valid/test-dev/test-challenge")
    p.add_argument("--model", required=True, help="model.pt")
    p.add_argument("--name", default=None)
    p.add_argument("--root", required=True)
    p.add_argument("--shard-dir", required=True)
    p.add_argument("--top-k", type=int, default=100)
    p.add_argument("--out", required=True, help="predictions .npz")
    p.add_argument("--metrics", required=True, help="metrics .json")
    p.add_argument("--workers", type=int, default=None, help="workers sharing the entity table (default: the model's)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.set_defaults(func=_predict)

    p = sub.add_parser("quantise", aliases=["quantize"],
                       help="a model whose entity rows (and features) are stored in FP8/int8/16-bit (simulated: fp32 rows written)")
    p.add_argument("--model", required=True, help="model.pt")
    p.add_argument("--out", required=True, help="new model directory (model.pt, entities/, quantization.json)")
    p.add_argument("--format", required=True, help="entity table format: float32, bfloat16, float16, float8_e4m3fn, "
                   "float8_e4m3fnuz, float8_e5m2, float8_e5m2fnuz or int8")
    p.add_argument("--scaling", required=True, help="none, tensor (one fp32 scale) or row (one fp32 scale per entity); int8 needs one")
    p.add_argument("--feature-format", default=None, help="feature format (default: as stored, float16); needs --shard-dir")
    p.add_argument("--feature-scaling", default=None, help="none, tensor or row (with --feature-format)")
    p.add_argument("--shard-dir", default=None, help="the model's shard directory (its features)")
    p.add_argument("--stochastic", action="store_true", help="stochastic rounding of the table (features: always nearest)")
    p.add_argument("--seed", type=int, default=0, help="seed of --stochastic")
    p.set_defaults(func=_quantise)

    p = sub.add_parser("ensemble", help="rank-power mean ensemble of model predictions")
    p.add_argument("--root", required=True)
    p.add_argument("--predictions", nargs="+", required=True, help="predictions .npz (a .json of metrics beside each)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--power", type=float, default=-0.5)
    p.add_argument("--top-k", type=int, default=100)
    p.add_argument("--tune", action="store_true", help="choose the power with the best validation MRR")
    p.add_argument("--powers", type=float, nargs="+", default=[-2.0, -1.5, -1.0, -0.75, -0.5, -0.25, 0.5, 1.0])
    p.add_argument("--weight-exponents", type=float, nargs="+", default=[0.0],
                   help="member weights (MRR/best)^g tried with --tune; 0 = the RECIPE's equal weights")
    p.set_defaults(func=_ensemble)

    p = sub.add_parser("evaluate", help="filtered link-prediction evaluation of one model (both directions, all entities)")
    p.add_argument("--model", required=True, help="model.pt")
    p.add_argument("--name", default=None)
    p.add_argument("--root", required=True)
    p.add_argument("--shard-dir", required=True)
    p.add_argument("--out", required=True, help="metrics .json")
    p.add_argument("--arrays", required=True, help="per-query ranks and filtered top-K lists .npz (for the ensemble)")
    p.add_argument("--splits", nargs="+", default=["valid", "test"], choices=["valid", "test"])
    p.add_argument("--heads", default="auto", choices=["auto", "direct", "inverse"],
                   help="head prediction: scored directly, or as tail prediction with the inverse relation (auto: inverse when trained with it)")
    p.add_argument("--samples", type=int, default=None, help="SAMPLED mode: rank among this many random candidates (not comparable with full ranking)")
    p.add_argument("--top-k", type=int, default=100, help="width of the filtered top-K lists kept for the ensemble")
    p.add_argument("--query-batch", type=int, default=None, help="queries scored at once (default: the model's predict_batch)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled mode")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("evaluate-ensemble", help="rank-power ensemble under the filtered protocol + the evaluation summary table")
    p.add_argument("--evaluations", nargs="+", required=True, help="`kge evaluate` .npz files (their .json beside)")
    p.add_argument("--out-dir", required=True, help="writes summary.json and summary.md")
    p.add_argument("--root", default=None, help="dataset ROOT (relation labels of the per-relation breakdown)")
    p.add_argument("--power", type=float, default=-0.5)
    p.add_argument("--no-tune", action="store_true", help="use --power with equal weights instead of tuning")
    p.add_argument("--powers", type=float, nargs="+", default=[-2.0, -1.0, -0.5, -0.25, 0.5, 1.0])
    p.add_argument("--weight-exponents", type=float, nargs="+", default=[0.0])
    p.add_argument("--seed", type=int, default=0, help="seed of the validation halves when there is no test split")
    p.set_defaults(func=_evaluate_ensemble)

    p = sub.add_parser("submit", help="write the OGB test-dev and test-challenge files + metadata")
    p.add_argument("--root", required=True)
    p.add_argument("--ensemble-dir", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--answers", default=None, help="hidden test answers (miniature) to report test MRR")
    p.set_defaults(func=_submit)

    bench = sub.add_parser("bench", help="throughput benchmarks (one JSON line)").add_subparsers(dest="bench_command", required=True)
    for name, help_text in (("train", "training steps per second"), ("predict", "top-K queries per second")):
        p = bench.add_parser(name, help=help_text)
        p.add_argument("--score-fn", default="distmult", type=_score_fn_name,
                       help="a scoring function of the registry kge/scorers.py (default: distmult)")
        p.add_argument("--dim", type=int, default=128)
        p.add_argument("--root", default=None, help="dataset ROOT (with --shard-dir); default: a generated miniature")
        p.add_argument("--shard-dir", default=None)
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
        p.add_argument("--distance", type=int, default=None, choices=[1, 2],
                       help="L1 or L2 for transe/transh/rotate (default: L1 for transe, L2 for transh and rotate)")
        p.set_defaults(func=_bench)
        if name == "train":
            p.add_argument("--batch", type=int, default=1024)
            p.add_argument("--negatives", type=int, default=1024)
            p.add_argument("--workers", type=int, default=1)
            p.add_argument("--exchange", default="tails", choices=["tails", "scores"], help="move tails or scores between workers")
            p.add_argument("--steps", type=int, default=30)
            p.add_argument("--loss", default="softmax", choices=["softmax", "logsigmoid"],
                           help="training loss (logsigmoid with adversarial scale 0, the default)")
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
    p = sub.add_parser("quantise-report", help="MRR and bytes per entity of quantised models beside their originals")
    p.add_argument("--baselines", nargs="+", required=True, help="kge predict metrics of the original models")
    p.add_argument("--variants", nargs="+", required=True, help="kge predict metrics of the quantised copies (<model>.<variant>)")
    p.add_argument("--out", required=True, help="Markdown table")
    p.add_argument("--json", required=True, help="the same rows as JSON")
    p.set_defaults(func=_quantise_report)
    p = sub.add_parser("study-report", help="a technique study's variants beside its baseline: MRR, parameters, time, loss")
    p.add_argument("--name", required=True, help="the study (config key techniques.studies.<name>)")
    p.add_argument("--baseline", required=True, help="the baseline model")
    p.add_argument("--variants", nargs="+", required=True, help="the variant models")
    p.add_argument("--claim", help="what the technique's paper claims (a line of the report)")
    p.add_argument("--results", required=True, help="the run's results_dir (predictions/ and models/ are read)")
    p.add_argument("--out", required=True, help="Markdown table")
    p.add_argument("--json", required=True, help="the same rows as JSON")
    p.set_defaults(func=_study_report)
    p = sub.add_parser("sweep-report", help="batch size x learning rate sweep: heat map of validation MRR, stable LR band")
    p.add_argument("--name", required=True, help="the sweep (config key techniques.sweeps.<name>)")
    p.add_argument("--spec", required=True, help="the sweep's config as JSON")
    p.add_argument("--base-settings", required=True, help="the base model's settings as JSON (for its steps and batch size)")
    p.add_argument("--results", required=True, help="the run's results_dir (predictions/ is read)")
    p.add_argument("--out", required=True, help="Markdown table")
    p.add_argument("--json", required=True, help="the same as JSON")
    p.add_argument("--plot", required=True, help="heat map (PNG)")
    p.set_defaults(func=_sweep_report)
    p = sub.add_parser("status", help="where every model of a run stands: done, training (step, loss, MRR, ETA), pending")
    p.add_argument("results", nargs="?", default="results", help="the run's results_dir")
    p.add_argument("--watch", type=float, default=0, help="redraw every this many seconds")
    p.set_defaults(func=_status)
    p = sub.add_parser("timing", help="wall time per rule from Snakemake's benchmark files (figure + table)")
    p.add_argument("--benchmarks", required=True, help="the results' benchmarks/ directory")
    p.add_argument("--out", required=True, help="figure (PNG)")
    p.add_argument("--table", required=True, help="Markdown table")
    p.set_defaults(func=_timing)
    for name, help_text in (("query", "top-k answers of (head, relation, ?) or (?, relation, tail) by label from a trained model"),
                            ("export", "a trained model's entity and relation embeddings with their labels (Parquet and .npy)")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("results", help="the run's results directory (holds models/ and shards/)")
        p.add_argument("--model", required=True, help="model name: RESULTS/models/NAME/model.pt")
        p.add_argument("--shard-dir", default=None, help="default RESULTS/shards")
        p.add_argument("--root", default=None, help="dataset root (default: the one the shards were cut from)")
        p.add_argument("--device", default=None, help="cpu or cuda (default: the model config's)")
        if name == "query":
            p.add_argument("--head", default=None, help="head label: predict tails")
            p.add_argument("--relation", required=True, help="relation label")
            p.add_argument("--tail", default=None, help="tail label: predict heads")
            p.add_argument("-k", type=int, default=10, help="answers to show (at most the number of entities)")
            p.add_argument("--filter-known", action="store_true", help="leave out answers of known train/valid/test triples")
            p.add_argument("--heads", choices=("auto", "direct", "inverse"), default="auto",
                           help="head prediction: direct scoring, or the inverse relation of a model trained with "
                                "inverse_relations (auto: inverse when the model has it)")
            p.add_argument("--json", action="store_true", help="print JSON instead of a table")
            p.set_defaults(func=_query)
        else:
            p.add_argument("--out", required=True, help="output directory")
            p.set_defaults(func=_export)
    p = sub.add_parser(
        "resume",
        help="after a hard kill: unlock the workflow if no snakemake/kge job still runs there, then rerun snakemake",
        description="kge resume [SNAKEMAKE ARGUMENTS]: checks that no snakemake or kge process still works in the "
                    "directory, runs `snakemake --unlock` if a stale lock is left, then `snakemake` with the same arguments.",
    )
    p.add_argument("--directory", default=".", help="the workflow directory (default: the current one)")
    p.add_argument("snakemake_args", nargs=argparse.REMAINDER, help="passed to snakemake unchanged, e.g. --configfile my.yaml")
    p.set_defaults(func=_resume)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["resume"] and not {"-h", "--help"} & set(argv[1:2]):
        # Everything after `resume` (and its own --directory) goes to snakemake unchanged, options
        # included: argparse's REMAINDER refuses a first argument that looks like an option.
        rest = argv[1:]
        directory = "."
        if rest[:1] == ["--directory"] and len(rest) > 1:
            directory, rest = rest[1], rest[2:]
        argv = ["resume", "--directory", directory, "--", *rest]
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", 0):
        from kge.device import set_threads

        set_threads(args.threads)
    try:
        args.func(args)
    except KgeInputError as err:
        print(f"kge: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
