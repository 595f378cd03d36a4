"""The retraining work of `evaluate.lds`, as plan steps: which model is retrained with which LoRA
settings, the K keyed subsets (nested keyed draws: an N-row sample of the pool, then a share
alpha of it per subset), and one `retrain` request per subset for the `train` pass provider.

`selectkit plan` shows these steps with their cost; `selectkit run` never pulls them (the outputs
do not need them); `selectkit eval` does. Which scores are measured is decided here too, so that
validate, plan and eval agree: every gradient score against targets, plus the ones the recipe names.
"""

from __future__ import annotations

import json
from typing import Any

from selectkit.contract.features import FeatureRequest

GRADIENT_PROVIDER = "gradients"  # the pass provider whose work makes a score "gradient-based"


def subset_size(spec: Any) -> int:
    """Rows in each subset: round(fraction * sample), at least 1 and at most sample - 1."""
    return min(spec.sample - 1, max(1, int(round(spec.fraction * spec.sample))))


def draws(spec: Any, index: int) -> tuple:
    """The nested keyed draws of subset `index` (see `keyed_random.keyed_subset`)."""
    return ((("lds", "sample"), int(spec.sample)), (("lds", "subset", str(index)), subset_size(spec)))


def sample_draws(spec: Any) -> tuple:
    return ((("lds", "sample"), int(spec.sample)),)


def is_gradient(node: Any, registry: Any) -> bool:
    """Whether a score reads per-example gradients (a request served by the gradients provider)."""
    try:
        requests = node.scorer.feature_requests(list(node.targets))
        return any(registry.provider(r.kind).name == GRADIENT_PROVIDER for r in requests)
    except Exception:  # noqa: BLE001 - a scorer that cannot say is not counted as gradient-based
        return False


def measured_scores(spec: Any, nodes: dict[str, Any], registry: Any) -> list[str]:
    """The scores LDS measures: gradient scores with targets (recipe order), then the named ones."""
    out = [n for n, node in nodes.items() if node.targets and node.surrogate is None and not node.lazy
           and is_gradient(node, registry)]
    for name in spec.scores or []:
        if name not in out:
            out.append(name)
    return out


def lds_model(spec: Any, nodes: dict[str, Any], registry: Any) -> str | None:
    """The model retrained: `lds.model`, else the model of the first gradient score measured."""
    if spec.model:
        return spec.model
    for name in measured_scores(spec, nodes, registry):
        node = nodes.get(name)
        if node is not None and node.model and is_gradient(node, registry):
            return node.model
    for name in measured_scores(spec, nodes, registry):
        node = nodes.get(name)
        if node is not None and node.model:
            return node.model
    return None


def train_settings(spec: Any, model_spec: Any) -> Any:
    """The retrain's TrainSpec: `lds.train`, else the model's warmup settings, else the defaults."""
    from selectkit.recipe.spec import TrainSpec

    if spec.train is not None:
        return spec.train
    if model_spec.warmup is not None:
        return model_spec.warmup.train()
    return TrainSpec()


def requests(spec: Any, model: str, train: Any, seed: int) -> list[FeatureRequest]:
    """One `retrain` request per subset, in subset order."""
    settings = json.dumps(train.model_dump(mode="json"), sort_keys=True)
    return [FeatureRequest("retrain", "pool", (("draws", draws(spec, k)),
                                               ("label", f"LDS subset {k + 1}/{spec.subsets}"),
                                               ("seed", int(seed)), *_start(spec), ("train", settings)), model)
            for k in range(spec.subsets)]


def _start(spec: Any) -> tuple:
    """The `start` setting of a retrain request: the checkpoint it continues (none: a new LoRA)."""
    return (("start", spec.checkpoint),) if spec.checkpoint is not None else ()


# ---------------------------------------------------------------- retraining from a named checkpoint


def checkpoint_names(model_spec: Any) -> list[str]:
    """The names of a model's checkpoints, as the manifest shows them: `epoch-N` of its warmup, or
    the folder names of its `checkpoints:`."""
    from pathlib import PurePath

    if model_spec.warmup is not None:
        return [f"epoch-{e + 1}" for e in range(model_spec.warmup.epochs)]
    return [PurePath(c).name for c in model_spec.checkpoints or []]


