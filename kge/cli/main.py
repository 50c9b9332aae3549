"""The ``kge`` command: every step of the pipeline, called by the Snakemake rules through shell."""

from __future__ import annotations

import argparse
import sys

from kge.cli import data, ensemble, predict, report, techniques, train
from kge.common.errors import KgeInputError

GROUPS = (data, train, predict, ensemble, techniques, report)  # in pipeline order, as `kge --help` lists them


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
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
        from kge.dist.device import set_threads

        set_threads(args.threads)
    try:
        args.func(args)
    except KgeInputError as err:
        print(f"kge: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
