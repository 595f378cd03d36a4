"""The guard on inputs: an output folder that is, holds or lies inside anything the recipe reads
(source files, model, adapter and checkpoint folders) is refused before any compute, and a file
selectkit did not write is never replaced. `check` runs it at validate time, `compile` again on
the plan, and the output writer once more before it swaps the new set in."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selectkit.errors import SelectkitError

OUTPUT_NAMES = ("selection.parquet", "subset.parquet", "subset.jsonl", "manifest.json", "report.html")


def recipe_inputs(sources: dict[str, Sequence[Path]], models: dict[str, tuple[Any, Path]]) -> dict[str, Path]:
    """Every file or folder a recipe reads, by what it is: each source's files, and each model's
    folder, LoRA adapter and checkpoint folders (`models`: name -> (ModelSpec, folder base))."""
    from selectkit.models.loader import resolve_model_path

    out: dict[str, Path] = {}
    for name, files in sources.items():
        for i, file in enumerate(files):
            out[f"{name} source" + (f" ({i + 1})" if i else "")] = file if not isinstance(file, str | Path) \
                else Path(file)  # an object in a store stays a URL
    for name, (spec, base) in models.items():
        for what, path in (("model", spec.path), ("LoRA adapter", spec.lora),
                           *(("checkpoint", c) for c in (spec.checkpoints or []))):
            if path is None:
                continue
            try:
                folder = resolve_model_path(path, base)
            except SelectkitError:  # a model that does not resolve is reported where models are checked
                continue
            if isinstance(folder, Path):
                out[f"{what} {name!r}" if what != "checkpoint" else f"checkpoint {path}"] = folder
    return out


class OutputError(SelectkitError):
    """The output folder cannot be written as asked (it would touch an input, or a foreign file)."""


# ---------------------------------------------------------------- the guard on inputs


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def output_conflicts(out_dir: Path, inputs: dict[str, Path]) -> list[str]:
    """Why writing into `out_dir` would touch an input (name -> file or folder), if it would. URLs
    (object storage) are compared as URLs; a URL and a local path never meet."""
    if not isinstance(out_dir, str | Path) or any(not isinstance(p, str | Path) for p in inputs.values()):
        return _url_conflicts(out_dir, inputs)
    out = Path(os.path.abspath(out_dir))
    problems = []
    for name, path in inputs.items():
        src = Path(os.path.abspath(path))
        real = Path(os.path.realpath(path))
        if out in (src, real):
            problems.append(f"output.dir {out} is the {name} itself")
        elif _inside(out, src) or _inside(out, real):
            what = "folder" if src.is_dir() or real.is_dir() else "file"
            problems.append(f"output.dir {out} is inside the {name} {what} {src}")
        elif _inside(src, out) or _inside(real, out):
            problems.append(f"output.dir {out} contains the {name} ({src}); the output folder is replaced as a "
                            "whole on every run, so keep inputs elsewhere")
    blocker = next((p for p in (out, *out.parents) if p.exists()), None)  # the nearest part that exists
    if blocker is not None and not blocker.is_dir():
        problems.append(f"output.dir {out} is a file, not a folder" if blocker == out else
                        f"output.dir {out} cannot be made: {blocker} is a file, not a folder")
    return problems


def _url_conflicts(out_dir: Any, inputs: dict[str, Any]) -> list[str]:
    out = str(out_dir).rstrip("/")
    problems = []
    for name, path in inputs.items():
        if isinstance(path, Path) != isinstance(out_dir, Path):
            continue
        src = str(path).rstrip("/")
        if out == src:
            problems.append(f"output.dir {out} is the {name} itself")
        elif out.startswith(src + "/"):
            problems.append(f"output.dir {out} is inside the {name} {src}")
        elif src.startswith(out + "/"):
            problems.append(f"output.dir {out} contains the {name} ({src}); keep inputs elsewhere")
    return problems


def foreign_outputs(out_dir: Path) -> list[Path]:
    """Files in `out_dir` with an output's name that selectkit did not write (per the manifest there)."""
    if not isinstance(out_dir, Path) or not out_dir.is_dir():  # a set in object storage is never overwritten
        return []
    ours = written_by_selectkit(out_dir)
    return [out_dir / n for n in OUTPUT_NAMES if (out_dir / n).exists() and n not in ours]


def written_by_selectkit(out_dir: Path) -> set[str]:
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    if not isinstance(manifest, dict) or manifest.get("written_by") != "selectkit":
        return set()
    files = manifest.get("files", {})
    return {str(v) for v in files.values()} | {"manifest.json"}


def check_output(out_dir: Path, inputs: dict[str, Path]) -> None:
    problems = output_conflicts(out_dir, inputs)
    if problems:
        raise OutputError(problems[0], hint="choose another output.dir (or --out)")
    if not isinstance(out_dir, str | Path):  # object storage: a missing bucket is said before any compute
        out_dir.check_bucket("write")
        return
    foreign = foreign_outputs(out_dir)
    if foreign:
        raise OutputError(f"{foreign[0]} exists and was not written by selectkit; it would be replaced",
                          hint="move it away, or choose another output.dir (or --out)")


