"""The linear datamodeling score (LDS; Park et al. 2023, "TRAK"; dattri's and kronfluence's measure of
attribution quality): does the sum of a subset's scores predict what training on that subset does to
the target loss?

    masks (K, N)   K keyed subsets of an N-row pool sample (a share alpha each)
    loss  (K, M)   each held-out target example's loss under the model retrained on subset k
    pred  (K, M)   -sum over subset k of the example's score column (positive score = helpful, so
                   a larger sum predicts a *lower* loss: the minus makes a good score correlate +)
    LDS = mean over examples j of Spearman(pred[:, j], loss[:, j])

The CI is a percentile bootstrap over subsets (resample the K rows, recompute the mean Spearman).
The control is a keyed random score through the same computation: its CI should contain 0.

Deviation from the papers: a recipe's scores are per target *task* (LESS averages over a task's
examples), so every held-out example of task t is predicted by the score's column(s) for t. The
held-out examples were never seen by the scorer, so this measures attribution that generalises to
the task, not to the very examples the gradients were taken on (dattri's per-example LDS).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from selectkit.evaluation.ranks import spearman

RANDOM = "random"
FIXES = ("usual fixes: damping (raise it for EK-FAC / inverse-Hessian scores), proj_dim (larger), checkpoints "
         "(more warmup epochs or runs), and more subsets (evaluate.lds.subsets) for a narrower CI")


# ---------------------------------------------------------------- the maths


def lds(pred: np.ndarray, loss: np.ndarray) -> float:
    """Mean over examples (columns) of Spearman(pred, loss) over subsets (rows); NaN columns skipped."""
    rho = spearman(pred, loss, axis=0)
    return float(np.nanmean(rho)) if np.isfinite(rho).any() else float("nan")


def bootstrap_ci(pred: np.ndarray, loss: np.ndarray, reps: int, seed: int, level: float = 0.95,
                 chunk: int = 64) -> tuple[float, float]:
    """Percentile CI of `lds` over `reps` resamples of the subsets (rows, with replacement)."""
    pred, loss = np.asarray(pred, float), np.asarray(loss, float)
    k = pred.shape[0]
    rng = np.random.default_rng([seed, 0x1D5])
    values = []
    for start in range(0, reps, chunk):
        m = min(chunk, reps - start)
        idx = rng.integers(0, k, size=(m, k))
        rho = spearman(pred[idx], loss[idx], axis=1)  # (m, M)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a resample with every column constant: NaN
            values.append(np.nanmean(rho, axis=1))
    v = np.concatenate(values)
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan"), float("nan")
    tail = (1 - level) / 2
    return float(np.quantile(v, tail)), float(np.quantile(v, 1 - tail))


def predictions(score: np.ndarray, masks: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """-(sum of the score over each subset) for each example: (K, M). `score` is (n,) or (n, C) over the
    sample's rows; `columns` (M,) gives each example's score column (ignored for a vector score)."""
    sums = masks.astype(np.float64) @ np.asarray(score, dtype=np.float64)  # (K,) or (K, C)
    if sums.ndim == 1:
        return -np.repeat(sums[:, None], len(columns), axis=1)
    return -sums[:, np.asarray(columns, dtype=np.int64)]


def measure(pred: np.ndarray, loss: np.ndarray, bootstrap: int, seed: int) -> dict:
    """{"lds": x, "ci": [lo, hi]} (rounded) for one score."""
    value = lds(pred, loss)
    lo, hi = bootstrap_ci(pred, loss, bootstrap, seed)
    return {"lds": _round(value), "ci": [_round(lo), _round(hi)]}


def control(masks: np.ndarray, loss: np.ndarray, keys: np.ndarray, seed: int, bootstrap: int,
            level: float = 0.95, chunk: int = 64) -> dict:
    """The random control: the LDS of a keyed random score (stream ("lds", "random")), and a CI whose
    replicates each draw a fresh keyed random score *and* resample the subsets. A fixed random score
    has a small true LDS of its own (its chance alignment with the data's effects: sd ~0.07 on
    breast_cancer LR), which a subsets-only bootstrap would report as a CI away from 0 one time in
    several; with both sources the CI is the null distribution, and it excludes 0 only when the
    machinery is broken (subsets or losses that depend on the score's stream)."""
    from selectkit.contract.keyed_random import uniform

    loss = np.asarray(loss, float)
    k, m = loss.shape
    first = uniform(seed, ("lds", RANDOM), keys)
    value = lds(predictions(first, masks, np.zeros(m, int)), loss)
    rng = np.random.default_rng([seed, 0x1D5, 1])
    values = []
    weights = masks.astype(np.float64)
    for start in range(0, bootstrap, chunk):
        reps = range(start, min(bootstrap, start + chunk))
        u = np.stack([uniform(seed, ("lds", RANDOM, str(b)), keys) for b in reps])  # (r, n)
        pred = -(weights @ u.T).T  # (r, K)
        idx = rng.integers(0, k, size=(len(reps), k))
        p = np.take_along_axis(pred, idx, 1)[:, :, None].repeat(m, 2)
        rho = spearman(p, loss[idx], axis=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            values.append(np.nanmean(rho, axis=1))
    v = np.concatenate(values)
    v = v[np.isfinite(v)]
    tail = (1 - level) / 2
    lo, hi = (float(np.quantile(v, tail)), float(np.quantile(v, 1 - tail))) if len(v) else (np.nan, np.nan)
    return {"lds": _round(value), "ci": [_round(lo), _round(hi)]}


def contains_zero(entry: dict) -> bool:
    lo, hi = entry["ci"]
    return lo is None or hi is None or lo <= 0 <= hi


def _round(x: float) -> float | None:
    return round(float(x), 4) if np.isfinite(x) else None


# ---------------------------------------------------------------- scores as per-example columns


def score_columns(score: Any, targets: Sequence[str], column: str | None = None) -> tuple[np.ndarray, dict] | None:
    """A score's values as (N,) or (N, T) with one column per target in `targets` (the mean of the
    score's columns of that task), oriented so higher means helpful. `column` picks one named column
    (a `name.column` reference) as a vector. None when the score has no column for any target."""
    values = np.asarray(score.oriented(), dtype=np.float64)
    if values.ndim == 1:
        return values, {}
    names = list(score.columns)
    if column is not None:
        return values[:, names.index(column)], {}
    tasks = list(score.tasks) if score.tasks else names
    out, where = [], {}
    for t in targets:
        cols = [j for j, task in enumerate(tasks) if task == t]
        if cols:
            where[t] = len(out)
            out.append(values[:, cols].mean(axis=1))
    if not out:
        return None
    return np.stack(out, axis=1), where


# ---------------------------------------------------------------- the run


def example_losses(model: Any, tokenizer: Any, texts: Sequence[str], max_length: int, batch_size: int = 16
                   ) -> np.ndarray:
    """Each text's mean token loss under `model` (eval mode, no gradient)."""
    import torch

    from selectkit.models.lm import batch, example_loss, mixed_precision

    out = []
    model.eval()
    with torch.no_grad():
        for a in range(0, len(texts), batch_size):
            b = batch(tokenizer, list(texts[a:a + batch_size]), None, max_length)
            b = {k: v.to(model.device) for k, v in b.items()}
            with mixed_precision(model):
                out.append(example_loss(model, b, empty=float("nan")).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


LOSS_KIND = "lds"  # cache kind of the held-out losses under one retrain
LOSS_VERSION = 1  # bump when `example_losses` changes what it computes
LOSS_BATCH = 16


def loss_settings(model_ref: Any) -> dict:
    """What a held-out loss depends on besides the retrain and the texts: the loss definition, the
    tokens kept, the precision and the device (all in a retrain's cache key or not, named here)."""
    spec = model_ref.spec
    return {"version": LOSS_VERSION, "loss": "mean token loss, no prompt mask", "batch": LOSS_BATCH,
            "max_length": spec.max_length, "dtype": spec.dtype, "device": spec.device}


def heldout_fingerprint(heldout: dict[str, list[str]]) -> str:
    """sha256 of the held-out rows, targets in order (their names included: the columns they score)."""
    import hashlib

    return hashlib.sha256(json.dumps([[name, list(texts)] for name, texts in heldout.items()],
                                     ensure_ascii=False).encode()).hexdigest()


def loss_key(retrain_key: str, heldout_print: str, settings: dict) -> str:
    """The cache key of one retrain's held-out losses: `<retrain step key>-heldout-<digest>`, so that
    `cache prune` keeps it exactly as long as it keeps the retrain (an entry `<key>-<part>` belongs to
    step `<key>`)."""
    import hashlib

    digest = hashlib.sha256(json.dumps([heldout_print, settings], sort_keys=True).encode()).hexdigest()[:20]
    return f"{retrain_key}-heldout-{digest}"


def retrained_losses(model_ref: Any, adapters: Sequence[Any], heldout: dict[str, list[str]],
                     allow_remote_code: bool = False, say: Callable[[str], None] | None = None,
                     what: str = "LDS: held-out losses under retrain", cache: Any = None,
                     keys: Sequence[str] | None = None) -> tuple[np.ndarray, int]:
    """(K, M) losses of the held-out examples (targets in order, concatenated) under each retrain, and how
    many retrains were measured (the rest read from `cache`, under `loss_key` of `keys[k]`, the retrains'
    step keys). The base model is loaded only when one is missing, once; each adapter is put on and taken
    off again."""
    texts = [t for name in heldout for t in heldout[name]]
    entries = [None] * len(adapters)
    rows: list[np.ndarray | None] = [None] * len(adapters)
    if cache is not None and keys is not None:
        settings, fingerprint = loss_settings(model_ref), heldout_fingerprint(heldout)
        entries = [loss_key(k, fingerprint, settings) for k in keys]
        for i, key in enumerate(entries):
            got = cache.read_arrays(LOSS_KIND, key)
            if got is not None and got[0]["loss"].shape == (len(texts),):
                rows[i] = got[0]["loss"]
    missing = [i for i, row in enumerate(rows) if row is None]
    if missing:
        from peft import PeftModel

        from selectkit.models.loader import load_model, peft_quietly

        ref = model_ref.without_lora()
        lm = load_model(ref.spec, ref.base, allow_remote_code=allow_remote_code, name=ref.name)
        for n, i in enumerate(missing):
            with peft_quietly():
                wrapped = PeftModel.from_pretrained(lm.model, str(adapters[i] / "adapter"))
            rows[i] = example_losses(wrapped, lm.tokenizer, texts, lm.max_length, LOSS_BATCH)
            lm.model = wrapped.unload()
            if entries[i] is not None:
                cache.write_arrays(LOSS_KIND, entries[i], {"loss": rows[i]},
                                   label=f"held-out losses under retrain {i + 1}/{len(adapters)}")
            if say:
                say(f"{what} {n + 1}/{len(missing)}")
    return np.stack(rows) if rows else np.zeros((0, len(texts))), len(missing)


def evaluate_lds(plan: Any, heldout: dict[str, list[str]], seed: int, options: dict | None = None,
                 say: Callable[[str], None] | None = None) -> dict:
    """Pull the plan's LDS retrains (cached ones load, missing ones train), measure the held-out losses,
    and score every measured score and the random control. Returns what the manifest records."""
    import time

    from selectkit.contract.keyed_random import keyed_subset, uniform
    from selectkit.execution.local import Run
    from selectkit.execution.progress import as_reporter
    from selectkit.planning import retrain
    from selectkit.planning.steps import PassPayload

    started = time.perf_counter()
    say = say or (lambda _: None)
    checked = plan.checked
    spec = checked.loaded.recipe.evaluate.lds
    run = Run(plan, as_reporter(say), dict(options or {}))
    pool = run.get("read:pool")
    steps = [s for s in plan.steps if isinstance(s.payload, PassPayload)
             and s.payload.work.requests[0].kind == "retrain"]
    adapters, statuses = [], []
    train_started = time.perf_counter()
    for step in steps:
        value = run.get(step.id)
        adapters.append(value[step.payload.work.requests[0]])
        statuses.append(run.status[step.id][0])
    train_seconds = time.perf_counter() - train_started
    model_ref = steps[0].payload.work.model
    sample = keyed_subset(pool.keys, seed, retrain.sample_draws(spec), eligible=pool.usable)
    masks = np.zeros((len(steps), len(sample)), dtype=bool)
    for k in range(len(steps)):
        rows = keyed_subset(pool.keys, seed, retrain.draws(spec, k), eligible=pool.usable)
        masks[k] = np.isin(sample, rows)
    measure_started = time.perf_counter()
    loss, measured = retrained_losses(model_ref, adapters, heldout, bool((options or {}).get("trust_remote_code")),
                                      say, cache=plan.cache, keys=[s.key for s in steps])
    measure_seconds = time.perf_counter() - measure_started
    targets = list(heldout)
    owner = np.concatenate([np.full(len(heldout[t]), i) for i, t in enumerate(targets)]).astype(int)
    finite = np.isfinite(loss).all(axis=0)  # an example without tokens has no loss
    names = retrain.measured_scores(spec, checked.scores, checked.registry)
    results: dict[str, dict] = {}
    subsets: dict[str, list] = {"loss": _rounded(np.nanmean(loss, axis=1))}
    for name in names:
        base, _, column = name.partition(".")
        score = run.get(f"score:{base}")
        got = score_columns(score, targets, column or None)
        if got is None:
            results[name] = {"lds": None, "ci": [None, None], "note": "no column for the held-out targets"}
            continue
        values, where = got
        values = values[sample]
        keep = finite & np.isin(owner, [targets.index(t) for t in where]) if where else finite
        cols = np.array([where[targets[o]] for o in owner[keep]] if where else np.zeros(int(keep.sum())), int)
        pred = predictions(values, masks, cols)
        results[name] = measure(pred, loss[:, keep], spec.bootstrap, seed)
        subsets[name] = _rounded(pred.mean(axis=1))
    results[RANDOM] = control(masks, loss[:, finite], pool.keys[sample], seed, spec.bootstrap)
    random_score = uniform(seed, ("lds", RANDOM), pool.keys[sample])
    subsets[RANDOM] = _rounded(predictions(random_score, masks, np.zeros(1, int))[:, 0])
    reused = sum(s == "cached" for s in statuses)
    return {"scores": results, "subsets": spec.subsets, "fraction": spec.fraction, "sample": int(len(sample)),
            "subset_rows": retrain.subset_size(spec), "model": model_ref.name, "examples": int(finite.sum()),
            "retrains": {"cached": reused, "trained": len(statuses) - reused},
            "losses": {"cached": len(steps) - measured, "measured": measured},
            "train": retrain.train_settings(spec, model_ref.spec).model_dump(mode="json"),
            "per_subset": subsets, "warnings": lds_warnings(results),
            "seconds": {"total": round(time.perf_counter() - started, 2), "retraining": round(train_seconds, 2),
                        "measuring": round(measure_seconds, 2)}}


def lds_warnings(results: dict[str, dict]) -> list[str]:
    out = []
    for name, entry in results.items():
        if name == RANDOM:
            if not contains_zero(entry):
                out.append(f"LDS: the random control's CI {entry['ci']} does not contain 0: the subsets are too "
                           "few or too alike to measure anything; raise evaluate.lds.subsets")
        elif entry.get("lds") is None:
            out.append(f"LDS of {name!r} could not be measured ({entry.get('note', 'constant predictions')})")
        elif contains_zero(entry):
            out.append(f"LDS of {name!r} is {entry['lds']:+.3f} with a CI {entry['ci']} that contains 0: its scores "
                       f"do not predict what the subsets do to the held-out loss; {FIXES}")
    return out


def public(report: dict) -> dict:
    """The `"lds"` object of `selectkit eval --format json`: {"<score>": {"lds": x, "ci": [lo, hi]}, ...}."""
    return {name: {"lds": e["lds"], "ci": e["ci"]} for name, e in report["scores"].items()}


def render(report: dict) -> list[str]:
    """Console lines."""
    lines = [f"LDS: {report['subsets']} subsets of {report['subset_rows']} rows from a {report['sample']}-row pool "
             f"sample, LoRA retrains of {report['model']} ({report['retrains']['cached']} cached, "
             f"{report['retrains']['trained']} trained), {report['examples']} held-out target examples"]
    for name, e in report["scores"].items():
        value = f"{e['lds']:+.3f}" if e["lds"] is not None else "n/a"
        ci = f"[{e['ci'][0]:+.3f}, {e['ci'][1]:+.3f}]" if None not in e["ci"] else "[n/a]"
        lines.append(f"  {name + (' (control)' if name == RANDOM else ''):<24} LDS {value}, 95% CI {ci}")
    return lines


def _rounded(values: np.ndarray) -> list:
    """Per-subset values to 8 significant digits (losses of retrains differ in the 4th decimal)."""
    return [float(f"{v:.8g}") if np.isfinite(v) else None for v in np.asarray(values, float)]
