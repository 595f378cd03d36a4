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

Deviations: sampling is keyed by row id (the completions do not depend on batching, sharding or
devices; the reference samples with vLLM's batch RNG); ties in the score are broken by row key in
`topk`, where the reference breaks them at random.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, PositiveInt, field_validator, model_validator

from selectkit.plugin import (
    DataError,
    FeatureRequest,
    Params,
    PluginError,
    Score,
    ScoreContext,
    Scorer,
    find_component,
    hookimpl,
    lazy_import,
    render,
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

    def run(self, ctx: ScoreContext) -> Score:
        from selectkit_plugins.scorers._model import store

        p = self.params
        r = self.request()
        completions = store(ctx, self.name).get(r.kind, r.data, **dict(r.settings))
        answers = render(ctx.pool, p.answer)
        if len(completions) != len(answers):
            raise DataError(f"{self.name}: {len(completions)} completion lists for {len(answers)} examples")
        rate = pass_rates(build_verifier(p.verifier), completions, answers)
        score = 1.0 - rate
        if p.pass_band is not None:
            lo, hi = p.pass_band
            score = np.where((rate >= lo - 1e-12) & (rate <= hi + 1e-12), score, np.nan)
        return Score(values=score, higher_is_better=True)


def pass_rates(verifier: Any, completions: list[list[str]], answers: list[str]) -> np.ndarray:
    """Share of each row's completions the verifier accepts."""
    return np.array([np.mean([verifier.check(c, a) for c in cs]) if cs else np.nan
                     for cs, a in zip(completions, answers)], dtype=np.float64)


@hookimpl
def register_scorers(register):
    register(PassRate)
