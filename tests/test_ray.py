"""`executor: ray` on a real local Ray cluster (one per test session): every shipped recipe gives a
selection.parquet byte-identical to the local executor's; a worker killed with SIGKILL in the
middle of a model pass is retried and a killed driver resumes from the cache, both ending in the
same bytes; a component that cannot run distributed is refused before any compute, at its line.

Marked `ray` (left out of the default run, which must stay short); `.ci/run` runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import RECIPES, cli

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

RECIPE_FILES = sorted(RECIPES.glob("*.yaml"))


@pytest.fixture(scope="session")
def cluster():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    context = ray.init(num_cpus=4, include_dashboard=False, object_store_memory=512 * 1024**2, _temp_dir=temp,
                       log_to_driver=False)
    yield context.address_info["gcs_address"]
    ray.shutdown()


def run(recipe, out, cache, *args, address=None, check=True):
    extra = ["--executor", "ray", "--address", address] if address else []
    result = cli("run", "-q", recipe, "--out", out, *args, *extra, env={"SELECTKIT_CACHE_DIR": str(cache)})
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.mark.parametrize("recipe", RECIPE_FILES, ids=lambda p: p.stem)
def test_every_recipe_is_byte_identical_on_ray(cluster, recipe, tmp_path):
    args = ("--limit", "160", "--shard-rows", "64")
    run(recipe, tmp_path / "local", tmp_path / "c-local", *args)
    run(recipe, tmp_path / "ray", tmp_path / "c-ray", *args, address=cluster)
    local = (tmp_path / "local" / "selection.parquet").read_bytes()
    assert (tmp_path / "ray" / "selection.parquet").read_bytes() == local


def _pass_recipe(folder: Path) -> Path:
    path = folder / "pass.yaml"
    path.write_text(f"""
selectkit: 1
name: ray-pass
data:
  pool: {{path: {RECIPES}/data/pool.jsonl, id: id, limit: 400}}
models:
  lm: {{path: {RECIPES}/models/tiny-lm, kind: causal-lm, max_length: 128}}
scores:
  ppl: {{use: perplexity, model: lm}}
select:
  - use: topk
    with: {{score: ppl, budget: 10%}}
output: {{dir: out, formats: [parquet], report: false}}
""")
    return path


def _shard_workers() -> list[int]:
    """PIDs of the Ray actors computing pass shards."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"ShardWorker" in cmd or b"MapWorker(MapBatches(ShardWorker" in cmd:
                pids.append(int(entry.name))
    return pids


def _finished_shards(cache: Path) -> int:
    return len(list(cache.glob("passes/*/shard-*/meta.json")))


def test_killed_worker_is_retried_and_the_result_is_the_same(cluster, tmp_path):
    recipe = _pass_recipe(tmp_path)
    run(recipe, tmp_path / "local", tmp_path / "c-local", "--shard-rows", "25")
    env = {**os.environ, "SELECTKIT_CACHE_DIR": str(tmp_path / "c-ray")}
    args = [sys.executable, "-m", "selectkit", "run", "-q", str(recipe), "--out", str(tmp_path / "ray"),
            "--shard-rows", "25", "--executor", "ray", "--address", cluster]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        workers = _shard_workers()
        if workers and _finished_shards(tmp_path / "c-ray") >= 2 and killed is None:
            killed = workers[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.2)
    out, err = proc.communicate(timeout=300)
    assert killed is not None, "no shard worker was seen running"
    assert proc.returncode == 0, err
    local = (tmp_path / "local" / "selection.parquet").read_bytes()
    assert (tmp_path / "ray" / "selection.parquet").read_bytes() == local


def test_killed_driver_resumes_from_the_cache(cluster, tmp_path):
    recipe = _pass_recipe(tmp_path)
    run(recipe, tmp_path / "local", tmp_path / "c-local", "--shard-rows", "25")
    cache = tmp_path / "c-ray"
    env = {**os.environ, "SELECTKIT_CACHE_DIR": str(cache)}
    args = [sys.executable, "-m", "selectkit", "run", "-q", str(recipe), "--out", str(tmp_path / "ray"),
            "--shard-rows", "25", "--executor", "ray", "--address", cluster]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while proc.poll() is None and _finished_shards(cache) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = _finished_shards(cache)
    assert 0 < done < 16, done  # killed during the pass
    result = run(recipe, tmp_path / "ray", cache, "--shard-rows", "25", address=cluster)
    assert result.returncode == 0
    assert (tmp_path / "ray" / "selection.parquet").read_bytes() == \
        (tmp_path / "local" / "selection.parquet").read_bytes()


def test_plan_shows_how_each_step_runs_on_ray(tmp_path):
    recipe = _pass_recipe(tmp_path)
    result = cli("plan", recipe, "--executor", "ray", "--shard-rows", "100")
    assert result.returncode == 0, result.stderr
    assert "runs: Ray Data actor pool over 4 shard(s)" in result.stdout
    assert "runs: 4 Ray task(s), one per shard" in result.stdout
    assert "runs: driver" in result.stdout


def test_a_component_that_cannot_run_distributed_is_refused_at_its_line(tmp_path):
    from selectkit.api import validate
    from selectkit.contract.components import Score, Scorer
    from selectkit.contract.registry import load_registry
    from selectkit.errors import RecipeErrors

    class LocalOnly(Scorer):
        """Keeps state in this process."""

        name = "local_only"
        distributed = False
        distributed_reason = "it keeps a process-wide table"

        def run(self, ctx):
            return Score(ctx.pool.token_counts.astype(float))

    registry = load_registry()
    registry._register("scorers", LocalOnly, "tests", "tests")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""selectkit: 1
name: local-only
data:
  pool: {{path: {RECIPES}/data/pool.jsonl, id: id}}
scores:
  mine:
    use: local_only
select:
  - use: topk
    with: {{score: mine, budget: 10}}
execution: {{executor: ray}}
""")
    with pytest.raises(RecipeErrors) as info:
        validate(recipe, registry)
    (error,) = info.value.errors
    assert error.location.line == 7 and "cannot run on executor 'ray': it keeps a process-wide table" in str(error)
