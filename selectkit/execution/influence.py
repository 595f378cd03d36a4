"""What manifest.json records of each pairwise influence score (a scorer with an `influence_form`), so
that `selectkit explain --influence` can answer from the gradient store without the recipe, the data or
the model: the method, the cache entries of the pool's and each target's gradient features, the
checkpoints with their learning rates and the weights the score gives them, and the targets' ids.

Nothing is computed here: the checkpoints come from the run's values, or, when the score came from the
cache and its passes were never loaded, from the checkpoint step's cache entry (read, never computed)."""

from __future__ import annotations

from typing import Any

from selectkit.planning.steps import PassPayload, ScorePayload

TARGET_IDS = 100_000  # ids of a target recorded in the manifest up to this many rows (targets are dev sets)


def influence_entries(run: Any) -> dict[str, dict]:
    """score name -> its `influence` entry, for every score step whose scorer declares an inner-product form."""
    out = {}
    for step in run.plan.steps:
        payload = step.payload
        if not isinstance(payload, ScorePayload):
            continue
        form = payload.node.scorer.influence_form()
        if form is None:
            continue
        entry = _entry(run, payload, form)
        if entry is not None:
            out[payload.node.name] = entry
    return out


def _entry(run: Any, payload: ScorePayload, form: Any) -> dict | None:
    stores: dict[str, dict] = {}
    for request, step_id in payload.requests.items():
        step = run.plan.step(step_id)
        if request.kind != form.kind or request.data is None or not isinstance(step.payload, PassPayload):
            continue
        stores[request.data] = _store(step, request)
    if "pool" not in stores:
        return None
    pool_step = run.plan.step(stores["pool"]["step"])
    checkpoints = _checkpoints(run, pool_step)
    lrs = [c["lr"] for c in checkpoints] if checkpoints is not None else None
    weights = None
    if lrs is not None:
        total = sum(lrs)
        weights = [lr / total for lr in lrs] if form.normalize_lrs and total > 0 else list(lrs)
    targets = {}
    for name in payload.targets:
        if name not in stores:
            continue
        ds = run.targets.get(name)
        ids = [str(i) for i in ds.ids.to_list()] if ds is not None and len(ds) <= TARGET_IDS else None
        targets[name] = {**stores[name], "ids": ids}
    return {"method": form.method, "cosine": form.cosine, "normalize_lrs": form.normalize_lrs,
            "checkpoints": checkpoints, "weights": weights, "pool": stores["pool"], "targets": targets}


def _store(step: Any, request: Any) -> dict:
    """Where one data source's gradient features are: the pass step's cache entry and its shard layout."""
    work = step.payload.work
    settings = dict(request.settings)
    return {"step": step.id, "artifact": step.artifact, "key": step.key, "shards": step.shards,
            "row_shards": work.row_shards, "points": work.points, "feature_dtype": settings.get("feature_dtype"),
            "label": step.label}


def _checkpoints(run: Any, pass_step: Any) -> list[dict] | None:
    """[{name, lr}] of the checkpoints the pool's gradients were taken at: the pass's upstream
    `checkpoints` value (loaded already, or read from its complete cache entry); the model itself with
    lr 1 when nothing trains it; None when the entry is gone."""
    payload = pass_step.payload
    needs = {r: s for r, s in payload.needs.items() if r.kind == "checkpoints"} if isinstance(payload, PassPayload) \
        else {}
    if not needs:
        return [{"name": "model", "lr": 1.0}]
    request, step_id = next(iter(needs.items()))
    value = run.values.get(step_id)
    if value is None:
        step = run.plan.step(step_id)
        provider, work = step.payload.provider, step.payload.work
        store = run.cache.store(step.artifact, step.key)
        try:
            if not provider.complete(work, store):
                return None
            value = provider.load(work, run.pass_context(step))
        except Exception:  # noqa: BLE001 - the manifest records what it can; explain says what is missing
            return None
    found = value.get(request) if isinstance(value, dict) else None
    if found is None:
        return None
    return [{"name": str(getattr(c, "name", i)), "lr": float(getattr(c, "lr", 1.0))} for i, c in enumerate(found)]
