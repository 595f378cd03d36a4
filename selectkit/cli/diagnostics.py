"""How `selectkit validate` reports what it found: lines for people, a versioned JSON document
and GitHub workflow commands for CI. Every error and warning is a `selectkit.errors.diagnostic`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

REPORT_FORMAT_VERSION = 1  # of the JSON document; bump only with an incompatible change


def escape_data(text: str) -> str:
    """A workflow command's message, escaped as GitHub's runner expects."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value (file=, title=...), escaped as GitHub's runner expects."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _message(d: dict) -> str:
    return d["message"] + (f" ({d['hint']})" if d["hint"] else "")


def github_command(d: dict) -> str:
    """`::error file=...,line=...::message` (or `::warning`) for one diagnostic."""
    props = {"file": d["path"], "line": d["line"], "col": d["column"], "endLine": d["end_line"],
             "endColumn": d["end_column"], "title": f"selectkit {d['code']} {d['name']}"}
    text = ",".join(f"{k}={escape_property(str(v))}" for k, v in props.items() if v is not None)
    return f"::{d['severity']} {text}::{escape_data(_message(d))}"


def text_line(d: dict) -> str:
    """`file:line:col: error: message (hint)`, as compilers print."""
    where = f"{d['path']}:{d['line']}:{d['column']}" if d["line"] else d["path"]
    return f"{where}: {d['severity']}: {_message(d)}" if where else f"{d['severity']}: {_message(d)}"


def report(results: list[dict], warnings: list[dict], fmt: str, out: Callable[[str], None],
           err: Callable[[str], None]) -> None:
    """Print `results` ({path, valid, errors, warnings} per recipe) and general `warnings` in `fmt`."""
    if fmt == "json":
        out(json.dumps({"format_version": REPORT_FORMAT_VERSION, "valid": all(r["valid"] for r in results),
                        "recipes": results, "warnings": warnings}, indent=2))
        return
    if fmt == "github":
        for d in _all(results, warnings):
            out(github_command(d))
        return
    for d in warnings:
        err(text_line(d))
    for r in results:
        if r["valid"]:
            out(f"{r['path']}: ok")
        for d in [*r["warnings"], *r["errors"]]:
            err(text_line(d))


def _all(results: list[dict], warnings: list[dict]) -> Iterable[dict]:
    yield from warnings
    for r in results:
        yield from r["warnings"]
        yield from r["errors"]
