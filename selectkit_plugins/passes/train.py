"""The training pass provider: the checkpoints a model's gradient scorers read.

`checkpoints` of a model are its `warmup` (a LoRA trained here on a keyed sample of the pool,
one checkpoint per epoch, each epoch a cache shard: a killed warmup resumes after its last
finished epoch and ends byte-identical), its `checkpoints:` folders (read, never written), or
the model itself as one checkpoint of weight 1.

The `run` setting asks for independent trainings of the same warmup (EL2N / GraNd averaged over
seeded runs, Paul et al. 2021): run 0 (or none) is the warmup as configured; run r > 0 trains it
again with a seed derived from (the warmup's seed, r), so its pool sample, LoRA initialisation,
data order and dropout all differ. Each run is its own planned step, resumable per epoch.

The `retrain` kind is the retraining primitive (LDS, `evaluate.lds`): a LoRA trained from the
model's base on a keyed subset of the pool (`keyed_subset`: nested draws keyed by row id), with
the same `Warmup` loop and the same settings as the warmup (a `TrainSpec`), one cache shard per
epoch. Its key is (base model, pool, the subset's draws, settings, seed): equal retrains are
computed once, across recipes and runs, and a killed LDS run resumes from the finished ones.
`selectkit eval` with `evaluate.proxy.model` trains its arms (selection, random, stratified, null)
through the same kind: an `arm` setting instead of `draws`, the rows given at run time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selectkit.plugin import (
    FeatureRequest,
    ModelRef,
    PassContext,
    PassPlan,
    PassProvider,
    PassWork,
    PlanContext,
    SelectkitError,
    StepStore,
    TrainSpec,
    hookimpl,
    keyed_subset,
    path_fingerprint,
    prompts_of,
)


class Train(PassProvider):
    """Warmup training (LESS), LoRA retrains on keyed pool subsets (LDS), and the checkpoint list of a model."""

    name = "train"
    version = "3"  # 3: a one-step warmup trains (its only step no longer has rate 0)
    parallel = False  # epoch e starts from epoch e - 1
    kinds = {"checkpoints": {"run": None},
             "retrain": {"draws": None, "train": None, "seed": None, "label": None, "arm": None, "examples": None,
                         "start": None}}

    def plan(self, model: ModelRef, requests: list[FeatureRequest], ctx: PlanContext) -> list[PassPlan]:
        out = [self._plan_retrain(model, r, ctx) for r in requests if r.kind == "retrain"]
        requests = [r for r in requests if r.kind != "retrain"]
        runs: dict[int, list[FeatureRequest]] = {}
        for r in requests:
            runs.setdefault(int(dict(r.settings).get("run") or 0), []).append(r)
        if runs and set(runs) != {0} and model.spec.warmup is None:  # retrains alone need no warmup
            raise SelectkitError(f"model {model.name!r}: several training runs need a `warmup` to repeat "
                                 "(models.<name>.warmup)")
        for run, reqs in sorted(runs.items()):
            out.extend(self._plan_run(model, reqs, ctx, run))
        return out

    def _plan_retrain(self, model: ModelRef, request: FeatureRequest, ctx: PlanContext) -> PassPlan:
        """One LoRA fine-tune on a keyed subset of the pool: a new LoRA on the base model, or (`start`)
        one of the model's checkpoints continued, which makes the step read the model's checkpoints
        (its warmup: planned upstream, keyed into this step's key)."""
        import hashlib
        import json

        settings = request.options
        train = TrainSpec.model_validate(json.loads(settings["train"]))
        draws, seed, arm = settings.get("draws"), int(settings["seed"]), settings.get("arm")
        if model.spec.kind != "causal-lm":
            raise SelectkitError(f"model {model.name!r} is a {model.spec.kind}; retraining needs a causal-lm")
        base = ctx.fingerprint(model.without_lora())
        examples = settings.get("examples") or (int(draws[-1][1]) if draws else ctx.rows.get("pool"))
        estimate = ctx.estimate(model, "pool", backward=True, examples=examples)
        if estimate is not None:
            estimate = estimate.scaled(train.epochs, f"LoRA training: {train.epochs} epochs of forward + backward",
                                       work="training")
        # an eval arm's rows are fixed by `selectkit eval` (config[3]); `arm` names them (see planning.retrain)
        rows = ["arm", arm] if arm is not None else [[list(labels), int(c)] for labels, c in draws or ()]
        parts = ["retrain", base, ctx.sources["pool"].fingerprint, rows, train.model_dump(mode="json"), seed]
        start = settings.get("start")
        if start is not None:  # the checkpoints step's key joins the step key through `needs`
            parts.append(["start", start])
        name = "retrain-" + hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]
        label = settings.get("label") or f"retrain {model.name} on {examples} pool rows"
        origin = f"checkpoint {start} continued" if start is not None else "LoRA from the base"
        return PassPlan(name, f"{label}: {origin}, {train.epochs} epochs", [request], "pool", parts,
                        needs=[FeatureRequest("checkpoints", "pool")] if start is not None else [],
                        shards=train.epochs, estimate=estimate, artifact="train", config=(seed, draws, train, None),
                        detail={"examples": examples, "epochs": train.epochs, "lr": train.learning_rate,
                                "lora": train.lora.model_dump(mode="json"),
                                "lora targets": planned_targets(model, ctx, train),
                                **({"starts from": start} if start is not None else {})})

    def _plan_run(self, model: ModelRef, requests: list[FeatureRequest], ctx: PlanContext,
                  run: int) -> list[PassPlan]:
        spec = model.spec
        if spec.warmup is not None:
            warm = spec.warmup
            base = ctx.fingerprint(model.without_lora())
            seed = warm.seed if warm.seed is not None else ctx.seed
            if run:
                seed = run_seed(seed, run)
            rows = ctx.rows.get("pool")
            examples = max(1, int(warm.fraction * rows)) if rows else None
            estimate = ctx.estimate(model, "pool", backward=True, examples=examples)
            if estimate is not None:
                estimate = estimate.scaled(warm.epochs, f"LoRA training: {warm.epochs} epochs of forward + backward",
                                           work="training")
            label = f"warmup {model.name}" + (f" (run {run + 1})" if run else "")
            return [PassPlan("warmup" + (f"-run-{run}" if run else ""),
                             f"{label}: LoRA on {warm.fraction:.0%} of the pool, {warm.epochs} epochs", requests,
                             "pool", ["warmup", base, ctx.sources["pool"].fingerprint, warm.model_dump(mode="json"),
                                      seed],
                             shards=warm.epochs, estimate=estimate, artifact="train", config=seed,
                             detail={"epochs": warm.epochs, "lr": warm.learning_rate,
                                     "lora": warm.lora.model_dump(mode="json"),
                                     "lora targets": planned_targets(model, ctx)})]
        if spec.checkpoints:
            folders = [_resolve(model, c) for c in spec.checkpoints]
            prints = [path_fingerprint(f) if f.exists() else str(f) for f in folders]
            return [PassPlan("given", f"checkpoints of {model.name}: {len(folders)} folders", requests, None,
                             ["given", prints], artifact="given", config=tuple(str(f) for f in folders))]
        return [PassPlan("model", f"{model.name} as its only checkpoint", requests, None, ["model"],
                         artifact="given")]

    def complete(self, work: PassWork, store: StepStore) -> bool:
        if work.artifact == "given":
            return True
        return store.shards(work.shards).complete()

    def run(self, work: PassWork, ctx: PassContext, shards: list[int] | None = None) -> None:
        if work.artifact == "given":
            return
        from selectkit_plugins.lib.influence.warmup import warmup_rows

        if _is_retrain(work):
            seed, draws, spec, *given = work.config
            if given and given[0] is not None:  # an eval arm: the rows `selectkit eval` fixed
                rows = given[0]
            elif draws is None:
                raise SelectkitError(f"{work.label}: an eval arm trains on rows that `selectkit eval` fixes once "
                                     "the selection is known; run `selectkit eval`")
            else:
                rows = keyed_subset(ctx.pool.keys, seed, draws, eligible=ctx.pool.usable)
            name = work.requests[0].options.get("start")
            start = _named(ctx.input("checkpoints"), name, work) if name is not None else None
        else:
            spec, seed, start = work.model.spec.warmup, work.config, None
            rows = warmup_rows(ctx.pool.keys, spec.fraction, seed)
        train_lora(work, ctx, spec, seed, rows, start)

    def load(self, work: PassWork, ctx: PassContext) -> dict[FeatureRequest, Any]:
        if _is_retrain(work):  # the trained adapter: the last epoch's checkpoint
            folder = ctx.store.shards(work.shards).open(work.shards - 1)
            if folder is None:
                raise RuntimeError("the retrained adapter is missing from the cache; run again")
            return {r: folder for r in work.requests}
        return self._load_checkpoints(work, ctx)

    def _load_checkpoints(self, work: PassWork, ctx: PassContext) -> dict[FeatureRequest, Any]:
        from selectkit_plugins.lib.influence.checkpoints import Checkpoint, read_checkpoints, warmup_checkpoint

        if work.artifact == "given":
            value = read_checkpoints(work.config) if work.config else [Checkpoint("model")]
        else:
            entry = ctx.store.shards(work.shards)
            value = []
            for epoch in range(work.shards):
                folder = entry.open(epoch)
                if folder is None:
                    raise RuntimeError(f"warmup epoch {epoch + 1} is missing from the cache; run again")
                value.append(warmup_checkpoint(folder, f"epoch-{epoch + 1}"))
        return {r: value for r in work.requests}


