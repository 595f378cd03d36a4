"""Built-in verifiers: does a generated completion give the reference answer?

- `exact_match`: the completion's first line (or all of it, or its last line), whitespace collapsed
  and case folded, equals the reference, normalised the same way.
- `regex`: a pattern searched in the completion; `{answer}` in it stands for the escaped reference
  (pass when it matches), otherwise its first group (or the whole match) must equal the reference.
  Patterns come from recipes and run on model output, so each search is bounded in time (`timeout`,
  through the `regex` package's timeout, else in a worker process that is stopped): a pattern that
  backtracks catastrophically is one error naming it, never a hung run. validate compiles the
  pattern with the real reference answers of the pool's first rows and warns on nested quantifiers.
- `numeric`: the first or last number in the completion equals the reference's number (GSM8K style:
  the reference's number after `####`, else its last number) within a tolerance; `1,000` reads 1000.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import Field, PositiveFloat, field_validator

from selectkit.plugin import DataError, Params, Verifier, hookimpl

NUMBER = re.compile(r"-?(?:\d[\d,]*)?\.?\d+(?:[eE][-+]?\d+)?")


def _normalise(text: str, case_sensitive: bool) -> str:
    text = " ".join(text.split())
    return text if case_sensitive else text.casefold()


def _part(text: str, which: str) -> str:
    if which == "all":
        return text
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[0] if which == "first_line" else lines[-1]


class ExactMatchParams(Params):
    extract: Literal["first_line", "last_line", "all"] = Field(
        "first_line", description="the part of the completion compared (a completion usually goes on after "
        "its answer)")
    case_sensitive: bool = Field(False, description="compare case (default: case folded)")


class ExactMatch(Verifier):
    """The completion's first line (by default) equals the reference, whitespace collapsed and case folded."""

    name = "exact_match"
    Params = ExactMatchParams

    def check(self, completion: str, reference: str) -> bool:
        p = self.params
        got = _normalise(_part(completion, p.extract), p.case_sensitive)
        return bool(got) and got == _normalise(reference, p.case_sensitive)


class RegexParams(Params):
    pattern: str = Field(description="Python regex searched in the completion; `{answer}` stands for the escaped "
                         "reference (then any match passes); otherwise group 1 (or the whole match) must equal "
                         "the reference")
    case_sensitive: bool = Field(True, description="match case")
    timeout: PositiveFloat = Field(1.0, description="seconds one search may take before the run stops with an error "
                                   "naming the pattern (catastrophic backtracking)")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value.replace("{answer}", "x"))
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


# a quantified group that holds a quantifier: (a+)+, (\w*)*, (x|y+){2,}: the usual catastrophic backtracking
_NESTED = re.compile(r"\((?:[^()\\]|\\.)*[+*}](?:[^()\\]|\\.)*\)[+*{]")


class PatternTimeout(DataError):
    """A regex verifier's search ran past its time limit."""


def _search_worker(pattern: str, text: str, flags: int) -> tuple[bool, str | None]:
    match = re.search(pattern, text, flags)
    if match is None:
        return False, None
    return True, match.group(1) if match.re.groups else match.group(0)


