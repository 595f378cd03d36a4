"""Quad's lazy oracle: cluster_bandit over an influence reward computed for the whole pool (eager,
today's default) against the same reward marked `lazy: true` (computed only at the bandit's probes,
one batch per round), on a pool where the oracle is the expensive part.

The oracle is `influence.tracin` (projected per-example gradients of the demo's tiny LM, 1024 dims)
toward the demo's politics target; the arms are k-means clusters of the same LM's pooled embeddings.
The pool is the demo pool repeated with fresh ids up to --rows. Each variant runs in a fresh cache
(so each pays its own embedding pass and target gradients); the script prints the wall time of each
run, the seconds of the reward's gradient passes and scoring (from the manifest), the rows the oracle
evaluated against the plan's bound, and whether the two selections are equal.

    .venv/bin/python benchmarks/bench_lazy_oracle.py --rows 400
    .venv/bin/python benchmarks/bench_lazy_oracle.py --rows 96 --checkpoints 4   # + lazy keeping one model

`--checkpoints N` gives the model a warmup of N epochs (N checkpoints, TracIn summed over them) and
adds a third variant, lazy with the run's model loader keeping one model (`KEEP_MODELS = 1`, as it
did before it kept a few): each batch then loads every checkpoint again. Each variant reports its
wall and CPU seconds (this process's; run with OMP_NUM_THREADS=1 so that a loaded machine's thread
spinning does not count as work) and how many times a model was loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "recipes" / "data"
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_surrogate import make_pool  # noqa: E402  (the demo pool repeated to `rows` rows, ids made unique)

RECIPE = """
selectkit: 1
name: bench-lazy-{name}
seed: 0
data:
  pool: {{path: {pool}, id: id}}
  targets:
    politics: {{path: {data}/target_politics.jsonl, limit: 16}}
models:
  lm: {{path: {models}/tiny-lm, kind: causal-lm, max_length: 48{warmup}}}
scores:
  features: {{use: embedding, model: lm}}
  reward:
    use: influence.tracin
    model: lm
    targets: [politics]{lazy}
    with: {{proj_dim: 1024, normalize: true}}
select:
  - use: cluster_bandit
    with: {{score: features, reward: reward.politics, budget: 10%, k: {k}, arms_per_round: {arms},
           probe_per_arm: {probe}, take_per_pull: {take}, max_rounds: {rounds}, ucb_alpha: 0.05}}
output: {{dir: {out}, formats: [parquet], report: false}}
"""


def oracle_seconds(manifest: dict) -> float:
    """Seconds of the reward step: its scoring and the pool gradient passes it pulled (the target's
    gradients included when it pulled them first)."""
    return round(sum(s["seconds"] for s in manifest["stages"] if s["step"] == "score:reward"), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--arms", type=int, default=4)
    parser.add_argument("--probe", type=int, default=4)
    parser.add_argument("--take", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--checkpoints", type=int, default=0, help="a warmup of this many epochs (0: none)")
    parser.add_argument("--work", type=Path, help="keep pools, recipes and caches here (default: a temp folder)")
    args = parser.parse_args()
    from selectkit import api

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.work or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        pool = make_pool(args.rows, folder)
        out = {}
        from selectkit.execution.local import ModelLoader

        warmup = (f", warmup: {{fraction: 0.1, epochs: {args.checkpoints}, learning_rate: 1.0e-3, batch_size: 8, "
                  "micro_batch_size: 8}" if args.checkpoints else "")
        variants = [("eager", False, None), ("lazy", True, None)]
        if args.checkpoints:
            variants.append(("lazy-one-model-kept", True, 1))
        keep = ModelLoader.KEEP_MODELS
        for name, lazy, kept in variants:
            path = folder / f"{name}.yaml"
            path.write_text(RECIPE.format(name=name, pool=pool, data=DATA, models=ROOT / "recipes" / "models",
                                          lazy="\n    lazy: true" if lazy else "", k=args.k, arms=args.arms,
                                          probe=args.probe, take=args.take, rounds=args.rounds,
                                          out=folder / f"out-{name}", warmup=warmup))
            os.environ["SELECTKIT_CACHE_DIR"] = str(folder / f"cache-{name}")
            ModelLoader.KEEP_MODELS = kept or keep
            said: list[str] = []
            started, cpu = time.perf_counter(), time.process_time()
            output = api.run(path, progress=said.append)
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
            ModelLoader.KEEP_MODELS = keep
            manifest = json.loads(Path(output.files["manifest"]).read_text())
            reward = next(s for s in manifest["stages"] if s["step"] == "score:reward")
            ranking = output.result.pool.ids.gather(output.result.ranking).to_list()
            out[name] = {"wall_s": round(seconds, 1), "cpu_s": round(cpu, 1), "oracle_s": oracle_seconds(manifest),
                         "model_loads": sum("loading model" in m for m in said), "ranking": ranking,
                         "oracle_rows": reward.get("detail", {}).get("rows_evaluated", args.rows),
                         "planned_at_most": reward.get("detail", {}).get("rows_planned_at_most", args.rows),
                         "batches": reward.get("detail", {}).get("batches", 1),
                         "probed": manifest["selection"]["per_stage"][0]["diagnostics"]["probed"]}
            print(f"{name}: {json.dumps({k: v for k, v in out[name].items() if k != 'ranking'})}", flush=True)
        same = out["eager"]["ranking"] == out["lazy"]["ranking"]
        print(f"\n{args.rows} rows, k={args.k}, arms/round={args.arms}, probe/arm={args.probe}, "
              f"max_rounds={args.rounds}: selections equal (ids and order): {same}")
        print(f"oracle rows: eager {args.rows}, lazy {out['lazy']['oracle_rows']} (plan bound "
              f"{out['lazy']['planned_at_most']}, {out['lazy']['batches']} batches)")
        print(f"wall: eager {out['eager']['wall_s']} s, lazy {out['lazy']['wall_s']} s "
              f"({out['eager']['wall_s'] / max(out['lazy']['wall_s'], 1e-9):.2f}x); oracle: eager "
              f"{out['eager']['oracle_s']} s, lazy {out['lazy']['oracle_s']} s "
              f"({out['eager']['oracle_s'] / max(out['lazy']['oracle_s'], 1e-9):.1f}x)")
        if "lazy-one-model-kept" in out:
            one = out["lazy-one-model-kept"]
            print(f"lazy keeping one model: wall {one['wall_s']} s, CPU {one['cpu_s']} s, {one['model_loads']} model "
                  f"loads; keeping a few: wall {out['lazy']['wall_s']} s, CPU {out['lazy']['cpu_s']} s, "
                  f"{out['lazy']['model_loads']} loads (selection equal: {one['ranking'] == out['lazy']['ranking']})")


if __name__ == "__main__":
    main()
