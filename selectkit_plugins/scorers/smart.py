"""SMART filtering of evaluation sets (Gupta et al., "Improving Model Evaluation using SMART Filtering
of Benchmark Datasets", NAACL 2025, arXiv 2410.20245): drop multiple-choice items that tell models
apart poorly. Two scorers flag items; `dedup` on sentence embeddings removes the near-duplicates.

- `smart.easy`: every model of an ensemble (the scorer's `model` plus `models`) answers the item
  correctly with probability above `threshold` (0.8). SMART keeps a random `keep_fraction` (10%)
  of the easy items; here that draw is keyed by row id.
- `smart.choices_only`: every model answers correctly from the choices alone (a `prompt` without the
  question, default "Answer:") with probability above `threshold`: the item leaks its answer
  (SMART's "data contamination" filter).

Value: 1 = filtered (remove: a `threshold` stage with `max: 0` keeps the rest), 0 = kept, NaN
when a row has no scorable choice. A model's answer probability is the softmax over the item's
choices of log p(choice | prompt + separator), summed over the choice's tokens (the forward
provider's `choice_logprobs`, in the model's one forward step over the pool); its answer is the
most likely choice. Rows: `question`/`prompt` are templates, `choices` a list column (or a fixed
list), `answer` a column holding the correct choice's 0-based index, its letter (A, B, ...) or its
text.

Deviation: SMART reads the probability of the answer letter after a prompt listing the lettered
choices; that is this scorer with `choices: [A, B, C, D]` and a prompt template listing them. The
default scores the choices' own text as continuations (lm-evaluation-harness style), which works
for small models that cannot follow the letter format.
"""

from __future__ import annotations

from pydantic import Field

from selectkit.plugin import (
    DataError,
    FeatureRequest,
    Params,
    Score,
    ScoreContext,
    Scorer,
    hookimpl,
    lazy_import,
    row_keys,
    uniform,
)

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


class SmartParams(Params):
    choices: str | list[str] = Field("choices", description="a column holding each row's list of choices, or one "
                                     "fixed list for every row")
    answer: str = Field("answer", description="column with the correct choice: 0-based index, letter, or its text")
    separator: str = Field(" ", description="between the prompt and each choice")
    threshold: float = Field(0.8, ge=0, lt=1, description="answer probability every model must exceed (SMART: 0.8)")
    models: list[str] = Field(default_factory=list, description="further entries under `models` in the ensemble "
                              "(the scorer's own `model` is always in it)")


class EasyParams(SmartParams):
    question: str = Field("{question}", description="template of the prompt each choice continues")
    keep_fraction: float = Field(0.1, ge=0, le=1, description="share of the easy items kept anyway, drawn by row id "
                                 "(SMART: 0.1)")


class ChoicesOnlyParams(SmartParams):
    prompt: str = Field("Answer:", description="literal text each choice continues, without the question (the "
                        "choices alone)")


class _Smart(Scorer):
    literal: bool = False  # the prompt is literal text, the same for every row
    model_kinds = ("causal-lm",)
    model_params = ("models",)
    higher_is_better = True

    def prompt(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def ensemble(self, own: str | None) -> list[str | None]:
        return [None, *[m for m in self.params.models if m != own]]

    def request(self, model: str | None) -> FeatureRequest:
        p = self.params
        choices = tuple(p.choices) if isinstance(p.choices, list) else p.choices
        return FeatureRequest("choice_logprobs", "pool", tuple(sorted(
            {"prompt": self.prompt(), "choices": choices, "separator": p.separator,
             **({"literal_prompt": True} if self.literal else {})}.items())), model)

    def feature_requests(self, targets: list[str]) -> list[FeatureRequest]:
        return [self.request(m) for m in self.ensemble(None)]

    def confident(self, ctx: ScoreContext) -> np.ndarray:
        """Rows every model answers correctly with probability > threshold (NaN: nothing to score)."""
        from selectkit_plugins.scorers._model import store

        features = store(ctx, self.name)
        answers = None
        verdict = None
        for model in self.ensemble(None):
            r = self.request(model)
            logp = np.asarray(features.get(r.kind, r.data, model=model, **dict(r.settings)), np.float64)
            if answers is None:
                answers = answer_index(ctx.pool, self.params.answer, self.params.choices, logp)
            ok = model_confident(logp, answers, self.params.threshold)
            verdict = ok if verdict is None else np.where(np.isnan(verdict) | np.isnan(ok), np.nan,
                                                          np.minimum(verdict, ok))
        return verdict


def choice_probabilities(logp: np.ndarray) -> np.ndarray:
    """Softmax over each row's scored choices (NaN entries: no such choice)."""
    finite = np.isfinite(logp)
    top = np.where(finite.any(axis=1), np.nanmax(np.where(finite, logp, -np.inf), axis=1), 0.0)
    weights = np.where(finite, np.exp(np.where(finite, logp, 0.0) - top[:, None]), 0.0)
    total = weights.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, weights / total, np.nan)


