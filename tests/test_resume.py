"""A run killed with SIGKILL at any point of a model pass, a warmup, a gradient pass or an
unlearning run, then run again, writes a selection byte-identical to an uninterrupted run:
finished shards (and epochs, and groups) are kept, the rest is computed, and every stochastic
step restores or reseeds all the state it depends on."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys

import pytest
from conftest import ROOT

pytest.importorskip("torch")

RECIPES = {
    "forward": """
models:
  lm: {{path: {root}/recipes/models/tiny-lm, kind: causal-lm, max_length: 96}}
scores:
  ppl: {{use: perplexity, model: lm}}
  mink: {{use: min_k_prob, model: lm}}
select:
  - use: topk
    with: {{score: mink, budget: 20%}}""",
    "less": """
models:
  lm:
    path: {root}/recipes/models/tiny-lm
    kind: causal-lm
    max_length: 64
    warmup: {{fraction: 0.25, epochs: 3, learning_rate: 2.0e-4, batch_size: 8, micro_batch_size: 4,
             lora: {{r: 4, alpha: 16, dropout: 0.2}}}}
scores:
  infl:
    use: influence.less
    model: lm
    targets: [politics]
    with: {{proj_dim: 256, combine: max, batch_size: 8}}
select:
  - use: topk
    with: {{score: infl, budget: 10%}}""",
    "untrac": """
models:
  lm: {{path: {root}/recipes/models/tiny-lm, kind: causal-lm, max_length: 64}}
scores:
  unlearn:
    use: unlearning.group
    model: lm
    targets: [politics]
    with: {{group_by: domain, steps: 2, eval_every: 1, max_target_examples: 16, batch_size: 4}}
select:
  - use: unlearning
    with: {{score: unlearn, group_by: domain, budget: 25%}}""",
}


def write_recipe(folder, kind: str):
    body = RECIPES[kind].format(root=ROOT)
    text = f"""
selectkit: 1
name: resume-{kind}
seed: 1
data:
  pool: {{path: {ROOT}/recipes/data/pool.jsonl, id: id, limit: 120}}
  targets:
    politics: {{path: {ROOT}/recipes/data/target_politics.jsonl, limit: 12}}
{body}
output: {{dir: out, formats: [parquet]}}
"""
    path = folder / f"{kind}.yaml"
    path.write_text(text)
    return path


def command(recipe, out, cache):
    env = {**os.environ, "SELECTKIT_CACHE_DIR": str(cache), "PYTHONUNBUFFERED": "1",
           "SELECTKIT_PROGRESS_EVERY": "0"}  # a line per unit: the kill points must not depend on speed
    args = [sys.executable, "-m", "selectkit", "run", str(recipe), "--out", str(out), "--shard-rows", "40"]
    return args, env


def run(recipe, out, cache) -> subprocess.CompletedProcess:
    args, env = command(recipe, out, cache)
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result


def kill_at(recipe, out, cache, marker: str, nth: int) -> list[str]:
    """Run until the `nth` progress line containing `marker`, then SIGKILL the process."""
    args, env = command(recipe, out, cache)
    proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    seen, lines = 0, []
    try:
        for line in proc.stderr:
            lines.append(line.rstrip())
            if marker in line:
                seen += 1
                if seen >= nth:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, lines[-5:])
    return lines


def statuses(out) -> dict[str, str]:
    return {s["step"]: s["status"] for s in json.loads((out / "manifest.json").read_text())["stages"]}


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """Uninterrupted runs, one per recipe, each with a cache of its own."""
    root = tmp_path_factory.mktemp("reference")
    out = {}
    for kind in RECIPES:
        recipe = write_recipe(root, kind)
        run(recipe, root / f"out-{kind}", root / f"cache-{kind}")
        out[kind] = (root / f"out-{kind}" / "selection.parquet").read_bytes()
    return out


# (recipe, marker in the progress lines, which occurrence to kill at, the step that must resume)
POINTS = [
    ("forward", "forward lm over pool", 2, "pass:forward:lm:pool"),
    ("less", "epoch 2/3 step", 1, "pass:train:lm:warmup"),
    ("less", "epoch 3/3 step", 2, "pass:train:lm:warmup"),
    ("less", "gradient shard", 2, None),
    ("untrac", "group 2/", 1, None),
]


@pytest.mark.parametrize(("kind", "marker", "nth", "resumed"), POINTS,
                         ids=[f"{k}-{m.split()[0]}-{n}" for k, m, n, _ in POINTS])
def test_sigkill_then_rerun_is_byte_identical(references, tmp_path, kind, marker, nth, resumed):
    recipe = write_recipe(tmp_path, kind)
    cache, out = tmp_path / "cache", tmp_path / "out"
    kill_at(recipe, out, cache, marker, nth)
    assert not (out / "selection.parquet").exists()  # killed before anything was written
    run(recipe, out, cache)
    assert (out / "selection.parquet").read_bytes() == references[kind]
    if resumed:
        assert statuses(out)[resumed] == "resumed", statuses(out)


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)])
def test_kill_at_a_random_point_of_a_model_recipe(references, tmp_path, seed):
    """Kill after a random number of progress lines (any step: the index, a shard, an epoch, a gradient
    shard), twice in a row, then finish: same bytes as the uninterrupted run."""
    recipe = write_recipe(tmp_path, "less")
    cache, out = tmp_path / "cache", tmp_path / "out"
    rng = random.Random(seed)
    for _ in range(2):
        kill_at(recipe, out, cache, "", rng.randint(2, 12))
    run(recipe, out, cache)
    assert (out / "selection.parquet").read_bytes() == references["less"]
