"""`selectkit eval`: does the selection train a better model than random data of the same size?

1. Each target is split by a keyed draw on its row ids into a scoring part (what the recipe sees:
   the run reads it from `split/` in the eval folder) and a held-out part it never sees; word
   n-gram overlap of the held-out part with the pool and the selection is reported.
2. The recipe runs on the scoring parts. A keyed sample of the pool is then held out of every arm.
3. Arms, per seed pair i of k: the selection; a random subset with the same tokens; a random
   subset with the selection's mix over `output.summarize_by` (so a shift of domain mix is not
   credited to the selection's merit); a second random subset (the random-vs-random null).
   Every arm of a pair trains the same proxy (`selectkit.evaluation.proxy`) from the same initialisation, on
   the same number of tokens, in the same batch order.
4. Bits per byte on each held-out target part and on the pool sample; `selectkit.evaluation.stats`
   turns them into differences, CIs, p-values and verdicts.
   With `evaluate.proxy.model`, every arm is instead a LoRA fine-tune of that recipe model from its
   base (the `retrain` kind of the `train` provider: the warmup's loop, planned and cached per arm and
   pair, keyed by the selection), with the pair's seed, and the metric is each held-out example's mean
   token loss under that model (`lds.retrained_losses`, the measurement LDS uses).
5. With `evaluate.lds`: the linear datamodeling score of the recipe's gradient scores on the same
   held-out parts (`selectkit.evaluation.lds`), from the plan's LoRA retrain steps.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from selectkit.errors import SelectkitError, require
from selectkit.evaluation import proxy, stats
from selectkit.planning.retrain import seed_of  # the pair seeds, shared with the planned arms
from selectkit.recipe.spec import EvaluateSpec

POOL_SAMPLE = "pool sample"


@dataclass
class Evaluation:
    results: dict  # what manifest.json's "evaluation" holds
    run_dir: Path
    out_dir: Path




def split_target(keys: np.ndarray, share: float, seed: int, name: str) -> np.ndarray:
    """Held-out mask of a target: the round(share * n) rows (at least 1, at most n - 1) with the
    smallest keyed draw, so the split depends on row ids, never on their order."""
    from selectkit.contract.keyed_random import uniform

    n = len(keys)
    if n < 2:
        raise SelectkitError(f"target {name!r} has {n} row; eval holds part of each target out and needs 2 or more")
    m = min(n - 1, max(1, int(round(share * n))))
    draw = uniform(seed, ("evaluate", "heldout", name), keys)
    mask = np.zeros(n, dtype=bool)
    mask[np.argsort(draw, kind="stable")[:m]] = True
    return mask


def ngrams(text: str, n: int) -> set[int]:
    words = re.findall(r"\w+", text.lower())
    return {hash(tuple(words[i:i + n])) for i in range(len(words) - n + 1)}


def overlap(heldout: list[str], reference: list[str], n: int) -> dict:
    """Share of held-out examples with any word n-gram found in `reference`, and share of their n-grams."""
    seen: set[int] = set()
    for text in reference:
        seen |= ngrams(text, n)
    grams = [ngrams(t, n) for t in heldout]
    total = sum(len(g) for g in grams)
    shared = sum(len(g & seen) for g in grams)
    return {"examples_with_overlap": round(sum(bool(g & seen) for g in grams) / max(len(grams), 1), 4),
            "ngrams_found": round(shared / total, 4) if total else 0.0}


def evaluate(path: str | Path, *, out_dir: str | Path | None = None, cache_dir: str | Path | None = None,
             registry: Any = None, say: Callable[[str], None] | None = None, options: dict | None = None) -> Evaluation:
    """Run `selectkit eval` on the recipe at `path`; write the run and its evaluation under `out_dir`."""
    from selectkit.api import run_plan, validate
    from selectkit.planning.check import check
    from selectkit.planning.compile import compile_plan
    from selectkit.storage.cache import Cache

    say = say or (lambda _: None)
    started = time.perf_counter()
    checked = validate(path, registry)
    loaded, registry = checked.loaded, checked.registry
    recipe = loaded.recipe
    spec = recipe.evaluate or EvaluateSpec()
    seed = spec.seed if spec.seed is not None else recipe.seed
    if not recipe.data.targets:
        raise SelectkitError("eval measures the selection on held-out parts of the targets, and this recipe has "
                             "none", loaded.locate(("data",), at_key=True), "add a target under data.targets")
    require("torch", "models", "selectkit eval (the proxy model)")
    require("transformers", "models", "selectkit eval (the proxy model)")
    if spec.stratified and recipe.output.summarize_by is None:
        say("note: no output.summarize_by, so no stratified arm")
    out = Path(out_dir) if out_dir else loaded.resolve_path(recipe.output.dir.replace("{name}", recipe.name) + "-eval")
    if not isinstance(out, Path):  # an output.dir in object storage: eval writes a local folder
        raise SelectkitError(f"selectkit eval writes a local folder, and output.dir is {out}",
                             hint="pass --out FOLDER")
    out = Path(os.path.abspath(out))
    run_dir = out / "run"
    _guard(checked, out, run_dir)
    heldout, split_info, scoring = split_targets(loaded, registry, spec.heldout, seed, out / "split")
    plan = compile_plan(check(scoring, registry), Cache(cache_dir or None), run_dir, None,
                        dict(options or {}))
    parts = ", ".join(f"{n}: {info['scoring']}" for n, info in split_info.items())
    say(f"running the recipe on the scoring parts ({parts} rows) -> {run_dir}")
    result = run_plan(plan, options=options)

    arms = Arms(result, spec, seed, recipe.output.summarize_by)
    chosen = spec.targets or list(recipe.data.targets)
    eval_sets: dict[str, list[str]] = {name: heldout[name] for name in chosen}
    eval_sets[POOL_SAMPLE] = [arms.texts[i] for i in arms.sample]
    train_started = time.perf_counter()
    if spec.proxy.model is not None:
        bits, arm_info, nbytes, own = train_model_arms(plan, arms, eval_sets, spec, seed, options, say)
    else:
        selects = plan.of_kind("select")
        (bits, arm_info, nbytes), own = train_arms(arms, eval_sets, spec, seed, say, plan.cache,
                                                   selects[-1].key if selects else ""), None
    train_seconds = time.perf_counter() - train_started
    metric = "loss" if own is not None else "bpb"
    sets = compare_arms(bits, nbytes, eval_sets, spec, seed, arms.names, metric)
    selection_texts = [arms.texts[i] for i in np.unique(arms.chosen)]
    pool_texts = [arms.texts[i] for i in np.flatnonzero(arms.usable)]
    contamination = {name: {"pool": overlap(heldout[name], pool_texts, spec.ngram),
                            "selection": overlap(heldout[name], selection_texts, spec.ngram)} for name in chosen}
    if own is not None:
        proxy_info = {"kind": "lora", "metric": "loss", **own, "bytes_per_arm": arms.budget}
    else:
        proxy_config = proxy.config(spec.proxy)
        cached = sum(e.get("cached", False) for entries in arm_info.values() for e in entries)
        total = sum(len(entries) for entries in arm_info.values())
        proxy_info = {"kind": "from-scratch", "metric": "bpb", "config": proxy_config, "tokens_per_arm": arms.budget,
                      "epochs": arms.epochs, "parameters": _parameters(proxy_config),
                      "arms_cached": cached, "arms_trained": total - cached}
    results = {
        "settings": spec.model_dump(mode="json"), "seed": seed, "metric": metric,
        "proxy": proxy_info,
        "split": split_info, "pool_sample": int(len(arms.sample)), "pool_tokens_available": arms.pool_tokens,
        "contamination": {"ngram": spec.ngram, "targets": contamination},
        "arms": arm_info, "sets": sets,
        "verdicts": {name: sets[name]["verdict"] for name in chosen},
        "caveat": stats.DATADECIDE,
        "seconds": {"total": round(time.perf_counter() - started, 2), "training": round(train_seconds, 2)},
    }
    results["warnings"] = _warnings(sets, arms, spec)
    if spec.lds is not None:
        from selectkit.evaluation import lds

        say(f"LDS: {spec.lds.subsets} LoRA retrains on keyed subsets of the pool, then the held-out target losses")
        report = lds.evaluate_lds(plan, {name: heldout[name] for name in chosen}, seed, options, say)
        results["lds"] = lds.public(report)
        results["lds_details"] = report
        results["warnings"].extend(report["warnings"])
        results["seconds"]["lds"] = report["seconds"]["total"]
        results["seconds"]["total"] = round(time.perf_counter() - started, 2)
    _record(run_dir, results, bool(recipe.output.report))
    return Evaluation(results, run_dir, out)


def _guard(checked: Any, out: Path, run_dir: Path) -> None:
    """Before anything is written: eval's folder (split files, the run) must not be, hold or lie inside
    anything the recipe reads, and no split file may resolve to an input (a symlinked `split/`)."""
    from selectkit.data.sources import source_files
    from selectkit.planning.guard import (
        OutputError,
        file_conflicts,
        name_problem,
        output_conflicts,
        read_only,
        recipe_inputs,
    )

    loaded = checked.loaded
    inputs = recipe_inputs({name: source_files(node.path) for name, node in checked.sources.items()},
                           {name: (spec, Path(loaded.base)) for name, spec in loaded.recipe.models.items()})
    for name in loaded.recipe.data.targets:
        if (problem := name_problem(name)) is not None:  # check() says it at the line; this is the last guard
            raise OutputError(f"target name {name!r} {problem}; it would name a file outside {out / 'split'}")
    split = out / "split"
    files = {f"eval split file{' (held-out)' if 'heldout' in suffix else ''} of target {name!r}":
             split / f"{name}{suffix}"
             for name in loaded.recipe.data.targets for suffix in (".jsonl", ".heldout.jsonl")}
    problems = output_conflicts(out, inputs, what="eval folder") + file_conflicts(files, inputs)
    if problems:
        raise OutputError(problems[0], hint="choose another eval folder (--out)")
    if split.is_symlink():  # eval writes there: a link would send the split files anywhere
        raise OutputError(f"eval folder {out}: split is a symbolic link ({split} -> {os.readlink(split)}); "
                          "eval writes its split files there", hint="remove the link, or choose another --out")
    if read_only(out) or read_only(split):
        raise OutputError(f"eval folder {out} is read-only", hint="make it writable, or choose another --out")


def split_targets(loaded: Any, registry: Any, share: float, seed: int, folder: Path
                  ) -> tuple[dict[str, list[str]], dict[str, dict], Any]:
    """Split each target by a keyed draw into a scoring part (written to `folder`) and a held-out part;
    returns the held-out texts, what was split, and a copy of the recipe that reads the scoring parts."""
    from selectkit.contract.keyed_random import row_keys
    from selectkit.data.sources import load_dataset

    folder.mkdir(parents=True, exist_ok=True)
    readers = {n: e.cls for n, e in registry.components["readers"].items()}
    heldout: dict[str, list[str]] = {}
    info: dict[str, dict] = {}
    for name, source in loaded.recipe.data.targets.items():
        ds = load_dataset(name, loaded.resolve_path(source.path), text=source.text, id_column=source.id,
                          limit=source.limit, fmt=source.format, readers=readers, on_missing=source.on_missing)
        mask = split_target(row_keys(ds.ids), share, seed, name)
        scoring = folder / f"{name}.jsonl"
        _write_rows(ds.rows.filter(~mask), scoring)
        _write_rows(ds.rows.filter(mask), folder / f"{name}.heldout.jsonl")
        usable = ds.usable if ds.usable is not None else np.ones(len(ds), bool)
        heldout[name] = [t for t, keep, ok in zip(ds.texts, mask, usable) if keep and ok and t]
        info[name] = {"rows": len(ds), "heldout": int(mask.sum()), "scoring": int((~mask).sum()),
                      "scoring_file": str(scoring)}
    scoring = loaded.with_sources(lambda name, source: {"path": info[name]["scoring_file"], "format": "jsonl",
                                                        "limit": None} if name in info else {})
    return heldout, info, scoring


class Arms:
    """The training arms of a finished run: a keyed pool sample held out of every arm, the selection
    (repeated by its counts), and random and stratified subsets with the same tokens."""

    def __init__(self, result: Any, spec: Any, seed: int, summarize_by: str | None):
        from selectkit.contract.keyed_random import canonical_order, uniform

        pool = result.pool
        self.seed, self.keys, self.texts = seed, pool.keys, pool.texts
        self.usable = np.asarray(pool.usable, bool) & np.array([bool(t) for t in self.texts])
        self.lengths = np.array([len(t.encode("utf-8")) + 1 for t in self.texts], dtype=np.int64)
        draw = uniform(seed, ("evaluate", "pool-sample"), self.keys)
        draw[~self.usable] = np.inf
        sample = np.argsort(draw, kind="stable")[:min(spec.pool_sample, max(0, int(self.usable.sum()) - 1))]
        self.sample = sample[canonical_order(self.keys[sample])]
        available = self.usable.copy()
        available[self.sample] = False
        ranking = np.asarray(result.ranking, dtype=np.int64)
        chosen = np.repeat(ranking, np.asarray(result.counts)[ranking].clip(min=1).astype(np.int64))
        self.chosen = chosen[available[chosen]]
        if not len(self.chosen):
            raise SelectkitError("the selection has no example outside the pool sample eval holds out to train on")
        self.selection_tokens = int(self.lengths[self.chosen].sum())
        self.budget = min(self.selection_tokens, spec.proxy.max_tokens)
        if self.budget < spec.proxy.seq_len * 2:
            raise SelectkitError(f"the selection holds {self.budget} proxy tokens, too few to train on (at least "
                                 f"{spec.proxy.seq_len * 2}: two sequences of evaluate.proxy.seq_len)")
        self.epochs = proxy.epochs(spec.proxy, self.budget // spec.proxy.seq_len)
        self.pool_tokens = int(self.lengths[available].sum())
        self.candidates = np.flatnonzero(available)
        self.groups = None  # the summarize_by column: each arm's mix, and the strata of the stratified arm
        if summarize_by and summarize_by in pool.columns:
            self.groups = pool.column(summarize_by).cast(str).fill_null("(missing)").to_numpy()
        self.names = ["selection", "random", *(["stratified"] if spec.stratified and self.groups is not None else []),
                      *(["null"] if spec.random_vs_random else [])]

    def ordered(self, rows: np.ndarray, labels: tuple) -> np.ndarray:
        u = uniform_of(self.seed, labels, self.keys[rows])
        return rows[np.lexsort((np.arange(len(rows)), u))]

    def prefix(self, rows: np.ndarray, tokens: int) -> np.ndarray:
        end = int(np.searchsorted(np.cumsum(self.lengths[rows]), tokens) + 1)
        return rows[:end]

    def random(self, labels: tuple) -> np.ndarray:
        return self.prefix(self.ordered(self.candidates, labels), self.budget)

    def stratified(self, i: int) -> np.ndarray:
        """Random rows with the selection's token mix over the groups, topped up at random."""
        share: dict[str, int] = {}
        for g, t in zip(self.groups[self.chosen], self.lengths[self.chosen]):
            share[g] = share.get(g, 0) + int(t)
        parts, taken = [], np.zeros(len(self.keys), bool)
        for g in sorted(share):
            rows = self.ordered(self.candidates[self.groups[self.candidates] == g], ("stratified", i, g))
            part = self.prefix(rows, int(round(share[g] * self.budget / max(1, sum(share.values())))))
            parts.append(part)
            taken[part] = True
        rest = self.ordered(self.candidates[~taken[self.candidates]], ("stratified-fill", i))
        return self.prefix(np.concatenate(parts + [rest]) if parts else rest, self.budget)

    def rows(self, i: int) -> dict[str, np.ndarray]:
        """Each arm's rows for seed pair `i`."""
        out = {"selection": self.ordered(self.chosen, ("selection-order", i)), "random": self.random(("random", i))}
        if "stratified" in self.names:
            out["stratified"] = self.ordered(self.stratified(i), ("stratified-order", i))
        if "null" in self.names:
            out["null"] = self.random(("null", i))
        return out


