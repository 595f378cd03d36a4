"""`selectkit explain RUN --influence TARGET_ID`: which pool examples most influence one target example,
answered from the run's gradient store by nearest neighbours (issue 21, part 4), never by scoring every
pool row.

manifest.json names what this needs for each pairwise influence score (execution/influence.py): the
cache entries of the pool's and the targets' gradient features, the checkpoint weights, and whether the
score is a cosine (LESS, grad-cos TracIn) or an inner product (TracIn). The pool's index (faiss over a
sketch of the weighted rows, results/neighbours.py) is built on the first question and kept in the
cache, keyed by the store entry and the weights, so the next question costs one search; the candidates
it finds are re-ranked by their exact scores read from the store, so every score shown is exact.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any

from selectkit.errors import SelectkitError
from selectkit.results.explain import TEXT_CHARS
from selectkit.results.rundir import Run, RunDirError, readable

INDEX_KIND = "neighbours"  # cache entries of built indexes
INDEX_VERSION = "1"
SKETCH_DIM = 1024
SKETCH_SEED = 0
CANDIDATES, PER_K = 500, 50  # rows the index proposes for exact re-ranking: max(500, 50 k) (recall 1.0 where
# 100 gave 0.74 on 50k synthetic rows, benchmarks/README.md; 500 rows of the store read cost ~0.1 s)
_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}")  # a cache kind or key: never a path out of the cache


def explain_influence(run_dir: str | Path, target_id: Any, *, score: str | None = None, k: int = 10,
                      target: str | None = None, cache: str | Path | None = None) -> dict:
    """The `k` pool examples with the highest influence on target example `target_id` under the run's
    pairwise influence score `score` (needed when the run has several), best first, each with its exact
    score, its rank in the selection and its text. `target`: the target task, when the id is in several;
    `cache`: where the run's cache is now (default: where the manifest says it was)."""
    import numpy as np

    from selectkit.storage.cache import Cache

    run = Run.open(run_dir)
    name, entry = _influence_score(run, score)
    task, row = _target_row(run, name, entry, str(target_id), target)
    if entry.get("weights") is None:
        raise RunDirError(f"the manifest does not name score {name!r}'s checkpoint weights (its checkpoints were "
                          "not in the cache when the run was written)", hint="run the recipe again")
    weights = [float(w) for w in entry["weights"]]
    store = Cache(cache if cache is not None else run.manifest.get("cache"))
    pool = _open(store, entry["pool"], f"the pool's gradient store of score {name!r}")
    queries = _open(store, entry["targets"][task], f"target {task!r}'s gradient store of score {name!r}")
    if len(pool) != len(weights) or len(queries) != len(weights):
        raise RunDirError(f"score {name!r}: {len(weights)} checkpoint weights for a store of {len(pool)} checkpoints")
    if len(pool[0]) != run.size:
        raise RunDirError(f"score {name!r}: the gradient store holds {len(pool[0]):,} pool rows, the run "
                          f"{run.size:,}", hint="the cache entry is not this run's; run the recipe again")
    if row >= len(queries[0]):
        raise RunDirError(f"target {task!r}: row {row} is not in its gradient store ({len(queries[0])} rows)")
    query = [q.take(np.array([row])) for q in queries]
    if any(np.isnan(q).any() for q in query):
        raise RunDirError(f"target example {target_id!r} ({task}) has no gradient (no token counted toward its "
                          "loss: an empty response or text), so nothing influences it")
    index, status = _index(store, entry, pool, weights)
    scores, rows = index.search(query, k, candidates=max(CANDIDATES, PER_K * k))
    with readable(run_dir):
        found = run.rows(rows[0].tolist())
    neighbours = []
    for place, (value, info) in enumerate(zip(scores[0].tolist(), found.iter_rows(named=True)), 1):
        text = info.get("__text")
        neighbours.append({"place": place, "id": str(info["id"]), "row": int(info["__row"]),
                           "influence": None if value != value else float(value),
                           "selected": bool(info["__selected"]), "rank": int(info["__rank"]) or None,
                           "text": None if text is None else text if len(text) <= TEXT_CHARS
                           else text[:TEXT_CHARS] + "…"})
    return {"score": name, "method": entry.get("method"), "cosine": bool(entry.get("cosine")),
            "target": {"id": str(target_id), "task": task, "row": row},
            "checkpoints": entry.get("checkpoints"), "weights": weights,
            "index": {"kind": type(index.index).__name__, "status": status, "pool_rows": index.rows,
                      "exact_rerank": True},
            "of": run.counts.selected, "neighbours": neighbours}


