"""The ``kge`` command."""

from kge.cli.main import main

__all__ = ["main"]