def uniform_of(seed: int, labels: tuple, keys: np.ndarray) -> np.ndarray:
    from selectkit.contract.keyed_random import uniform

    return uniform(seed, ("evaluate", *labels), keys)


ARM_KIND = "eval"  # cache kind of a from-scratch proxy arm's bits on the evaluation sets
ARM_VERSION = 1  # bump when `proxy.train` or `proxy.bits` change what they compute


def arm_key(selection_key: str, proxy_spec: Any, pair_seed: int, sequences: np.ndarray,
            encoded: dict[str, list[np.ndarray]]) -> str:
    """The cache key of one from-scratch arm: what its bits are a function of (the proxy's settings,
    the pair's seed, the arm's packed tokens, the evaluation sets' bytes, names in order), under the
    selection's step key (`<selection key>-arm-<digest>`), so that `cache prune --keep` keeps an arm
    exactly as long as the selection it was drawn against."""
    import hashlib

    digest = hashlib.sha256()
    digest.update(json.dumps([ARM_VERSION, proxy_spec.model_dump(mode="json"), int(pair_seed), list(sequences.shape),
                              list(encoded)], sort_keys=True).encode())
    digest.update(np.ascontiguousarray(sequences, dtype=np.int64).tobytes())
    for texts in encoded.values():
        for e in texts:
            digest.update(len(e).to_bytes(8, "little"))
            digest.update(np.ascontiguousarray(e, dtype=np.int64).tobytes())
    return f"{selection_key}-arm-{digest.hexdigest()[:32]}"


