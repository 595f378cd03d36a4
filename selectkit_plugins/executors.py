"""Registers the built-in local executor."""

from selectkit.contract.hookspecs import hookimpl
from selectkit.execution.local import LocalExecutor


@hookimpl
def register_executors(register):
    register(LocalExecutor)
