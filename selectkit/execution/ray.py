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
        connect(ray, kwargs, float(options.get("connect_timeout") or CONNECT_TIMEOUT))
        started = True
    try:
        return execute(RayRun(plan, as_reporter(progress), options))
    finally:
        if started:
            ray.shutdown()


CONNECT_TIMEOUT = 30.0  # seconds to reach a cluster (execution.connect_timeout)
_PROBE_EVERY = 1.0


def connect(ray: Any, kwargs: dict[str, Any], timeout: float) -> None:
    """ray.init within `timeout` seconds: a malformed address, a host that does not resolve, a port
    where nothing answers (probed over TCP, retried until the deadline) or an init that does not
    finish in time is one SelectkitError naming the address, never a retry loop or a traceback."""
    import socket
    import threading
    import time

    from selectkit.recipe.spec import ray_address_problem

    address = kwargs.get("address")
    hint = ("check the address; start a cluster there (ray start --head), or leave --address out for a local "
            "one; execution.connect_timeout sets how long to try")
    deadline = time.monotonic() + timeout
    if address and address not in ("auto", "local"):
        problem = ray_address_problem(address)
        if problem:
            raise SelectkitError(f"executor: ray: {problem}", hint="give --address HOST:PORT, ray://HOST:PORT or auto")
        host, _, port = address.removeprefix("ray://").rpartition(":")
        host = host.strip("[]")
        last = ""
        while True:
            try:
                infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
            except (socket.gaierror, UnicodeError) as exc:
                raise SelectkitError(f"executor: ray: cannot resolve the host of Ray address {address!r}: "
                                     f"{getattr(exc, 'strerror', None) or exc}", hint=hint) from None
            try:
                family, kind, proto, _, where = infos[0]
                with socket.socket(family, kind, proto) as probe:
                    probe.settimeout(max(0.1, min(_PROBE_EVERY * 3, deadline - time.monotonic())))
                    probe.connect(where)
                break
            except OSError as exc:
                last = exc.strerror or str(exc) or type(exc).__name__
            if time.monotonic() + _PROBE_EVERY > deadline:
                raise SelectkitError(f"executor: ray: no Ray cluster answers at {address!r} (tried for "
                                     f"{timeout:g} s: {last})", hint=hint)
            time.sleep(_PROBE_EVERY)
    done: dict[str, Any] = {}
    if not address or address == "local":  # a new local cluster: started here, in this thread
        try:
            ray.init(**kwargs)
        except Exception as exc:  # noqa: BLE001 - one line, said below
            done["error"] = exc
        return _raise(done.get("error"), address, hint)

    def init() -> None:
        try:
            ray.init(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller's thread
            done["error"] = exc
        done.setdefault("ok", True)

    worker = threading.Thread(target=init, name="selectkit-ray-init", daemon=True)
    worker.start()
    worker.join(max(1.0, deadline - time.monotonic()))
    if worker.is_alive():
        raise SelectkitError(f"executor: ray: the Ray cluster at {address!r} did not accept the connection within "
                             f"{timeout:g} s (something answers there, but not a Ray cluster's GCS?)", hint=hint)
    _raise(done.get("error"), address, hint)


def _raise(error: BaseException | None, address: str | None, hint: str) -> None:
    if error is not None:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        what = f"cannot join the Ray cluster at {address!r}" if address and address != "local" else \
            "cannot start a local Ray cluster"
        raise SelectkitError(f"executor: ray: {what}: {reason}", hint=hint) from None


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