def _read_arm(cache: Any, key: str, encoded: dict[str, list[np.ndarray]]) -> list[np.ndarray] | None:
    """An arm's bits per evaluation set from the cache, or None (absent, or not of these sets)."""
    got = cache.read_arrays(ARM_KIND, key)
    if got is None:
        return None
    values = [got[0].get(f"set{j}") for j in range(len(encoded))]
    if any(v is None or v.shape != (len(texts),) for v, texts in zip(values, encoded.values())):
        return None
    return values


def _write_arm(cache: Any, key: str, values: list[np.ndarray], label: str) -> None:
    try:
        cache.write_arrays(ARM_KIND, key, {f"set{j}": v for j, v in enumerate(values)}, label=label)
    except (OSError, SelectkitError):  # a cache that takes no writes costs the next eval a retraining only
        pass


def train_arms(arms: Arms, eval_sets: dict[str, list[str]], spec: Any, seed: int, say: Callable[[str], None],
               cache: Any = None, selection_key: str = "") -> tuple[dict, dict, dict]:
    """Per seed pair, train the proxy from the same initialisation on every arm and read its bits on
    every evaluation set: (bits[arm][set], each arm's examples and mix, each set's bytes). Each arm's
    bits are kept in `cache` (kind `eval`, keyed by `arm_key`): a second eval of the same selection
    trains nothing; `info[arm][i]["cached"]` says which were read back."""
    proxy_spec = spec.proxy
    encoded = {name: proxy.encode_texts(v) for name, v in eval_sets.items()}
    nbytes = {name: np.array([len(e) - 1 for e in v], dtype=np.float64) for name, v in encoded.items()}
    bits: dict[str, dict[str, list[np.ndarray]]] = {a: {s: [] for s in eval_sets} for a in arms.names}
    info: dict[str, list[dict]] = {a: [] for a in arms.names}
    k = spec.random_subsets
    with proxy.threads(proxy_spec.threads):
        for i in range(k):
            pair_seed = seed_of(seed, "pair", i)
            for arm, rows in arms.rows(i).items():
                sequences = proxy.pack(proxy.encode_texts([arms.texts[r] for r in rows]), arms.budget,
                                       proxy_spec.seq_len)
                key = arm_key(selection_key, proxy_spec, pair_seed, sequences, encoded) \
                    if cache is not None and selection_key else None
                values = _read_arm(cache, key, encoded) if key is not None else None
                cached = values is not None
                if values is None:
                    say(f"pair {i + 1}/{k}: training the proxy on the {arm} arm ({len(rows)} examples, "
                        f"{sequences.size:,} tokens x {arms.epochs} epoch{'s' if arms.epochs > 1 else ''})")
                    model = proxy.train(proxy_spec, sequences, pair_seed)
                    values = [proxy.bits(model, encoded[name], proxy_spec.seq_len) for name in eval_sets]
                    if key is not None:
                        _write_arm(cache, key, values, f"eval pair {i + 1}: {arm} arm (from-scratch proxy)")
                for name, v in zip(eval_sets, values):
                    bits[arm][name].append(v)
                entry = {"pair": i, "examples": int(len(rows)), "tokens": int(sequences.size), "cached": cached}
                if arms.groups is not None:
                    values, counts = np.unique(arms.groups[rows], return_counts=True)
                    entry["mix"] = {str(v): int(c) for v, c in zip(values, counts)}
                info[arm].append(entry)
    return bits, info, nbytes


