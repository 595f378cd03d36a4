"""The built-in executors, registered through `register_executors` like any plugin's: `local` (this
process, the devices it has) and `ray` (the same plan on a cluster). Registering them costs nothing:
each imports its machinery (selectkit.execution.local, .ray) when it runs."""

from __future__ import annotations

from typing import Any, ClassVar

from selectkit.contract.hookspecs import hookimpl


class Executor:
    """Runs a compiled Plan and writes its outputs; returns the RunResult."""

    name: ClassVar[str]

    def run(self, plan: Any, progress: Any = None, options: dict | None = None) -> Any:
        raise NotImplementedError  # pragma: no cover


class LocalExecutor(Executor):
    """One process; uses the devices this machine has."""

    name = "local"

    def run(self, plan: Any, progress: Any = None, options: dict | None = None) -> Any:
        from selectkit.execution.local import Run, execute
        from selectkit.execution.progress import as_reporter

        return execute(Run(plan, as_reporter(progress), dict(options or {})))


class RayExecutor(Executor):
    """Runs a plan's sharded steps as Ray tasks and actors; the driver merges in shard order."""

    name = "ray"

    def run(self, plan: Any, progress: Any = None, options: dict | None = None) -> Any:
        from selectkit.execution.ray import run_on_ray

        return run_on_ray(plan, progress, options)

    @staticmethod
    def describe(step: Any) -> str:
        """How a step runs on Ray (for `selectkit plan --executor ray`)."""
        from selectkit.execution.ray import describe

        return describe(step)


@hookimpl
def register_executors(register):
    register(LocalExecutor)
    register(RayExecutor)
