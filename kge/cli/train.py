"""`kge config model`, `kge recipe`, `kge train` and `kge reshard`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kge.common.errors import KgeInputError
from kge.dist.launch import join_workers


def _model_config(args) -> None:
    from kge.common import atomic
    from kge.config import resolve_model_config

    try:
        overrides = json.loads(args.json)
    except json.JSONDecodeError as err:
        raise KgeInputError(f"model '{args.name}': settings are not valid JSON ({err})") from None
    atomic.save_json(args.out, resolve_model_config(overrides, where=f"config.yaml models.{args.name}").to_dict())


def _recipe(args) -> None:
    from kge.ensemble.recipe import write_recipe

    config = write_recipe(args.json, args.out)
    print(f"kge recipe: {len(config['models'])} models -> {args.out}", file=sys.stderr)


def _load_model_config(path: str):
    from kge.config import resolve_model_config

    p = Path(path)
    if not p.exists():
        raise KgeInputError(f"{p}: missing model config")
    return resolve_model_config(json.loads(p.read_text()), where=str(p))


def _train(args) -> None:
    from kge.data.layout import open_dataset
    from kge.predict.predictor import curve_evaluator
    from kge.train.trainer import train

    config = _load_model_config(args.config)
    if args.steps:
        config = config.replace(steps=args.steps)
    comm = join_workers(config.workers, config.device, args.threads, args.max_restarts)
    ds = open_dataset(args.root, check=False)
    evaluator = curve_evaluator(ds.val_hr, ds.val_t, ds.train_hrt, config.validate_queries, seed=config.seed)
    train(config, args.shard_dir, args.out, evaluator=evaluator, comm=comm)


def _reshard(args) -> None:
    from kge.train.reshard import reshard

    what = reshard(args.model_dir, args.from_shards, args.to_shards, args.out)
    print(f"kge reshard: wrote the {what} of {args.model_dir} for {args.to_shards} to {args.out}")


def register(sub) -> None:
    """Add this group's commands to the ``kge`` subparsers ``sub``."""
    cfg = sub.add_parser("config", help="model configurations").add_subparsers(dest="config_command", required=True)
    p = cfg.add_parser("model", help="validate one model's settings, fill defaults, write JSON")
    p.add_argument("--name", required=True)
    p.add_argument("--json", required=True, help="the model's settings as JSON")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_model_config)

    p = sub.add_parser("recipe", help="write the 85-model recipe config from the submission's configs JSON")
    p.add_argument("--json", required=True, help="wikiwiki-85-configs-and-results.json (column-oriented)")
    p.add_argument(
        "--out", required=True, help="Snakemake config to write, e.g. workflow/ensembles/wikikg90mv2-85.yaml"
    )
    p.set_defaults(func=_recipe)
    p = sub.add_parser("train", help="train one model (resumes from its checkpoint)")
    p.add_argument("--config", required=True, help="model config JSON (from `kge config model`)")
    p.add_argument("--root", required=True)
    p.add_argument("--shard-dir", required=True)
    p.add_argument("--out", required=True, help="model directory")
    p.add_argument("--steps", type=int, default=None, help="override the configured number of steps")
    p.add_argument(
        "--threads", type=int, default=0, help="torch threads (0 = torch default); split among local workers"
    )
    p.add_argument("--max-restarts", type=int, default=3, help="workers > 1: times torchrun restarts a failed group")
    p.set_defaults(func=_train)

    p = sub.add_parser("reshard", help="convert a checkpoint (or a trained model) to another entity partition / D")
    p.add_argument("--model-dir", required=True, help="model directory with checkpoint/ or model.pt")
    p.add_argument("--from-shards", required=True, help="shard directory it was trained on")
    p.add_argument("--to-shards", required=True, help="shard directory of the new partition")
    p.add_argument("--out", required=True, help="new model directory")
    p.set_defaults(func=_reshard)