def train_model_arms(plan: Any, arms: Arms, eval_sets: dict[str, list[str]], spec: Any, seed: int,
                     options: dict | None, say: Callable[[str], None]) -> tuple[dict, dict, dict, dict]:
    """`evaluate.proxy.model`: per seed pair, a LoRA of the recipe's model on every arm (the plan's
    retrain steps, given their rows now that the selection is known; cached ones load), then each
    held-out example's mean token loss under every arm's adapter. Returns (loss[arm][set] per pair,
    each arm's examples and mix, unit weights per set, what the manifest records of the proxy)."""
    from dataclasses import replace

    from selectkit.evaluation.lds import retrained_losses
    from selectkit.execution.local import Run
    from selectkit.execution.progress import as_reporter
    from selectkit.planning import retrain
    from selectkit.planning.steps import PassPayload

    planned = {}
    for step in plan.steps:
        if isinstance(step.payload, PassPayload) and (which := retrain.arm_of(step.payload.work.requests[0])):
            planned[which] = step
    run = Run(plan, as_reporter(say), dict(options or {}))
    run.get("read:pool")  # the pool the arms' rows index (cached: the recipe's run just read it)
    adapters, statuses, order, keys = [], [], [], []
    info: dict[str, list[dict]] = {a: [] for a in arms.names}
    k = spec.random_subsets
    for i in range(k):
        for arm, rows in arms.rows(i).items():
            step = planned.get((arm, i))
            if step is None:  # pragma: no cover - the planner plans every arm of every pair
                raise SelectkitError(f"the plan has no step for the {arm} arm of seed pair {i + 1}")
            work = step.payload.work
            step.payload.work = replace(work, config=(*work.config[:3], np.asarray(rows, dtype=np.int64)))
            adapters.append(run.get(step.id)[work.requests[0]])
            keys.append(step.key)  # names the arm's rows (see planning.retrain.arm_requests)
            order.append(arm)
            statuses.append(run.status[step.id][0])
            entry = {"pair": i, "examples": int(len(rows)), "bytes": int(arms.lengths[rows].sum()),
                     "status": statuses[-1]}
            if arms.groups is not None:
                values, counts = np.unique(arms.groups[rows], return_counts=True)
                entry["mix"] = {str(v): int(c) for v, c in zip(values, counts)}
            info[arm].append(entry)
    model_ref = next(iter(planned.values())).payload.work.model
    loss, measured = retrained_losses(model_ref, adapters, eval_sets, bool((options or {}).get("trust_remote_code")),
                                      say, what="eval: held-out losses under arm", cache=plan.cache, keys=keys)
    loss = np.where(np.isfinite(loss), loss, 0.0)  # a text without tokens counts 0 in every arm alike
    bits: dict[str, dict[str, list[np.ndarray]]] = {a: {s: [] for s in eval_sets} for a in arms.names}
    for row, arm in zip(loss, order):
        at = 0
        for name, texts in eval_sets.items():
            bits[arm][name].append(row[at:at + len(texts)])
            at += len(texts)
    nbytes = {name: np.ones(len(texts), dtype=np.float64) for name, texts in eval_sets.items()}
    cached = sum(s == "cached" for s in statuses)
    train = json.loads(next(iter(planned.values())).payload.work.requests[0].options["train"])
    start = next(iter(planned.values())).payload.work.requests[0].options.get("start")
    own = {"model": model_ref.name, "path": model_ref.spec.path, "train": train,
           **({"checkpoint": start} if start is not None else {}),
           "arms_cached": cached, "arms_trained": len(statuses) - cached,
           "losses_cached": len(statuses) - measured, "losses_measured": measured}
    return bits, info, nbytes, own


