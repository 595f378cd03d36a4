"""The `selectkit` command: a thin layer over the Python API (selectkit.api)."""

from selectkit.cli.commands import main

__all__ = ["main"]
