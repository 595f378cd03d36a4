"""Hardness for RL post-training by sampled pass rate (Pikus, Tiwari, Ye, "Hard Examples Are All You
Need", arXiv 2508.14094; reference `Pikus16/grpo_difficulty/gsm8k/create_subset.py`).

    pass_rate(x) = (1/K) Σ_j verify(completion_j(x), answer(x)),    score = 1 - pass_rate

with K = 8 completions sampled from the model at temperature 0.9, up to 256 new tokens (the
`generate` provider's `completions`), each checked by a verifier (`register_verifiers`:
`exact_match`, `regex`, `numeric`). Higher is harder; the paper trains GRPO on the hardest 10%
(`topk` with `budget: 10%`). A prompt solved by all or none of its K samples gives a GRPO group
with no reward variance, hence no learning signal: `pass_band: [lo, hi]` keeps only pass rates in
that band (e.g. [0.125, 0.875] with K = 8 drops always- and never-solved prompts); the others get
NaN, so no stage selects them (the stage's diagnostics count them as unscorable).

A row whose reference answer is null or absent has nothing to verify against: `on_missing: error`
(the default) stops before generation, at validate for the first rows and at the score for the
rest; `skip` gives such rows NaN (never selected) with a warning and a count in the manifest;
`score` scores them like any row (every completion fails, so they look hardest), with a warning.
validate also checks that `prompt` and `answer` name columns of the pool and that the verifier can
check the real reference answers of its first rows.

Deviations: sampling is keyed by row id (the completions do not depend on batching, sharding or
devices; the reference samples with vLLM's batch RNG); ties in the score are broken by row key in
`topk`, where the reference breaks them at random.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from selectkit.plugin import (
    DataError,
    FeatureRequest,
    Params,
    PluginError,
    Score,
    ScoreContext,
    Scorer,
    SelectkitWarning,
    find_component,
    hookimpl,
    lazy_import,
    render_missing,
)

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


class VerifierRef(Params):
    """`{use: name, with: {...}}`: a verifier and its params, checked when the recipe is validated."""

    use: str = Field(description="verifier name (exact_match, regex, numeric, or a plugin's)")
    with_: dict[str, Any] = Field(default_factory=dict, alias="with", description="the verifier's params")

    model_config = {**Params.model_config, "populate_by_name": True}

    @model_validator(mode="after")
    def _resolves(self):
        build_verifier(self)
        return self


def build_verifier(ref: VerifierRef) -> Any:
    """The configured verifier, or a ValueError naming what is wrong (an unknown name, bad params)."""
    from pydantic import ValidationError

    try:
        cls = find_component("verifiers", ref.use)
    except PluginError as exc:
        raise ValueError(exc.message) from None
    try:
        return cls(cls.Params.model_validate(ref.with_))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'with'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"verifier {ref.use!r}: {problems}") from None


class PassRateParams(Params):
    prompt: str = Field(description="column or '{template}': the prompt each completion continues")
    answer: str = Field(description="column or '{template}' holding the reference answer the verifier checks")
    verifier: VerifierRef = Field(default_factory=lambda: VerifierRef(use="numeric"),
                                  description="how a completion is checked: {use: exact_match|regex|numeric, with: "
                                  "{...}}")
    samples: PositiveInt = Field(8, description="completions per prompt (K; the paper: 8, the GRPO group size)")
    temperature: float = Field(0.9, gt=0, description="sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass (1: off)")
    max_new_tokens: PositiveInt = Field(256, description="most tokens generated per completion")
    pass_band: tuple[float, float] | None = Field(
        None, description="[lo, hi]: keep prompts whose pass rate lies in the band (inclusive), NaN for the others; "
        "e.g. [0.125, 0.875] with 8 samples drops prompts solved always or never")
    on_missing: Literal["error", "skip", "score"] = Field(
        "error", description="a row whose reference answer is null or absent: error (stop), skip (NaN: never "
        "selected, counted in a warning) or score (every completion fails: scored as hardest, with a warning)")

    @field_validator("pass_band")
    @classmethod
    def _band(cls, value):
        if value is not None and not 0 <= value[0] <= value[1] <= 1:
            raise ValueError("pass_band is [lo, hi] with 0 <= lo <= hi <= 1")
        return value


class PassRate(Scorer):
    """1 - pass rate of K sampled completions under a verifier (hardness for GRPO, Pikus et al. 2025);
    higher is harder. Generation is the `generate` pass provider's."""

    name = "pass_rate"
    Params = PassRateParams
    model_kinds = ("causal-lm",)
    higher_is_better = True

    def request(self) -> FeatureRequest:
        p = self.params
        return FeatureRequest("completions", "pool", tuple(sorted({
            "prompt": p.prompt, "samples": p.samples, "temperature": p.temperature, "top_p": p.top_p,
            "max_new_tokens": p.max_new_tokens}.items())))

    def feature_requests(self, targets: list[str]) -> list[FeatureRequest]:
        return [self.request()]

    def check_pool(self, frame: Any) -> list[tuple[str, str, str]]:
        """The prompt and answer name pool columns; the first rows have references (unless on_missing
        says otherwise) that the verifier can check."""
        from types import SimpleNamespace

        p = self.params
        rows = SimpleNamespace(rows=frame, name="pool")
        problems = []
        for param in ("prompt", "answer"):
            try:
                render_missing(rows, getattr(p, param), as_list=True)
            except DataError as exc:
                problems.append(("error", param, f"{self.name}: `{param}`: {exc.message}"))
        if problems:
            return problems
        answers, missing = render_missing(rows, p.answer, as_list=True)
        if p.on_missing == "error" and any(missing):
            row = missing.index(True)
            problems.append(("error", "answer", f"{self.name}: pool row {row + 1} has no reference answer "
                             f"({p.answer!r} is null or absent); set `on_missing: skip` to leave such rows "
                             "unscored"))
        verifier = build_verifier(p.verifier)
        problem = verifier.check_references([a for a, m in zip(answers, missing) if not m])
        if problem:
            problems.append(("error", "verifier", f"verifier {p.verifier.use!r}: {problem}"))
        problems += [("warning", "verifier", f"verifier {p.verifier.use!r}: {text}") for text in verifier.advice()]
        return problems

    def run(self, ctx: ScoreContext) -> Score:
        from selectkit_plugins.scorers._model import store

        p = self.params
        r = self.request()
        completions = store(ctx, self.name).get(r.kind, r.data, **dict(r.settings))
        answers, missing = render_missing(ctx.pool, p.answer)
        if len(completions) != len(answers):
            raise DataError(f"{self.name}: {len(completions)} completion lists for {len(answers)} examples")
        count = int(missing.sum())
        if count and p.on_missing == "error":
            first = ctx.pool.ids[int(missing.argmax())]
            raise DataError(f"{self.name}: {count} of {len(answers)} examples have no reference answer "
                            f"({p.answer!r} is null or absent; the first: id {first!r})",
                            hint="fill them in, or set `on_missing: skip` (never selected) or `score`")
        if count:
            what = "left unscored (NaN: never selected)" if p.on_missing == "skip" else \
                "scored as if every completion failed (hardest)"
            warnings.warn(f"{self.name}: {count} of {len(answers)} examples have no reference answer "
                          f"({p.answer!r}); {what} (on_missing: {p.on_missing})", SelectkitWarning, stacklevel=2)
        verifier = build_verifier(p.verifier)
        rate = pass_rates(verifier, completions, answers, ctx.pool.ids,
                          skip=missing if p.on_missing == "skip" else None)
        score = 1.0 - rate
        if p.pass_band is not None:
            lo, hi = p.pass_band
            score = np.where((rate >= lo - 1e-12) & (rate <= hi + 1e-12), score, np.nan)
        return Score(values=score, higher_is_better=True)


def pass_rates(verifier: Any, completions: list[list[str]], answers: list[str], ids: Any = None,
               skip: Any = None) -> np.ndarray:
    """Share of each row's completions the verifier accepts (NaN where `skip` is set or there are
    none); a verifier's error names the row it failed on."""
    out = np.full(len(answers), np.nan, dtype=np.float64)
    for i, (cs, a) in enumerate(zip(completions, answers)):
        if not cs or (skip is not None and skip[i]):
            continue
        try:
            out[i] = np.mean([verifier.check(c, a) for c in cs])
        except DataError as exc:
            row = f"id {ids[i]!r}" if ids is not None else f"row {i + 1}"
            raise type(exc)(f"{exc.message} (example {row})", hint=exc.hint, code=exc.code) from None
    return out


@hookimpl
def register_scorers(register):
    register(PassRate)
