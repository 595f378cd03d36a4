"""The Ray executor: the same plan, the same steps, the same cache keys, on a Ray cluster.

What runs where:
- the pool index and rowwise scorers (DSIR, length, ...): one Ray task per shard;
- sharded model passes (forward features, per-example gradients): a Ray Data actor pool over
  the missing shards (`map_batches(..., batch_size=1, compute=ActorPoolStrategy(size=N))`);
  each actor loads the model once, reads its own row range, writes its shard into the cache and
  returns a status row: features never pass through the object store;
- everything global (training, curvature, normalizers, selectors, outputs): on the driver.

Shards are selectkit's fixed row ranges (never Ray's blocks), so a Ray run writes the same
artifacts as a local one and its selection is byte-identical. Workers must see the cache folder
(a local cluster does; on several machines use a shared file system for SELECTKIT_CACHE_DIR).
A killed worker's shard is retried by Ray; a killed driver's run resumes from the cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from selectkit.errors import SelectkitError, require
from selectkit.execution.local import ModelLoader, Run, execute, pass_context, shard_score
from selectkit.execution.progress import as_reporter
from selectkit.planning.steps import PassPayload, ReadPayload, ScorePayload, Step

MIN_RAY = (2, 57)


def _ray():
    ray = require("ray", "ray", "executor: ray")
    version = tuple(int(p) for p in ray.__version__.split(".")[:2])
    if version < MIN_RAY:
        raise SelectkitError(f"executor: ray needs ray >= {'.'.join(map(str, MIN_RAY))}, found {ray.__version__}",
                             hint="pip install 'selectkit[ray]'")
    return ray


def run_on_ray(plan: Any, progress: Any = None, options: dict | None = None) -> Any:
    """Run `plan` with its sharded steps on Ray: the cluster at `options['address']` or RAY_ADDRESS,
    else a local one started (and stopped) here."""
    ray = _ray()
    options = dict(options or {})
    started = False
    if not ray.is_initialized():
        address = options.get("address") or os.environ.get("RAY_ADDRESS")
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address:
            kwargs["address"] = address
        ray.init(**kwargs)
        started = True
    try:
        return execute(RayRun(plan, as_reporter(progress), options))
    finally:
        if started:
            ray.shutdown()


def describe(step: Step) -> str:
    """How a step runs on Ray (for `selectkit plan --executor ray`)."""
    if isinstance(step.payload, ReadPayload) and step.shards:
        return f"{step.shards} Ray task(s), one per shard"
    if isinstance(step.payload, PassPayload) and step.shards and step.payload.provider.parallel:
        gpus = "1 GPU" if step.resources.device == "cuda" else "0.5 CPU"
        return f"Ray Data actor pool over {step.shards} shard(s), {gpus} per actor, model loaded once per actor"
    if isinstance(step.payload, ScorePayload) and step.shards:
        return f"{step.shards} Ray task(s) per phase (statistics, values), merged on the driver in shard order"
    return "driver"


@dataclass
class PassJob:
    """What an actor needs to compute shards of one pass step (plain data, pickled once per actor)."""

    step: Step
    cache_root: str
    pool: Any  # SourceSpec
    targets: dict[str, Any]
    seed: int
    options: dict[str, Any]
    inputs: dict[Any, Any] = field(default_factory=dict)


class ShardWorker:
    """A Ray Data actor: loads the model on first use, then computes one shard per call."""

    def __init__(self, job: PassJob):
        from selectkit.data.pool import Pool, Table
        from selectkit.storage.cache import Cache

        self.job = job
        pool = Pool(job.pool, Table(job.pool))
        loader = ModelLoader(bool(job.options.get("trust_remote_code")))
        self.ctx = pass_context(Cache(job.cache_root), job.step, pool, job.targets, job.seed, loader,
                                job.inputs, job.options)

    def __call__(self, batch: dict) -> dict:
        payload = self.job.step.payload
        done = []
        for index in batch["shard"]:
            payload.provider.run(payload.work, self.ctx, [int(index)])
            done.append(int(index))
        return {"shard": done}


def _index_task(spec: Any, cache_root: str, key: str, count: int, index: int, bounds: tuple[int, int]) -> int:
    from selectkit.data.pool import Table, index_into
    from selectkit.storage.cache import Cache

    index_into(Cache(cache_root).sharded("pool", key, count), Table(spec), index, bounds)
    return index


def _score_task(node: Any, phase: str, spec: Any, bounds: tuple[int, int], base: dict, stats: Any,
                cache_root: str, key: str, count: int, index: int) -> int:
    from selectkit.data.pool import Table, read_shard
    from selectkit.storage.cache import Cache

    entry = Cache(cache_root).sharded("score-parts", key, count)
    entry.write(index, shard_score(node, phase, read_shard(Table(spec), *bounds), base, stats))
    return index


class RayRun(Run):
    """A local Run whose shard loops are Ray tasks and actors."""

    def _wait(self, step_id: str, refs: list, unit: str) -> None:
        ray = _ray()
        pending, done = list(refs), 0
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            ray.get(ready)  # raises the worker's error, if any
            done += 1
            self.reporter.advance(step_id, done, len(refs), unit=unit)

    def map_index(self, step, table, missing):
        from selectkit.data.pool import shard_ranges

        ray = _ray()
        task = ray.remote(num_cpus=1, max_retries=3)(_index_task)
        ranges = shard_ranges(table.rows, table.spec.shard_rows)
        refs = [task.remote(table.spec, self.cache.location, step.key, step.shards, i, ranges[i]) for i in missing]
        self._wait(step.id, refs, "index shard")

    def map_scores(self, step, phase, entry, missing, base, stats):
        ray = _ray()
        task = ray.remote(num_cpus=1, max_retries=3)(_score_task)
        node = step.payload.node
        spec = self.pool.spec
        base_ref, stats_ref = ray.put(base), ray.put(stats)
        refs = [task.remote(node, phase, spec, self.pool.shard_ranges[i], base_ref, stats_ref, self.cache.location,
                            entry.key, entry.count, i) for i in missing]
        self._wait(step.id, refs, f"{phase} shard")

    def map_pass(self, step, missing):
        ray = _ray()
        job = PassJob(step, self.cache.location, self.pool.spec, self.targets, self.plan.seed,
                      {k: v for k, v in self.options.items() if k != "device"}, self._inputs(step))
        gpus = float(self.options.get("gpus_per_actor") or (1 if _cluster_gpus(ray) else 0))
        size = int(self.options.get("actors") or max(1, min(len(missing), _actor_slots(ray, gpus))))
        remote_args: dict[str, Any] = {"max_restarts": 3, "max_task_retries": 3}
        data = ray.data.from_items([{"shard": i} for i in missing])
        out = data.map_batches(ShardWorker, batch_size=1, fn_constructor_kwargs={"job": job},
                               compute=ray.data.ActorPoolStrategy(size=size),
                               num_gpus=gpus or None, num_cpus=None if gpus else 0.5, **remote_args)
        for done, _row in enumerate(out.iter_rows(), 1):
            self.reporter.advance(step.id, done, len(missing), unit="shard")


def _cluster_gpus(ray) -> float:
    return float(ray.cluster_resources().get("GPU", 0))


def _actor_slots(ray, gpus: float) -> int:
    if gpus:
        return max(1, int(_cluster_gpus(ray) / gpus))
    return max(1, int(ray.cluster_resources().get("CPU", 1)))