def _influence_score(run: Run, score: str | None) -> tuple[str, dict]:
    """The score whose gradient store answers, and its manifest entry; errors say what the run has."""
    scores = run.manifest.get("scores") or {}
    usable = {n: s["influence"] for n, s in scores.items() if isinstance(s, dict) and isinstance(s.get("influence"),
                                                                                                   dict)}
    if not usable:
        gradient = [f"{n} ({s.get('scorer')})" for n, s in scores.items()
                    if isinstance(s, dict) and str(s.get("scorer", "")).startswith("influence.")]
        listed = ", ".join(f"{n} ({s.get('scorer')})" for n, s in scores.items() if isinstance(s, dict)) or "none"
        sampled = [n for n, s in scores.items() if isinstance(s, dict) and s.get("surrogate")
                   and str(s.get("scorer")) in ("influence.less", "influence.tracin")]
        if sampled:
            raise RunDirError(f"score {sampled[0]!r} of {run.path} was computed on a label sample (surrogate): its "
                              "gradient store holds the sample's rows, not the pool's, so --influence cannot search "
                              "the pool", hint="run a recipe without `surrogate` on that score")
        if any(g.endswith(("(influence.less)", "(influence.tracin)")) for g in gradient):
            raise RunDirError(f"{run.path}: its manifest names no gradient store (it was written by a selectkit "
                              "that did not record one)", hint="run the recipe again to record it")
        raise RunDirError(f"{run.path} has no gradient store to explain influence from: --influence needs a "
                          f"pairwise gradient influence score (influence.less or influence.tracin); its scores: "
                          f"{listed}")
    if score is None:
        if len(usable) > 1:
            raise RunDirError(f"{run.path} has several influence scores ({', '.join(usable)}): say which with "
                              "--score NAME")
        score = next(iter(usable))
    if score not in usable:
        close = difflib.get_close_matches(score, list(usable), n=1)
        raise RunDirError(f"score {score!r} is not an influence score of {run.path} (those: {', '.join(usable)})"
                          + (f"; did you mean {close[0]!r}?" if close else ""))
    entry = usable[score]
    where = f"manifest.json: scores.{score}.influence"
    for part in ("pool", "targets"):
        if not isinstance(entry.get(part), dict):
            raise RunDirError(f"{where}.{part} is missing or not an object")
    weights = entry.get("weights")
    if weights is not None and not (isinstance(weights, list) and weights and all(
            isinstance(w, int | float) and not isinstance(w, bool) for w in weights)):
        raise RunDirError(f"{where}.weights is not a list of numbers")
    return score, entry


def _target_row(run: Run, name: str, entry: dict, target_id: str, task: str | None) -> tuple[str, int]:
    """(target task, row in its store) of `target_id`; unknown or ambiguous ids are errors."""
    targets = {t: v for t, v in entry["targets"].items() if isinstance(v, dict)}
    if task is not None and task not in targets:
        raise RunDirError(f"score {name!r} has no target {task!r} (its targets: {', '.join(targets)})")
    hits = []
    for t, info in targets.items():
        ids = info.get("ids")
        if (task is None or t == task) and isinstance(ids, list) and target_id in ids:
            hits.append((t, ids.index(target_id)))
    if len(hits) > 1:
        raise RunDirError(f"target id {target_id!r} is in several targets of score {name!r} "
                          f"({', '.join(t for t, _ in hits)}): say which with --target NAME")
    if not hits:
        unrecorded = [t for t, v in targets.items() if (task is None or t == task) and not isinstance(v.get("ids"),
                                                                                                     list)]
        if unrecorded:
            raise RunDirError(f"the manifest records no ids of target {unrecorded[0]!r} of score {name!r} (more "
                              "examples than it lists), so target ids cannot be looked up there")
        searched = {t: v.get("ids") or [] for t, v in targets.items() if task is None or t == task}
        every = [i for ids in searched.values() for i in ids]
        message = (f"target id {target_id!r} is not an example of the targets of score {name!r} ("
                   + ", ".join(f"{t}: {len(ids):,} examples" for t, ids in searched.items()) + ")")
        close = difflib.get_close_matches(target_id, every, n=1)
        raise RunDirError(message + (f"; did you mean {close[0]!r}?" if close else ""),
                          hint="target ids are the target data's id column (row numbers when it names none)")
    return hits[0]


