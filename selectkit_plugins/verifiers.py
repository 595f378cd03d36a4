"""Built-in verifiers: does a generated completion give the reference answer?

- `exact_match`: the completion's first line (or all of it, or its last line), whitespace collapsed
  and case folded, equals the reference, normalised the same way.
- `regex`: a pattern searched in the completion; `{answer}` in it stands for the escaped reference
  (pass when it matches), otherwise its first group (or the whole match) must equal the reference.
- `numeric`: the first or last number in the completion equals the reference's number (GSM8K style:
  the reference's number after `####`, else its last number) within a tolerance; `1,000` reads 1000.
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import Field, field_validator

from selectkit.plugin import Params, Verifier, hookimpl

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

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value.replace("{answer}", "x"))
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class Regex(Verifier):
    """A regex over the completion: `{answer}` in the pattern stands for the reference, or the first
    group must equal it."""

    name = "regex"
    Params = RegexParams

    def check(self, completion: str, reference: str) -> bool:
        p = self.params
        flags = 0 if p.case_sensitive else re.IGNORECASE
        if "{answer}" in p.pattern:
            pattern = p.pattern.replace("{answer}", re.escape(reference.strip()))
            return re.search(pattern, completion, flags) is not None
        match = re.search(p.pattern, completion, flags)
        if match is None:
            return False
        got = match.group(1) if match.re.groups else match.group(0)
        return _normalise(got or "", p.case_sensitive) == _normalise(reference, p.case_sensitive)


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
