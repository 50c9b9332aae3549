"""`kge quantise` and the technique reports (`quantise-report`, `study-report`, `sweep-report`)."""

from __future__ import annotations

import json


def _quantize(args) -> None:
    import torch

    from kge.techniques.quantization import quantize_model

    generator = torch.Generator().manual_seed(args.seed) if args.stochastic else None
    quantize_model(
        args.model,
        args.out,
        args.format,
        args.scaling,
        args.feature_format,
        args.feature_scaling,
        shard_dir=args.shard_dir,
        generator=generator,
    )


def _write_report(args, table: str, data) -> None:
    """A report command's outputs: the data as --json, the Markdown table as --out (both atomic), the table on stdout."""
    from kge.common.tables import write_report

    write_report(args.out, args.json, table, data)
    print(table)


def _quantize_report(args) -> None:
    from kge.techniques.quantization import quantize_report

    _write_report(args, *quantize_report(args.baselines, args.variants))


def _study_report(args) -> None:
    from kge.techniques.studies import study_report

    _write_report(args, *study_report(args.name, args.baseline, args.variants, args.results, claim=args.claim))


def _sweep_report(args) -> None:

    from kge.techniques.studies import sweep_grid, sweep_report

    spec = json.loads(args.spec)
    grid = sweep_grid(args.name, spec, {spec["base"]: json.loads(args.base_settings)})
    _write_report(args, *sweep_report(args.name, spec, grid, args.results, plot=args.plot))


def register(sub) -> None:
    """Add this group's commands to the ``kge`` subparsers ``sub``."""
    p = sub.add_parser(
        "quantise",
        aliases=["quantize"],
        help="a model whose entity rows (and features) are stored in FP8/int8/16-bit (simulated: fp32 rows written)",
    )
    p.add_argument("--model", required=True, help="model.pt")
    p.add_argument("--out", required=True, help="new model directory (model.pt, entities/, quantization.json)")
    p.add_argument(
        "--format",
        required=True,
        help="entity table format: float32, bfloat16, float16, float8_e4m3fn, "
        "float8_e4m3fnuz, float8_e5m2, float8_e5m2fnuz or int8",
    )
    p.add_argument(
        "--scaling",
        required=True,
        help="none, tensor (one fp32 scale) or row (one fp32 scale per entity); int8 needs one",
    )
    p.add_argument(
        "--feature-format", default=None, help="feature format (default: as stored, float16); needs --shard-dir"
    )
    p.add_argument("--feature-scaling", default=None, help="none, tensor or row (with --feature-format)")
    p.add_argument("--shard-dir", default=None, help="the model's shard directory (its features)")
    p.add_argument(
        "--stochastic", action="store_true", help="stochastic rounding of the table (features: always nearest)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --stochastic")
    p.set_defaults(func=_quantize)

    p = sub.add_parser("quantise-report", help="MRR and bytes per entity of quantized models beside their originals")
    p.add_argument("--baselines", nargs="+", required=True, help="kge predict metrics of the original models")
    p.add_argument(
        "--variants", nargs="+", required=True, help="kge predict metrics of the quantized copies (<model>.<variant>)"
    )
    p.add_argument("--out", required=True, help="Markdown table")
    p.add_argument("--json", required=True, help="the same rows as JSON")
    p.set_defaults(func=_quantize_report)
    p = sub.add_parser(
        "study-report", help="a technique study's variants beside its baseline: MRR, parameters, time, loss"
    )
    p.add_argument("--name", required=True, help="the study (config key techniques.studies.<name>)")
    p.add_argument("--baseline", required=True, help="the baseline model")
    p.add_argument("--variants", nargs="+", required=True, help="the variant models")
    p.add_argument("--claim", help="what the technique's paper claims (a line of the report)")
    p.add_argument("--results", required=True, help="the run's results_dir (predictions/ and models/ are read)")
    p.add_argument("--out", required=True, help="Markdown table")
    p.add_argument("--json", required=True, help="the same rows as JSON")
    p.set_defaults(func=_study_report)
    p = sub.add_parser(
        "sweep-report", help="batch size x learning rate sweep: heat map of validation MRR, stable LR band"
    )
    p.add_argument("--name", required=True, help="the sweep (config key techniques.sweeps.<name>)")
    p.add_argument("--spec", required=True, help="the sweep's config as JSON")
    p.add_argument(
        "--base-settings", required=True, help="the base model's settings as JSON (for its steps and batch size)"
    )
    p.add_argument("--results", required=True, help="the run's results_dir (predictions/ is read)")
    p.add_argument("--out", required=True, help="Markdown table")
    p.add_argument("--json", required=True, help="the same as JSON")
    p.add_argument("--plot", required=True, help="heat map (PNG)")
    p.set_defaults(func=_sweep_report)
