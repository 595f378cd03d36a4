"""Registers the built-in local executor."""

from selectkit.execute import LocalExecutor
from selectkit.hookspecs import hookimpl


@hookimpl
def register_executors(register):
    register(LocalExecutor)