def _is_retrain(work: PassWork) -> bool:
    return bool(work.requests) and work.requests[0].kind == "retrain"


def _named(checkpoints: list[Any], name: str, work: PassWork) -> Any:
    """The checkpoint called `name` (validate checked the name; a `checkpoints:` folder may have
    changed since)."""
    for checkpoint in checkpoints:
        if checkpoint.name == name and checkpoint.adapter is not None:
            return checkpoint
    raise SelectkitError(f"{work.label}: model {work.model.name!r} has no checkpoint {name!r} (has: "
                         f"{', '.join(c.name for c in checkpoints)})")


def train_lora(work: PassWork, ctx: PassContext, spec: Any, seed: int, rows: Any, start: Any = None) -> None:
    """Train a LoRA on pool `rows` with `spec` (a TrainSpec), one cache shard per epoch; resumes
    after the last finished epoch (the warmup and every retrain run through here). The LoRA is new
    on the base model, or `start`'s (a Checkpoint) weights continued with a fresh optimizer."""
    from selectkit_plugins.lib.influence.warmup import Warmup

    entry = ctx.store.shards(work.shards, label=work.label)
    missing = entry.missing()
    if not missing:
        return
    data = ctx.pool.take(rows)
    lm = ctx.model(work.model.without_lora(), private=True)  # a new LoRA on the base model
    run = Warmup(lm.model, lm.tokenizer, data.texts, spec, seed=seed, max_length=lm.max_length,
                 prompts=prompts_of(data, spec.response), target_modules=_targets(lm, spec))
    first = missing[0]
    if start is not None and first == 0:
        from selectkit_plugins.lib.influence.warmup import load_lora_weights

        load_lora_weights(run.model, start.adapter, f"{work.label}: checkpoint {start.name}")
    if first > 0:
        previous = entry.open(first - 1)
        if previous is None:  # pragma: no cover - missing() said it was there
            raise RuntimeError("training checkpoint vanished")
        run.restore(previous)
    for epoch in range(first, spec.epochs):
        info = run.train_epoch(epoch, progress=lambda s, total, loss, e=epoch: ctx.say(
            done=s, total=total, unit=f"epoch {e + 1}/{spec.epochs} step", loss=loss))
        if not entry.done(epoch):
            with entry.stage(epoch) as staging:
                run.save(staging.folder, info)
                staging.commit()
    ctx.say(done=spec.epochs, total=spec.epochs, unit="epoch")