def _open(cache: Any, store: dict, what: str) -> list:
    """One data source's stored gradient features per checkpoint; a pruned entry says to run again."""
    from selectkit.storage.gradient_store import open_store

    try:
        artifact, key = str(store["artifact"]), str(store["key"])
        shards, row_shards, points = int(store["shards"]), int(store["row_shards"]), int(store["points"])
    except (KeyError, TypeError, ValueError):
        raise RunDirError(f"manifest.json: {what} is not described (artifact, key, shards)") from None
    if not (_NAME.fullmatch(artifact) and _NAME.fullmatch(key)) or min(shards, row_shards, points) < 1:
        raise RunDirError(f"manifest.json: {what} names no cache entry ({artifact!r}/{key!r})")
    if not cache.has(artifact, key):
        raise RunDirError(f"{what} (cache entry {artifact}/{key}) is not in the cache at {cache.location}: it was "
                          "pruned, or the cache is elsewhere now",
                          hint="run the recipe again to recompute it, or give --cache where the cache is now")
    try:
        return open_store(cache.sharded(artifact, key, shards), row_shards, points,
                          str(store.get("feature_dtype") or "float32"))
    except SelectkitError as exc:
        raise RunDirError(f"{what}: {exc.message}", hint="run the recipe again to recompute it") from None


def _index(cache: Any, entry: dict, pool: list, weights: list[float]) -> tuple[Any, str]:
    """The pool's neighbours index: from the cache when built before for this store and these weights, else
    built now and kept there (a cache that takes no writes only costs the next question a rebuild)."""
    from selectkit.results.neighbours import InfluenceIndex
    from selectkit.storage.digest import cache_key

    cosine = bool(entry.get("cosine", True))
    # `<store key>-index-<digest>`: `cache prune --keep` keeps the index exactly as long as the store it indexes
    key = f"{entry['pool']['key']}-index-" + cache_key("influence-index", INDEX_VERSION, entry["pool"]["artifact"],
                                                        entry["pool"]["key"], weights, cosine, SKETCH_DIM,
                                                        SKETCH_SEED)[:24]
    options = dict(sketch_dim=SKETCH_DIM, seed=SKETCH_SEED, cosine=cosine)
    got = cache.read_arrays(INDEX_KIND, key)
    if got is not None:
        try:
            return InfluenceIndex(pool, weights, saved=got[0]["index"], **options), "cached"
        except (KeyError, ValueError, RuntimeError):
            pass  # not an index of this store after all: build it again
    index = InfluenceIndex(pool, weights, **options)
    try:
        cache.write_arrays(INDEX_KIND, key, {"index": index.to_bytes()},
                           label=f"influence index over {entry['pool'].get('label') or entry['pool']['key']}")
    except (OSError, SelectkitError):
        pass
    return index, "built"


def render_text(record: dict) -> str:
    """The answer for a terminal."""
    t = record["target"]
    kind = "cosine" if record["cosine"] else "inner product"
    lines = [f"target {t['id']} ({t['task']}): the {len(record['neighbours'])} pool examples with the highest "
             f"{record['score']} influence ({record['method']}, checkpoint-weighted {kind})",
             f"  index: {record['index']['kind']} over {record['index']['pool_rows']:,} pool rows "
             f"({record['index']['status']}); scores re-ranked exactly from the gradient store",
             f"  {'#':>3} {'id':<24} {'influence':>12}  selection"]
    for n in record["neighbours"]:
        where = f"selected, rank {n['rank']} of {record['of']}" if n["selected"] else "not selected"
        value = "–" if n["influence"] is None else f"{n['influence']:.6g}"
        lines.append(f"  {n['place']:>3} {n['id']:<24} {value:>12}  {where}")
        if n.get("text"):
            lines.append(f"      {json.dumps(n['text'], ensure_ascii=False)}")
    return "\n".join(lines)
