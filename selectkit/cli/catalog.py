"""The README's table of components, generated from the registry (a test keeps it current):
`python -m selectkit.cli.catalog --write README.md` rewrites the block between its markers."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from selectkit.contract.registry import Registry, default_registry

START, END = "<!-- components:start -->", "<!-- components:end -->"


ABBREVIATIONS = ("al.", "e.g.", "i.e.", "i.i.d.", "vs.", "w.r.t.", "cf.", "etc.")
KINDS = {"scorers": "scorer", "normalizers": "normalizer", "selectors": "selector", "passes": "pass provider",
         "verifiers": "verifier", "readers": "reader"}


def summary(cls: type) -> str:
    """The docstring's first sentence (abbreviations such as "et al." do not end it), on one line."""
    text = " ".join((cls.__doc__ or "").split())
    for match in re.finditer(r"[.!?](\s|$)", text):
        head = text[:match.start() + 1]
        if not head.endswith(ABBREVIATIONS):
            return head.replace("|", "\\|")
    return text.replace("|", "\\|")


def table(registry: Registry | None = None) -> str:
    registry = registry or default_registry()
    rows = ["| kind | component | what it does | needs |", "|---|---|---|---|"]
    for kind in KINDS:
        for name in sorted(registry.components[kind]):
            cls = registry.components[kind][name].cls
            needs = list(getattr(cls, "extras", ()))
            if getattr(cls, "model_kinds", ()):
                needs.insert(0, "models (" + " / ".join(cls.model_kinds) + ")")
            if kind == "passes":
                needs = ["models"] + [f"serves {', '.join(sorted(cls.kinds))}"]
            rows.append(f"| {KINDS[kind]} | `{name}` | {summary(cls)} | {', '.join(needs)} |")
    return "\n".join(rows)


def block(registry: Registry | None = None) -> str:
    return f"{START}\n{table(registry)}\n{END}"


def rewrite(text: str, registry: Registry | None = None) -> str:
    start, end = text.index(START), text.index(END) + len(END)
    return text[:start] + block(registry) + text[end:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", type=Path, help="rewrite the components block of this Markdown file")
    args = parser.parse_args()
    if args.write:
        args.write.write_text(rewrite(args.write.read_text()))
    else:
        print(block())


if __name__ == "__main__":
    main()
