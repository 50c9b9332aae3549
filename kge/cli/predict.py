"""`kge predict`, `kge evaluate`, `kge query` and `kge export`: using a trained model."""

from __future__ import annotations

import sys
from pathlib import Path

from kge.common.errors import KgeInputError
from kge.dist.launch import join_workers


def _predict(args) -> None:
    import time

    import numpy as np

    from kge.bess.features import FeatureStore
    from kge.bess.partition import owned_shards
    from kge.common import atomic
    from kge.config import load_model_config
    from kge.data.layout import open_dataset
    from kge.dist.device import describe
    from kge.predict.metrics import mrr
    from kge.predict.predictor import Predictor, load_model, pad_top10, predict_splits
    from kge.table.quantize import quantized_features
    from kge.techniques.quantization import quantization_summary
    from kge.train.checkpoint import load_trained_partition, read_model

    model_path = Path(args.model)
    saved = read_model(model_path)
    config = load_model_config(saved["config"], where=str(model_path))
    workers = args.workers or config.workers
    comm = join_workers(workers, config.device, args.threads, 0)
    partition = load_trained_partition(args.shard_dir, saved, model_path)
    owned = owned_shards(partition.n_shards, comm.rank, comm.world_size)
    model, saved, device = load_model(model_path, getattr(comm, "device", None), shards=owned, saved=saved)
    ds = open_dataset(args.root, check=False)
    # A model written by `kge quantise` with a feature format scores its features as that format stores them.
    features = quantized_features(FeatureStore(args.shard_dir, partition.n_shards, shards=owned), saved)
    predictor = Predictor(model, features, partition, device, config.predict_block, owned=owned, comm=comm)
    queries = {
        "valid": np.asarray(ds.val_hr),
        "test-dev": np.asarray(ds.test_dev_hr),
        "test-challenge": np.asarray(ds.test_challenge_hr),
    }
    arrays, seconds = predict_splits(predictor, queries, args.top_k, config.predict_batch)
    if comm.rank != 0:
        return  # every worker holds the merged result; rank 0 writes it
    valid_mrr = mrr(pad_top10(arrays["valid_ids"]), np.asarray(ds.val_t))
    atomic.save_npz(args.out, **arrays)
    metrics = {
        "model": args.name or model_path.parent.name,
        "score_fn": config.score_fn,
        "distance": config.distance if model.scorer.distance else None,
        "loss": config.loss.type,
        "dim": config.dim,
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


def _evaluate(args) -> None:
    from kge.predict.evaluate_model import evaluate_model

    evaluate_model(
        args.model,
        args.root,
        args.shard_dir,
        args.out,
        args.arrays,
        name=args.name,
        splits=args.splits,
        heads=args.heads,
        samples=args.samples,
        top_k=args.top_k,
        query_batch=args.query_batch,
        seed=args.seed,
    )


def _results_model(results: str, name: str) -> Path:
    """RESULTS and a model name -> RESULTS/models/NAME/model.pt, or a one-line error naming the models present."""
    from kge.train.checkpoint import MODEL_NAME

    path = Path(results) / "models" / name / MODEL_NAME
    if not path.is_file():
        present = sorted(p.parent.name for p in (Path(results) / "models").glob(f"*/{MODEL_NAME}"))
        raise KgeInputError(
            f"{path}: no trained model {name!r} in {results}; finished models: {', '.join(present) or 'none'}"
        )
    return path


def _query(args) -> None:
    from kge.predict.inference import TrainedModel, format_table, frame_json

    if (args.head is None) == (args.tail is None):
        raise KgeInputError(
            "query: give exactly one of --head (to predict tails) or --tail (to predict heads) with --relation"
        )
    trained = TrainedModel(
        _results_model(args.results, args.model), shard_dir=args.shard_dir, root=args.root, device=args.device
    )
    if args.head is not None:
        frame = trained.predict_tails(args.head, args.relation, k=args.k, filter_known=args.filter_known)
        text = f"({args.head}, {args.relation}, ?)"
    else:
        frame = trained.predict_heads(
            args.relation, args.tail, k=args.k, filter_known=args.filter_known, heads=args.heads
        )
        text = f"(?, {args.relation}, {args.tail})"
    print(frame_json(frame) if args.json else format_table(frame, text))


def _export(args) -> None:
    from kge.predict.inference import TrainedModel, export_embeddings

    trained = TrainedModel(
        _results_model(args.results, args.model), shard_dir=args.shard_dir, root=args.root, device=args.device
    )
    path = export_embeddings(trained, args.out)
    print(
        f"kge export: {trained.num_entities} entities, {trained.num_relations} relations -> {path.parent}",
        file=sys.stderr,
    )


def register(sub) -> None:
    """Add this group's commands to the ``kge`` subparsers ``sub``."""
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

    p = sub.add_parser(
        "evaluate", help="filtered link-prediction evaluation of one model (both directions, all entities)"
    )
    p.add_argument("--model", required=True, help="model.pt")
    p.add_argument("--name", default=None)
    p.add_argument("--root", required=True)
    p.add_argument("--shard-dir", required=True)
    p.add_argument("--out", required=True, help="metrics .json")
    p.add_argument("--arrays", required=True, help="per-query ranks and filtered top-K lists .npz (for the ensemble)")
    p.add_argument("--splits", nargs="+", default=["valid", "test"], choices=["valid", "test"])
    p.add_argument(
        "--heads",
        default="auto",
        choices=["auto", "direct", "inverse"],
        help="head prediction: scored directly, or as tail prediction with the inverse relation (auto: inverse when trained with it)",
    )
    p.add_argument(
        "--samples",
        type=int,
        default=None,
        help="SAMPLED mode: rank among this many random candidates (not comparable with full ranking)",
    )
    p.add_argument("--top-k", type=int, default=100, help="width of the filtered top-K lists kept for the ensemble")
    p.add_argument(
        "--query-batch", type=int, default=None, help="queries scored at once (default: the model's predict_batch)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled mode")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.set_defaults(func=_evaluate)

    for name, help_text in (
        ("query", "top-k answers of (head, relation, ?) or (?, relation, tail) by label from a trained model"),
        ("export", "a trained model's entity and relation embeddings with their labels (Parquet and .npy)"),
    ):
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
            p.add_argument(
                "--filter-known", action="store_true", help="leave out answers of known train/valid/test triples"
            )
            p.add_argument(
                "--heads",
                choices=("auto", "direct", "inverse"),
                default="auto",
                help="head prediction: direct scoring, or the inverse relation of a model trained with "
                "inverse_relations (auto: inverse when the model has it)",
            )
            p.add_argument("--json", action="store_true", help="print JSON instead of a table")
            p.set_defaults(func=_query)
        else:
            p.add_argument("--out", required=True, help="output directory")
            p.set_defaults(func=_export)