class _Bounded:
    """re.search with a time limit: the `regex` package's own timeout when it is installed (it is
    with transformers), else the search runs in a worker process that is killed at the limit."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        try:
            import regex
        except ImportError:  # pragma: no cover - depends on the environment
            regex = None
        self.engine = regex
        self.pool: Any = None

    def search(self, pattern: str, text: str, flags: int) -> tuple[bool, str | None]:
        if self.engine is not None:
            try:
                match = self.engine.search(pattern, text, flags, timeout=self.timeout)
            except TimeoutError:
                raise PatternTimeout(pattern) from None
            if match is None:
                return False, None
            return True, match.group(1) if match.re.groups else match.group(0)
        import multiprocessing

        if self.pool is None:  # pragma: no cover - only without the regex package
            self.pool = multiprocessing.get_context("spawn").Pool(1)
        job = self.pool.apply_async(_search_worker, (pattern, text, flags))
        try:
            return job.get(self.timeout + 5.0)  # the worker's start is not the pattern's fault
        except multiprocessing.TimeoutError:
            self.pool.terminate()
            self.pool = None
            raise PatternTimeout(pattern) from None


class Regex(Verifier):
    """A regex over the completion: `{answer}` in the pattern stands for the reference, or the first
    group must equal it. Each search is bounded by `timeout`."""

    name = "regex"
    Params = RegexParams

    def __init__(self, params: Any):
        super().__init__(params)
        self._bounded: _Bounded | None = None

    def pattern_for(self, reference: str) -> str:
        """The pattern searched for `reference` (a ValueError naming both when it does not compile)."""
        p = self.params
        pattern = p.pattern.replace("{answer}", re.escape(reference.strip())) if "{answer}" in p.pattern else p.pattern
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"pattern {p.pattern!r} with the reference {reference.strip()!r} is not a valid regular "
                             f"expression ({pattern!r}: {exc})") from None
        return pattern

    def check(self, completion: str, reference: str) -> bool:
        p = self.params
        flags = 0 if p.case_sensitive else re.IGNORECASE
        try:
            pattern = self.pattern_for(reference)
        except ValueError as exc:
            raise DataError(f"verifier 'regex': {exc}") from None
        if self._bounded is None:
            self._bounded = _Bounded(p.timeout)
        try:
            found, got = self._bounded.search(pattern, completion, flags)
        except PatternTimeout:
            raise PatternTimeout(f"verifier 'regex': pattern {p.pattern!r} ran longer than {p.timeout:g} s on one "
                                 "completion (catastrophic backtracking?)",
                                 hint="rewrite it without nested quantifiers such as (a+)+, or raise `timeout`") \
                from None
        if "{answer}" in p.pattern:
            return found
        if not found:
            return False
        return _normalise(got or "", p.case_sensitive) == _normalise(reference, p.case_sensitive)

    def check_references(self, references: list[str]) -> str | None:
        if "{answer}" not in self.params.pattern:
            return None
        for reference in references:
            try:
                self.pattern_for(reference)
            except ValueError as exc:
                return str(exc)
        return None

    def advice(self) -> list[str]:
        if _NESTED.search(self.params.pattern):
            return [f"pattern {self.params.pattern!r} nests quantifiers, which can backtrack catastrophically on "
                    f"model output; each search stops after {self.params.timeout:g} s with an error"]
        return []


class NumericParams(Params):
    which: Literal["first", "last"] = Field(
        "last", description="the completion's number compared: first, or last (GSM8K: the final answer comes last)")
    tolerance: float = Field(1e-6, ge=0, description="absolute tolerance")
    relative: float = Field(0.0, ge=0, description="relative tolerance (of the reference's magnitude)")


def numbers(text: str) -> list[float]:
    """Every number in `text` in order (thousands separators dropped)."""
    out = []
    for match in NUMBER.finditer(text):
        token = match.group(0).replace(",", "")
        try:
            out.append(float(token))
        except ValueError:
            continue
    return out


def reference_number(reference: str) -> float | None:
    """The reference's answer: the number after `####` when present (GSM8K), else its last number."""
    tail = reference.rsplit("####", 1)[1] if "####" in reference else reference
    found = numbers(tail)
    return found[-1] if found else None


class Numeric(Verifier):
    """The completion's last (or first) number equals the reference's number within a tolerance."""

    name = "numeric"
    Params = NumericParams

    def check(self, completion: str, reference: str) -> bool:
        p = self.params
        want = reference_number(reference)
        found = numbers(completion)
        if want is None or not found:
            return False
        got = found[0] if p.which == "first" else found[-1]
        return math.isclose(got, want, rel_tol=p.relative, abs_tol=p.tolerance)


@hookimpl
def register_verifiers(register):
    register(ExactMatch)
    register(Regex)
    register(Numeric)
