"""What a person sees while a run works: on a terminal a live bar with counts and ETA for each
step (model passes, warmup epochs); in a log (no terminal) a line per step and progress lines;
with -q nothing at all on stderr. The summary always goes to stdout."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys

import pytest
from conftest import RECIPES, cli

pytest.importorskip("torch")


def recipe(tmp_path, warmup: bool = False):
    models = f"  lm: {{path: {RECIPES}/models/tiny-lm, kind: causal-lm, max_length: 64"
    if warmup:
        models += ", warmup: {fraction: 0.5, epochs: 2, batch_size: 4, micro_batch_size: 4}"
        scores = "  s: {use: self_influence, model: lm, with: {batch_size: 8}}\n"
    else:
        scores = "  ppl: {use: perplexity, model: lm}\n"
    path = tmp_path / "r.yaml"
    path.write_text(f"""selectkit: 1
name: progress
data:
  pool: {{path: {RECIPES}/data/pool.jsonl, id: id, limit: {40 if warmup else 300}}}
models:
{models}}}
scores:
{scores}select:
  - use: topk
    with: {{score: {'s' if warmup else 'ppl'}, budget: 10}}
output: {{dir: {tmp_path / 'out'}, formats: [parquet], report: false}}
""")
    return path


def run_in_terminal(args, env) -> str:
    """Run a command with a pseudo-terminal as stdout and stderr; everything it drew, as text."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env={**env, "COLUMNS": "160",
                                                                                  "TERM": "xterm-256color"},
                            close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    proc.wait(timeout=300)
    os.close(master)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("warmup", [False, True], ids=["model-pass", "warmup"])
def test_a_terminal_shows_bars_with_eta(tmp_path, warmup):
    env = {**os.environ, "SELECTKIT_CACHE_DIR": str(tmp_path / "cache")}
    text = run_in_terminal([sys.executable, "-m", "selectkit", "run", str(recipe(tmp_path, warmup)),
                            "--shard-rows", "100" if not warmup else "20"], env)
    assert "ETA" in text and "━" in text  # a bar and the time left
    if warmup:
        assert "epoch 1/2 step" in text and "epoch 2/2 step" in text
    else:
        assert "3/3" in text or "2/3" in text  # shard counts of the pass
    assert "selected 10 of" in text


def test_a_log_gets_lines_and_quiet_gets_nothing(tmp_path):
    path = recipe(tmp_path)
    env = {"SELECTKIT_CACHE_DIR": str(tmp_path / "cache")}
    logged = cli("run", path, "--shard-rows", "100", env=env)
    assert logged.returncode == 0, logged.stderr
    assert "pass: forward lm over pool" in logged.stderr and "shard 3/3" in logged.stderr
    assert "selected 10 of 300" in logged.stdout and "selected" not in logged.stderr
    quiet = cli("run", "-q", path, "--shard-rows", "100", env={"SELECTKIT_CACHE_DIR": str(tmp_path / "c2")})
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
