"""The guard on inputs: an output folder that is, holds or lies inside anything the recipe reads
(source files, model, adapter and checkpoint folders) is refused before any compute, and a file
selectkit did not write is never replaced. `check` runs it at validate time, `compile` again on
the plan, and the output writer once more before it swaps the new set in. Names that become file
names (targets, split_by columns and values) are confined here too: never a path."""

from __future__ import annotations

import fnmatch
import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from selectkit.errors import SelectkitError

OUTPUT_NAMES = ("selection.parquet", "subset.parquet", "subset.jsonl", "subset.hf_dataset", "manifest.json",
                "report.html")


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


def output_conflicts(out_dir: Path, inputs: dict[str, Path], what: str = "output.dir") -> list[str]:
    """Why writing into `out_dir` would touch an input (name -> file or folder), if it would
    (`what` names the folder in the messages: output.dir, or eval's folder). URLs (object storage)
    are compared as URLs; a URL and a local path never meet."""
    if not isinstance(out_dir, str | Path) or any(not isinstance(p, str | Path) for p in inputs.values()):
        return _url_conflicts(out_dir, inputs, what)
    out = Path(os.path.abspath(out_dir))
    out_real = Path(os.path.realpath(out))
    problems = []
    for name, path in inputs.items():
        src = Path(os.path.abspath(path))
        real = Path(os.path.realpath(path))
        if out in (src, real) or out_real == real:
            problems.append(f"{what} {out} is the {name} itself")
        elif _inside(out, src) or _inside(out, real) or _inside(out_real, real):
            kind = "folder" if src.is_dir() or real.is_dir() else "file"
            problems.append(f"{what} {out} is inside the {name} {kind} {src}")
        elif _inside(src, out) or _inside(real, out) or _inside(real, out_real):
            problems.append(f"{what} {out} contains the {name} ({src}); the output folder is replaced as a "
                            "whole on every run, so keep inputs elsewhere")
    blocker = next((p for p in (out, *out.parents) if p.exists()), None)  # the nearest part that exists
    if blocker is not None and not blocker.is_dir():
        problems.append(f"{what} {out} is a file, not a folder" if blocker == out else
                        f"{what} {out} cannot be made: {blocker} is a file, not a folder")
    return problems


def _url_conflicts(out_dir: Any, inputs: dict[str, Any], what: str = "output.dir") -> list[str]:
    out = str(out_dir).rstrip("/")
    problems = []
    for name, path in inputs.items():
        if isinstance(path, Path) != isinstance(out_dir, Path):
            continue
        src = str(path).rstrip("/")
        if out == src:
            problems.append(f"{what} {out} is the {name} itself")
        elif out.startswith(src + "/"):
            problems.append(f"{what} {out} is inside the {name} {src}")
        elif src.startswith(out + "/"):
            problems.append(f"{what} {out} contains the {name} ({src}); keep inputs elsewhere")
    return problems


def file_conflicts(files: dict[str, Path], inputs: dict[str, Path]) -> list[str]:
    """Why writing each of `files` (what -> path) would touch an input: the file is an input (also
    through a symlinked folder on its way) or lies inside an input folder."""
    problems = []
    for what, file in files.items():
        at = Path(os.path.abspath(file))
        real = Path(os.path.realpath(at.parent)) / at.name  # the folder as the write resolves it
        for name, path in inputs.items():
            src, src_real = Path(os.path.abspath(path)), Path(os.path.realpath(path))
            if at in (src, src_real) or real in (src, src_real):
                problems.append(f"{what} {at} is the {name}; writing it would overwrite an input")
                break
            if _inside(at, src) or _inside(real, src_real):
                problems.append(f"{what} {at} is inside the {name} folder {src}")
                break
    return problems


def output_patterns(output: Any) -> tuple[str, ...]:
    """Names (glob patterns) of the outputs beyond OUTPUT_NAMES that `output` (an OutputSpec) asks
    for: the split_by files, subset.<column>-<value>.<format>."""
    column = getattr(output, "split_by", None) if output is not None else None
    if not column:
        return ()
    return tuple(f"subset.{column}-*.{fmt}" for fmt in getattr(output, "formats", ["parquet"]))


def foreign_outputs(out_dir: Path, patterns: tuple[str, ...] = ()) -> list[Path]:
    """Files in `out_dir` with an output's name (or matching one of `patterns`) that selectkit did
    not write (per the manifest there)."""
    if not isinstance(out_dir, Path) or not out_dir.is_dir():  # a set in object storage is never overwritten
        return []
    ours = written_by_selectkit(out_dir)
    found = [out_dir / n for n in OUTPUT_NAMES if (out_dir / n).exists() and n not in ours]
    if patterns:
        found += sorted(p for p in out_dir.iterdir() if p.name not in ours and p.name not in OUTPUT_NAMES
                        and any(fnmatch.fnmatchcase(p.name, pat) for pat in patterns))
    return found


def read_only(out_dir: Path) -> bool:
    """An existing output folder that cannot (or must not) be replaced: no write permission for this
    user, or no write bit for anyone (mode 555: a folder a team froze, which root could still swap)."""
    try:
        mode = os.stat(out_dir).st_mode
    except OSError:
        return False
    return stat.S_ISDIR(mode) and (not os.access(out_dir, os.W_OK) or not mode & 0o222)


# ---------------------------------------------------------------- names that become file names


def name_problem(name: str) -> str | None:
    """Why `name` (a target name, a split_by column) cannot be part of a file name, if it cannot:
    it must not hold a path separator or '..', be absolute, start with '.' or hold control characters."""
    if not name:
        return "is empty"
    if "/" in name or "\\" in name or (os.sep != "/" and os.sep in name):
        return "holds a path separator"
    if ".." in name:
        return "holds '..'"
    if name.startswith("."):
        return "starts with '.'"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "holds a control character"
    return None


def file_part(value: Any) -> str:
    """A value (a split_by value from the data) as one safe file-name part: kept as is when it is
    plain, else percent-escaped, so no value names a path."""
    text = str(value)
    if name_problem(text) is None and all(c.isalnum() or c in "-_.+=@," for c in text):
        return text
    return quote(text, safe="").replace(".", "%2E")


def written_by_selectkit(out_dir: Path) -> set[str]:
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    if not isinstance(manifest, dict) or manifest.get("written_by") != "selectkit":
        return set()
    files = manifest.get("files", {})
    return {str(v) for v in files.values()} | {"manifest.json"}


def check_output(out_dir: Path, inputs: dict[str, Path], patterns: tuple[str, ...] = ()) -> None:
    """Refuse `out_dir` before any compute: it touches an input, it is read-only, or it holds a file
    with an output's name (OUTPUT_NAMES, or one of `patterns`: see output_patterns) selectkit did not write."""
    problems = output_conflicts(out_dir, inputs)
    if problems:
        raise OutputError(problems[0], hint="choose another output.dir (or --out)")
    if not isinstance(out_dir, str | Path):  # object storage: a missing bucket is said before any compute
        out_dir.check_bucket("write")
        return
    if read_only(out_dir):
        raise OutputError(f"output.dir {out_dir} is read-only; selectkit replaces the output folder as a whole and "
                          "will not swap out a folder that is write-protected",
                          hint="make it writable (chmod u+w), or choose another output.dir (or --out)")
    foreign = foreign_outputs(out_dir, patterns)
    if foreign:
        raise OutputError(f"{foreign[0]} exists and was not written by selectkit; it would be replaced",
                          hint="move it away, or choose another output.dir (or --out)")


