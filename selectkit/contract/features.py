"""What a scorer asks of a model pass (a FeatureRequest), and its view of the answers (Features).

A scorer declares requests; the planner hands each to the pass provider that serves its kind,
which fills in the defaults (`canonical`) so equal work compares equal and runs once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from selectkit.errors import SelectkitError


@dataclass(frozen=True)
class FeatureRequest:
    """Something a scorer needs from a model pass: a `kind` that some pass provider serves
    (token_logprobs, loss, embedding, grad_features, ...), over one data source, with settings.

    `data` is "pool" or a target name; `settings` are hashable (name, value) pairs; `model` names
    an entry under `models` (None: the scorer's own model). The planner computes each distinct
    request once and fuses the requests one provider can serve together (e.g. every forward
    feature of one model over one source comes from one forward pass).
    """

    kind: str
    data: str = "pool"
    settings: tuple[tuple[str, Any], ...] = ()
    model: str | None = None

    @classmethod
    def of(cls, kind: str, data: str = "pool", model: str | None = None, **settings: Any) -> FeatureRequest:
        """`FeatureRequest.of("loss", "pool", response="answer")`: settings as keywords (lists become
        tuples, so the request stays hashable; the provider fills in the rest)."""
        return cls(kind, data, tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in settings.items())),
                   model)

    @property
    def options(self) -> dict[str, Any]:
        """The settings as a dict."""
        return dict(self.settings)


def describe(request: FeatureRequest) -> str:
    """`model:kind[data](setting=value,...)`: how plans and errors name a request."""
    settings = ",".join(f"{k}={v}" for k, v in request.settings)
    model = f"{request.model}:" if request.model else ""
    return f"{model}{request.kind}[{request.data}]" + (f"({settings})" if settings else "")


class Features:
    """A scorer's view of the pass outputs it requested: `get(kind, data, model=None, **settings)`."""

    def __init__(self, values: dict[FeatureRequest, Any], canonical: Callable[[FeatureRequest], FeatureRequest],
                 model: str | None = None, label: str = ""):
        self.values, self.canonical, self.model, self.label = values, canonical, model, label

    def request(self, kind: str, data: str = "pool", model: str | None = None, **settings: Any) -> FeatureRequest:
        return self.canonical(FeatureRequest(kind, data, tuple(sorted(settings.items())), model or self.model))

    def has(self, kind: str, data: str = "pool", model: str | None = None, **settings: Any) -> bool:
        return self.request(kind, data, model, **settings) in self.values

    def get(self, kind: str, data: str = "pool", model: str | None = None, **settings: Any) -> Any:
        request = self.request(kind, data, model, **settings)
        if request not in self.values:
            known = ", ".join(describe(r) for r in self.values) or "none"
            raise SelectkitError(f"{self.label}: {describe(request)} was not computed (computed: {known}); "
                                 "the scorer must list it in feature_requests()")
        value = self.values[request]
        return value() if callable(value) else value