def checkpoint_problem(model: str, model_spec: Any, name: str, train: Any) -> tuple[str, str] | None:
    """Why a retrain of `model` with `train` settings cannot start from checkpoint `name` (message,
    hint), or None. A retrain continues the checkpoint's LoRA, so a warmup checkpoint's LoRA shape
    (rank, alpha, target modules) must be the retrain's; a `checkpoints:` folder's is checked when
    it is read."""
    names = checkpoint_names(model_spec)
    if not names:
        return (f"model {model!r} has no checkpoints to start from",
                f"give models.{model}.warmup or models.{model}.checkpoints, or remove `checkpoint:`")
    if name not in names:
        return f"model {model!r} has no checkpoint {name!r}", f"one of: {', '.join(names)}"
    if model_spec.warmup is not None:
        have, want = model_spec.warmup.lora, train.lora
        shape = ("r", "alpha", "target_modules")
        if any(getattr(have, k) != getattr(want, k) for k in shape):
            return (f"checkpoint {name!r} is a LoRA with "
                    + ", ".join(f"{k}={getattr(have, k)}" for k in shape)
                    + ", and the retrain's LoRA has " + ", ".join(f"{k}={getattr(want, k)}" for k in shape),
                    "leave the retrain's LoRA to the warmup's (drop `lora` from its `train`), or make them equal")
    return None


def lds_seed(recipe: Any) -> int:
    """LDS draws and retrains are keyed by the evaluate seed (default: the recipe seed)."""
    spec = recipe.evaluate
    return spec.seed if spec is not None and spec.seed is not None else recipe.seed


# ---------------------------------------------------------------- eval's arms on the recipe's own model


def seed_of(seed: int, *labels: Any) -> int:
    """A 63-bit seed for (seed, labels): eval's pair seeds and its statistics' generators."""
    import hashlib

    text = "\x1f".join([str(seed), "evaluate", *map(str, labels)]).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


def arm_names(spec: Any, summarize_by: str | None) -> list[str]:
    """The arms of `selectkit eval`, in order (the stratified arm needs `output.summarize_by`)."""
    return ["selection", "random", *(["stratified"] if spec.stratified and summarize_by else []),
            *(["null"] if spec.random_vs_random else [])]


def arm_train_settings(proxy: Any, model_spec: Any) -> Any:
    """The arms' TrainSpec: `proxy.train`, else the model's warmup settings, else the defaults; with
    `proxy.lora` as its LoRA when given."""
    from selectkit.recipe.spec import TrainSpec

    train = proxy.train or (model_spec.warmup.train() if model_spec.warmup is not None else TrainSpec())
    return train.model_copy(update={"lora": proxy.lora}) if proxy.lora is not None else train


def arm_requests(spec: Any, summarize_by: str | None, model: str, train: Any, seed: int, selection_key: str,
                 examples: int | None) -> list[FeatureRequest]:
    """One `retrain` request per (seed pair, arm). Its rows are fixed by `selectkit eval` once the
    selection is known; they are a function of the selection (its step key), the pool, these eval
    settings and the seed, so the key below names them before they exist."""
    settings = json.dumps(train.model_dump(mode="json"), sort_keys=True)
    identity = {"selection": selection_key, "pool_sample": spec.pool_sample, "max_tokens": spec.proxy.max_tokens,
                "summarize_by": summarize_by, "seed": seed}
    arms = arm_names(spec, summarize_by)
    out = []
    for i in range(spec.random_subsets):
        for arm in arms:
            arm_id = json.dumps({**identity, "arm": arm, "pair": i}, sort_keys=True)
            out.append(FeatureRequest("retrain", "pool", (
                ("arm", arm_id), ("examples", examples),
                ("label", f"eval pair {i + 1}/{spec.random_subsets}: {arm} arm"),
                ("seed", seed_of(seed, "pair", i)), *_start(spec.proxy), ("train", settings)), model))
    return out


def arm_of(request: FeatureRequest) -> tuple[str, int] | None:
    """(arm, pair) of an eval arm's retrain request; None for any other request."""
    arm = request.options.get("arm") if request.kind == "retrain" else None
    if arm is None:
        return None
    identity = json.loads(arm)
    return identity["arm"], int(identity["pair"])