def _targets(lm: Any, warm: Any) -> list[str]:
    """The LoRA's target modules: the recipe's, else the architecture's attention projections."""
    if warm.lora.target_modules:
        return list(warm.lora.target_modules)
    from selectkit_plugins.lib.influence.layers import default_lora_targets

    return default_lora_targets(lm.model.config.model_type, lm.model)


def planned_targets(model: ModelRef, ctx: PlanContext, train: Any = None) -> str:
    """What the plan shows for the LoRA targets (read from config.json, torch-free)."""
    lora = (train or model.spec.warmup).lora
    if lora.target_modules:
        return ", ".join(lora.target_modules)
    from selectkit_plugins.lib.influence.layers import LORA_TARGETS

    config = ctx.config(model)
    model_type = config.get("model_type") if config is not None else None
    known = LORA_TARGETS.get(model_type)
    return ", ".join(known) + f" (default for {model_type})" if known else \
        f"the attention projections found when the model loads ({model_type})"


def _resolve(model: ModelRef, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else model.base / p


def run_seed(seed: int, run: int) -> int:
    """The seed of training run `run` > 0 of a warmup whose own seed is `seed`."""
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{seed}\x1fwarmup-run\x1f{run}".encode()).digest()[:4], "little")


CHECKPOINTS = FeatureRequest("checkpoints", "pool")


@hookimpl
def register_passes(register):
    register(Train)
