"""`kge data ...` (get a dataset into the OGB layout) and `kge shard`."""

from __future__ import annotations

import json


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
    import_triples(
        args.train,
        args.valid,
        args.test,
        args.out,
        fmt=args.format,
        feature_dim=args.feature_dim,
        entity_features=args.entity_features,
        seed=args.seed,
    )


def _data_example(args) -> None:
    from kge.data.example import write_example

    paths = write_example(args.out, seed=args.seed, people=args.people)
    print(" ".join(str(p) for p in paths.values()))


def _data_check(args) -> None:
    from kge.data.layout import open_dataset

    ds = open_dataset(args.root, check=True, check_features="full" if args.full else "sampled")
    print(
        json.dumps(
            {
                "features_checked": "all rows" if args.full else "sampled",
                "num_entities": ds.num_entities,
                "num_relations": ds.num_relations,
                "train": int(ds.train_hrt.shape[0]),
                "valid": int(ds.val_hr.shape[0]),
                "test-dev": int(ds.test_dev_hr.shape[0]),
                "test-challenge": int(ds.test_challenge_hr.shape[0]),
            }
        )
    )
    if args.stamp:
        from kge.common import atomic

        atomic.save_text(args.stamp, "ok\n")


def _shard(args) -> None:
    from kge.bess.shard import shard_dataset
    from kge.data.layout import open_dataset

    # Ids and shapes are re-checked here; the full feature scan (140 GB on the real data) is `kge data check`.
    open_dataset(args.root, check=True, check_features=False)
    shard_dataset(args.root, args.out, args.shards, seed=args.seed)


def register(sub) -> None:
    """Add this group's commands to the ``kge`` subparsers ``sub``."""
    data = sub.add_parser("data", help="get a dataset into the OGB WikiKG90Mv2 layout").add_subparsers(
        dest="data_command", required=True
    )
    p = data.add_parser("mini", help="generate the embedded miniature of WikiKG90Mv2")
    p.add_argument("--out", required=True, help="ROOT; the dataset goes to ROOT/wikikg90m-v2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--scale", type=float, default=1.0, help="multiplies entities and triples (queries stay 15000/15000/10000)"
    )
    p.set_defaults(func=_data_mini)
    p = data.add_parser("scaled", help="stream a WikiKG90Mv2-shaped graph at 1/F of the real size (real proportions)")
    p.add_argument(
        "--fraction", type=float, required=True, help="F >= 1: E = 91,230,610/F entities, T = 601,062,811/F triples"
    )
    p.add_argument("--out", required=True, help="ROOT; the dataset goes to ROOT/wikikg90m-v2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--chunk", type=int, default=2_000_000, help="training rows per written window (memory bound; output unchanged)"
    )
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
    p.add_argument(
        "--entity-features",
        default=None,
        help="entity features keyed by label: Parquet (label + vector "
        "columns) or .npz (labels, features); default: uninformative random rows, train with features.use: false",
    )
    p.add_argument(
        "--feature-dim",
        type=int,
        default=None,
        help="width of the random features when no --entity-features (default: the importer's narrow default)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random features")
    p.set_defaults(func=_data_import)
    p = data.add_parser(
        "example", help="write a small labelled example graph (train/valid/test TSV) to try `dataset: import`"
    )
    p.add_argument("--out", required=True, help="folder for train.tsv, valid.tsv, test.tsv")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--people", type=int, default=2000, help="size of the world (about 7 triples per person)")
    p.set_defaults(func=_data_example)
    p = data.add_parser("check", help="validate every array of a dataset and print its sizes")
    p.add_argument("--root", required=True)
    p.add_argument("--stamp", help="write this file when the check passes")
    p.add_argument(
        "--full",
        action="store_true",
        help="scan every feature row for NaN/inf (a full read: hours on the real 140 GB file); "
        "default: every id, and the features on 16 blocks of 64 MiB",
    )
    p.set_defaults(func=_data_check)

    p = sub.add_parser("shard", help="Parquet buckets by (head shard, tail shard) + per-shard features")
    p.add_argument("--root", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--shards", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_shard)