def model_confident(logp: np.ndarray, answers: np.ndarray, threshold: float) -> np.ndarray:
    """1 where the most likely choice is the answer and its probability exceeds `threshold`, else 0
    (NaN where the row has no scored choice)."""
    prob = choice_probabilities(logp)
    rows = np.arange(len(prob))
    scored = ~np.isnan(prob).all(axis=1) & (answers >= 0)
    safe = np.where(answers >= 0, answers, 0)
    p_answer = prob[rows, safe]
    best = np.argmax(np.nan_to_num(prob, nan=-1.0), axis=1)
    return np.where(scored, ((best == safe) & (p_answer > threshold)).astype(np.float64), np.nan)


def answer_index(pool, column: str, choices, logp: np.ndarray) -> np.ndarray:
    """The 0-based index of each row's correct choice, read from an index, a letter or the choice text."""
    if column not in pool.columns:
        raise DataError(f"smart: the pool has no answer column {column!r} (columns: {', '.join(pool.columns)})")
    values = pool.column(column).to_list()
    if isinstance(choices, list):
        lists = [choices] * len(values)
    else:
        lists = [list(v or []) for v in pool.column(choices).to_list()]
    out = np.full(len(values), -1, dtype=np.int64)
    for i, (value, options) in enumerate(zip(values, lists)):
        options = [str(c) for c in options]
        if isinstance(value, bool) or value is None:
            index = None
        elif isinstance(value, (int, np.integer)):
            index = int(value)
        else:
            text = str(value).strip()
            if text in options:
                index = options.index(text)
            elif text.isdigit():
                index = int(text)
            elif len(text) == 1 and text.isalpha():
                index = ord(text.upper()) - ord("A")
            else:
                index = None
        if index is None or not 0 <= index < len(options) or index >= logp.shape[1]:
            raise DataError(f"smart: example {pool.ids[i]!r}: answer {value!r} is not one of its {len(options)} "
                            "choices (give a 0-based index, a letter or the choice's text)")
        out[i] = index
    return out


class Easy(_Smart):
    """SMART's easy filter: 1 when every model of the ensemble answers correctly with probability above
    `threshold` (bar a keyed `keep_fraction` kept anyway), else 0."""

    name = "smart.easy"
    Params = EasyParams

    def prompt(self) -> str:
        return self.params.question

    def run(self, ctx: ScoreContext) -> Score:

        easy = self.confident(ctx)
        kept = uniform(ctx.seed, ("smart.easy", "keep"), row_keys(ctx.pool.ids)) < self.params.keep_fraction
        return Score(values=np.where(np.isnan(easy), np.nan, np.where(kept, 0.0, easy)), higher_is_better=True)


class ChoicesOnly(_Smart):
    """SMART's contamination filter: 1 when every model of the ensemble answers correctly from the choices
    alone with probability above `threshold`, else 0."""

    name = "smart.choices_only"
    Params = ChoicesOnlyParams
    literal = True

    def prompt(self) -> str:
        return self.params.prompt

    def run(self, ctx: ScoreContext) -> Score:
        return Score(values=self.confident(ctx), higher_is_better=True)


@hookimpl
def register_scorers(register):
    register(Easy)
    register(ChoicesOnly)
