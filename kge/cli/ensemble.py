"""`kge ensemble`, `kge evaluate-ensemble` and `kge submit`."""

from __future__ import annotations


def _ensemble(args) -> None:
    from kge.ensemble.run import run_ensemble

    run_ensemble(
        args.root,
        args.predictions,
        args.out_dir,
        power=args.power,
        top_k=args.top_k,
        tune=args.tune,
        powers=args.powers,
        weight_exponents=args.weight_exponents,
    )


def _evaluate_ensemble(args) -> None:
    from kge.ensemble.evaluation import run_evaluation_summary

    run_evaluation_summary(
        args.evaluations,
        args.out_dir,
        powers=args.powers,
        exponents=args.weight_exponents,
        power=args.power,
        tune=not args.no_tune,
        seed=args.seed,
        root=args.root,
    )


def _submit(args) -> None:
    from kge.ensemble.submission import run_submission

    run_submission(args.root, args.ensemble_dir, args.out_dir, answers=args.answers)


def register(sub) -> None:
    """Add this group's commands to the ``kge`` subparsers ``sub``."""
    p = sub.add_parser("ensemble", help="rank-power mean ensemble of model predictions")
    p.add_argument("--root", required=True)
    p.add_argument("--predictions", nargs="+", required=True, help="predictions .npz (a .json of metrics beside each)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--power", type=float, default=-0.5)
    p.add_argument("--top-k", type=int, default=100)
    p.add_argument("--tune", action="store_true", help="choose the power with the best validation MRR")
    p.add_argument("--powers", type=float, nargs="+", default=[-2.0, -1.5, -1.0, -0.75, -0.5, -0.25, 0.5, 1.0])
    p.add_argument(
        "--weight-exponents",
        type=float,
        nargs="+",
        default=[0.0],
        help="member weights (MRR/best)^g tried with --tune; 0 = the RECIPE's equal weights",
    )
    p.set_defaults(func=_ensemble)

    p = sub.add_parser(
        "evaluate-ensemble", help="rank-power ensemble under the filtered protocol + the evaluation summary table"
    )
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