def compare_arms(bits: dict, nbytes: dict, eval_sets: dict, spec: Any, seed: int, names: list[str],
                 metric: str = "bpb") -> dict:
    """Per evaluation set: bits per byte of every arm (or, `metric="loss"`, the mean held-out loss per
    example), selection vs random (and stratified, and the random-vs-random null) with CIs and
    p-values, and the verdict."""
    sets = {}
    for name in eval_sets:
        stat_seed = seed_of(seed, "stats", name)

        def versus(a: str, b: str, name: str = name, stat_seed: int = stat_seed) -> dict:
            return stats.compare(a, np.stack(bits[a][name]), b, np.stack(bits[b][name]), nbytes[name],
                                 bootstrap=spec.bootstrap, permutations=spec.permutations,
                                 seed=stat_seed).as_dict(metric)

        entry = {"examples": len(eval_sets[name]),
                 **({"bytes": int(nbytes[name].sum())} if metric == "bpb" else
                    {"bytes": sum(len(t.encode("utf-8")) for t in eval_sets[name])}),
                 metric: {a: round(float(stats.bpb(np.stack(bits[a][name]), nbytes[name]).mean()), 6)
                          for a in names},
                 "selection_vs_random": versus("selection", "random")}
        if "stratified" in names:
            entry["selection_vs_stratified"] = versus("selection", "stratified")
        if "null" in names:
            entry["random_vs_random"] = versus("null", "random")
        entry["verdict"] = entry["selection_vs_random"]["verdict"]
        sets[name] = entry
    return sets


def _warnings(sets: dict, arms: Arms, spec: Any) -> list[str]:
    out = []
    for name, entry in sets.items():
        null = entry.get("random_vs_random")
        if null and null["verdict"] != "inconclusive":
            out.append(f"{name}: random vs random came out {null['verdict']!r}: at this scale the CI is too "
                       "narrow to trust; raise random_subsets or the proxy's epochs")
    if arms.budget < arms.selection_tokens:
        out.append(f"the selection's {arms.selection_tokens:,} tokens were cut to "
                   f"evaluate.proxy.max_tokens = {arms.budget:,} per arm")
    k = spec.random_subsets
    if k < 3:
        out.append(f"{k} seed pair{'s' if k > 1 else ''}: too few to measure the training noise; the CI "
                   "holds mostly the evaluation texts' spread (random_subsets: 5 or more)")
    if arms.pool_tokens < 2 * arms.budget:
        out.append("the selection holds half the pool's tokens or more: random arms overlap it heavily")
    return out


def _parameters(config: dict) -> int:
    h, layers, v = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    return v * h + layers * (4 * h * h + 3 * h * config["intermediate_size"] + 2 * h) + h


def _write_rows(frame: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    frame.write_ndjson(tmp)
    os.replace(tmp, path)


def _record(run_dir: Path, results: dict, report: bool) -> None:
    """Add the results to the run's manifest.json (atomically) and rebuild its report."""
    from selectkit.execution.outputs import jsonable

    manifest_path = run_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["evaluation"] = results
    fd, tmp = tempfile.mkstemp(prefix=".manifest.json.", dir=run_dir)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(manifest, indent=2, default=jsonable) + "\n")
    os.replace(tmp, manifest_path)
    if report and (run_dir / "report.html").exists():
        from selectkit.results.report import write_report

        try:
            write_report(run_dir)
        except (SelectkitError, ImportError, ValueError):  # the run's own report stays
            pass


def render(evaluation: Evaluation) -> str:
    """The console summary: per evaluation set, bpb per arm, the differences with CIs, the verdict."""
    r = evaluation.results
    p, pairs = r["proxy"], len(r["arms"]["selection"])
    if p.get("kind") == "lora":
        origin = f"continuing checkpoint {p['checkpoint']}" if p.get("checkpoint") else "a LoRA"
        lines = [f"proxy: the recipe's model {p['model']!r} ({p['path']}), {origin} (r={p['train']['lora']['r']}, "
                 f"{p['train']['epochs']} epochs) per arm on {p['bytes_per_arm']:,} bytes, {pairs} seed pairs; "
                 f"arms cached {p['arms_cached']}, trained {p['arms_trained']}"]
    else:
        lines = [f"proxy: {p['parameters']:,}-parameter Llama from scratch, {p['tokens_per_arm']:,} "
                 f"tokens x {p['epochs']} epochs per arm, {pairs} seed pairs"
                 + (f"; arms cached {p['arms_cached']}, trained {p['arms_trained']}" if "arms_cached" in p else "")]
    metric = r.get("metric", "bpb")
    what, unit = ("mean held-out loss (nats/token)", "nats") if metric == "loss" else ("bits per byte", "bpb")
    for name, c in r["contamination"]["targets"].items():
        lines.append(f"contamination ({r['contamination']['ngram']}-grams) of held-out {name}: "
                     f"{c['pool']['examples_with_overlap']:.0%} of examples share one with the pool, "
                     f"{c['selection']['examples_with_overlap']:.0%} with the selection")
    for name, entry in r["sets"].items():
        label = f"held-out {name}" if name != POOL_SAMPLE else POOL_SAMPLE
        values = ", ".join(f"{a} {v:.4f}" for a, v in entry[metric].items())
        lines.append(f"{label} ({entry['examples']} examples, {entry['bytes']:,} bytes): {what} {values}")
        for key, title in (("selection_vs_random", "selection - random"),
                           ("selection_vs_stratified", "selection - stratified"),
                           ("random_vs_random", "random - random (null)")):
            if key in entry:
                c = entry[key]
                lines.append(f"  {title:<24} {c['difference']:+.4f} {unit}, 95% CI [{c['ci_low']:+.4f}, "
                             f"{c['ci_high']:+.4f}], p = {c['p_value']:.3g}: {c['verdict']}")
        lines.append(f"  verdict: {entry['verdict']}")
    if "lds_details" in r:
        from selectkit.evaluation import lds

        lines.extend(lds.render(r["lds_details"]))
    for w in r["warnings"]:
        lines.append(f"warning: {w}")
    lines.append(f"note: {r['caveat']}")
    lines.append(f"results in {evaluation.run_dir / 'manifest.json'} (evaluation), {r['seconds']['total']:.0f} s")
    return "\n".join(lines)
