"""Outputs never overwrite inputs, and land as one set.

What a user meets, through the real CLI on real files: an output folder that is, holds or lies
inside an input (a pool file named like an output, a model or `save_to_disk` folder, `--out`
aimed at an input) is refused before any compute, at the recipe's `output.dir` line, and the
input's bytes stay as they were. A file named like an output that selectkit did not write is
refused and left alone; other foreign files survive a run. A rerun replaces the whole set (no
stale subset), a full disk leaves the previous set byte for byte, and files follow the umask.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from conftest import ROOT, cli

OUTPUT_NAMES = {"selection.parquet", "subset.parquet", "subset.jsonl", "manifest.json", "report.html"}


# ---------------------------------------------------------------- helpers


def pool_rows(n: int = 30, words: int = 6) -> list[dict]:
    return [{"id": f"r{i:03d}", "text": " ".join(f"w{i}x{j}" for j in range(words + i % 5)), "domain": f"d{i % 3}"}
            for i in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_recipe(folder: Path, *, pool: str = "data/pool.jsonl", target: str | None = None, out: str = "out",
                 formats: str = "[parquet, jsonl]", budget: str = "5", models: str = "", scorer: str = "",
                 report: bool = False, output_extra: str = "") -> Path:
    """A small model-free recipe (token length, top-k) in `folder`; `target` adds a DSIR score.
    report.html is off unless asked (it costs a second per run; refusals never get that far)."""
    lines = ["selectkit: 1", "name: safety", "seed: 0", "data:", f"  pool: {{path: {pool}, id: id}}"]
    if target:
        lines += ["  targets:", f"    t: {{path: {target}, id: id}}"]
    if models:
        lines += ["models:", models]
    lines += ["scores:", "  words: {use: length, with: {unit: tokens}}"]
    if target:
        lines += ["  sim: {use: dsir, targets: [t]}"]
    if scorer:
        lines += [scorer]
    lines += ["select:", "  - use: topk", f"    with: {{score: words, budget: {budget}}}",
              "output:", f"  dir: {out}", f"  formats: {formats}", f"  report: {str(report).lower()}"]
    if output_extra:
        lines += [output_extra]
    path = folder / "recipe.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def line_of(recipe: Path, prefix: str) -> int:
    """1-based number of the first line of `recipe` that starts with `prefix` (after indentation)."""
    for number, line in enumerate(recipe.read_text().splitlines(), 1):
        if line.strip().startswith(prefix):
            return number
    raise AssertionError(f"no line starting with {prefix!r} in {recipe}")


def digest(path: Path) -> dict[str, str]:
    """sha256 of a file, or of every file under a folder, by relative name."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {str(f.relative_to(path) if path.is_dir() else f.name): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in files}


def computed_artifacts() -> list[str]:
    """Cache entries written so far (score tables, pool indexes, passes...), fingerprints aside."""
    root = Path(os.environ["SELECTKIT_CACHE_DIR"])
    if not root.is_dir():
        return []
    return sorted(str(p.relative_to(root)) for kind in root.iterdir() if kind.is_dir() and kind.name != "fingerprints"
                  for p in kind.iterdir())


def leftovers(folder: Path) -> list[str]:
    """Staging or old-set folders selectkit leaves next to an output folder (there should be none)."""
    return sorted(p.name for p in folder.iterdir() if ".staging-" in p.name or ".old-" in p.name)


def refused(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr


# ---------------------------------------------------------------- inputs inside the output folder


@pytest.mark.parametrize("role, name", [("pool", "subset.jsonl"), ("pool", "subset.parquet"),
                                        ("target", "selection.parquet")])
def test_an_input_named_like_an_output_inside_output_dir_is_refused(tmp_path, role, name):
    rows = pool_rows()
    pool, target = tmp_path / "data" / "pool.jsonl", None
    write_jsonl(pool, rows)
    inside = tmp_path / "out" / name
    inside.parent.mkdir()
    if name.endswith(".parquet"):
        pl.DataFrame(rows).write_parquet(inside)
    else:
        write_jsonl(inside, rows)
    if role == "pool":
        recipe = write_recipe(tmp_path, pool=f"out/{name}")
    else:
        target = f"out/{name}"
        recipe = write_recipe(tmp_path, target=target)
    before = digest(inside)
    at = f"{recipe}:{line_of(recipe, 'dir:')}:"
    for command in (("validate", recipe), ("run", recipe)):
        err = refused(cli(*command))
        assert at in err and f"contains the {'pool' if role == 'pool' else 't'} source" in err, err
        assert str(inside) in err
    assert digest(inside) == before
    assert sorted(p.name for p in inside.parent.iterdir()) == [name]  # nothing written next to it
    assert computed_artifacts() == []


def test_output_dir_that_is_an_input_file_is_refused(tmp_path):
    pool = write_jsonl(tmp_path / "data" / "pool.jsonl", pool_rows())
    recipe = write_recipe(tmp_path, out="data/pool.jsonl")
    before = digest(pool)
    at = f"{recipe}:{line_of(recipe, 'dir:')}:"
    for command in (("validate", recipe), ("run", recipe)):
        err = refused(cli(*command))
        assert at in err and "is the pool source itself" in err, err
    assert digest(pool) == before and computed_artifacts() == []


def _hf_folder(folder: Path) -> Path:
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(pool_rows()).save_to_disk(str(folder))
    return folder


def test_output_dir_inside_a_save_to_disk_folder_is_refused(tmp_path):
    folder = _hf_folder(tmp_path / "data" / "hf")
    recipe = write_recipe(tmp_path, pool="data/hf", out="data/hf/selection")
    before = digest(folder)
    at = f"{recipe}:{line_of(recipe, 'dir:')}:"
    for command in (("validate", recipe), ("run", recipe)):
        err = refused(cli(*command))
        assert at in err and f"is inside the pool source folder {folder}" in err, err
    assert digest(folder) == before and computed_artifacts() == []
    assert not (folder / "selection").exists()


def test_output_dir_inside_a_model_folder_is_refused(demo):
    write_jsonl(demo / "data" / "small.jsonl", pool_rows())
    models = "  lm: {path: models/tiny-lm, kind: causal-lm, max_length: 32, device: cpu}"
    recipe = write_recipe(demo, pool="data/small.jsonl", out="models/tiny-lm/out", models=models,
                          scorer="  ppl: {use: perplexity, model: lm}")
    folder = demo / "models" / "tiny-lm"
    before = digest(folder)
    at = f"{recipe}:{line_of(recipe, 'dir:')}:"
    for command in (("validate", recipe), ("run", recipe)):
        err = refused(cli(*command))
        assert at in err and "is inside the model 'lm' folder" in err, err
        assert "loading model" not in err
    assert digest(folder) == before and computed_artifacts() == []


def test_output_dir_inside_a_checkpoint_folder_is_refused_before_compute(demo):
    write_jsonl(demo / "data" / "small.jsonl", pool_rows())
    checkpoint = demo / "checkpoint-1"
    checkpoint.mkdir()
    (checkpoint / "checkpoint.json").write_text('{"lr": 0.001}\n')
    models = "  lm: {path: models/tiny-lm, kind: causal-lm, max_length: 32, device: cpu, checkpoints: [checkpoint-1]}"
    recipe = write_recipe(demo, pool="data/small.jsonl", out="checkpoint-1/out", models=models,
                          scorer="  si: {use: self_influence, model: lm}")
    err = refused(cli("run", recipe))
    assert "is inside the checkpoint checkpoint-1 folder" in err and "loading model" not in err, err
    assert computed_artifacts() == [] and sorted(p.name for p in checkpoint.iterdir()) == ["checkpoint.json"]


def test_out_pointing_at_an_input_is_refused_at_plan_time(demo):
    write_jsonl(demo / "data" / "pool.jsonl", pool_rows())
    models = "  lm: {path: models/tiny-lm, kind: causal-lm, max_length: 32, device: cpu}"
    recipe = write_recipe(demo, out=str(demo.parent / "elsewhere"), models=models,
                          scorer="  ppl: {use: perplexity, model: lm}")
    assert cli("validate", recipe).returncode == 0  # the recipe itself is fine: only --out is wrong
    before = {p: digest(demo / p) for p in ("data", "models")}
    for out, message in [("data/pool.jsonl", "is the pool source itself"),
                         ("data", "contains the pool source"),
                         ("data/pool.jsonl/selection", "is inside the pool source file"),  # below a file
                         ("models/tiny-lm", "is the model 'lm' itself"),
                         ("models/tiny-lm/out", "is inside the model 'lm' folder")]:
        err = refused(cli("run", recipe, "--out", demo / out))
        assert message in err and "--out" in err, (out, err)
        assert "loading model" not in err and computed_artifacts() == [], out
    assert {p: digest(demo / p) for p in ("data", "models")} == before
    assert not (demo.parent / "elsewhere").exists()


# ---------------------------------------------------------------- files selectkit did not write


@pytest.mark.parametrize("name, content", [
    ("manifest.json", b'{"my": "own manifest"}\n'),
    ("subset.jsonl", b'{"id": "hand-written"}\n'),
    ("selection.parquet", b"not even parquet"),
    ("report.html", b"<html>my report</html>"),
])
def test_a_foreign_file_with_an_output_name_is_refused_and_untouched(tmp_path, name, content):
    write_jsonl(tmp_path / "data" / "pool.jsonl", pool_rows())
    recipe = write_recipe(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_bytes(content)
    err = refused(cli("run", recipe))
    assert f"{out / name} exists and was not written by selectkit" in err, err
    assert (out / name).read_bytes() == content
    assert sorted(p.name for p in out.iterdir()) == [name] and leftovers(tmp_path) == []


def test_a_hand_made_file_next_to_a_previous_set_is_refused(tmp_path):
    """A selectkit manifest vouches only for the files it lists: a subset.jsonl dropped into a
    folder whose last run wrote parquet only is someone else's."""
    write_jsonl(tmp_path / "data" / "pool.jsonl", pool_rows())
    recipe = write_recipe(tmp_path, formats="[parquet]")
    assert cli("run", recipe).returncode == 0
    out = tmp_path / "out"
    mine = b'{"id": "kept by hand"}\n'
    (out / "subset.jsonl").write_bytes(mine)
    before = digest(out)
    recipe = write_recipe(tmp_path, formats="[parquet, jsonl]")
    err = refused(cli("run", recipe))
    assert f"{out / 'subset.jsonl'} exists and was not written by selectkit" in err, err
    assert digest(out) == before


def test_other_foreign_files_survive_runs_with_their_bytes(tmp_path):
    write_jsonl(tmp_path / "data" / "pool.jsonl", pool_rows())
    recipe = write_recipe(tmp_path)
    out = tmp_path / "out"
    (out / "notes" / "deeper").mkdir(parents=True)
    foreign = {"notes.txt": b"why we picked these\n", ".gitignore": b"*\n", "notes/a.md": b"# a\n",
               "notes/deeper/b.bin": bytes(range(256))}
    for name, data in foreign.items():
        (out / name).write_bytes(data)
    for budget in ("5", "7"):  # the first run fills the folder, the second replaces its own set
        recipe = write_recipe(tmp_path, budget=budget)
        result = cli("run", recipe)
        assert result.returncode == 0, result.stderr
        assert {n: (out / n).read_bytes() for n in foreign} == foreign
        manifest = json.loads((out / "manifest.json").read_text())
        assert not set(manifest["files"].values()) & {"notes.txt", ".gitignore", "notes"}
        assert pl.read_parquet(out / "subset.parquet").height == int(budget)
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- the set, atomically


def test_outputs_land_as_a_set_and_a_rerun_drops_stale_files(tmp_path):
    write_jsonl(tmp_path / "data" / "pool.jsonl", pool_rows())
    out = tmp_path / "out"
    result = cli("run", write_recipe(tmp_path, formats="[parquet, jsonl]", report=True))
    assert result.returncode == 0, result.stderr
    assert {p.name for p in out.iterdir()} == OUTPUT_NAMES
    result = cli("run", write_recipe(tmp_path, formats="[parquet]"))
    assert result.returncode == 0, result.stderr
    present = {p.name for p in out.iterdir()}
    assert present == {"selection.parquet", "subset.parquet", "manifest.json"}  # no stale subset.jsonl or report
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"].values()) | {"manifest.json"} == present
    assert manifest["recipe"]["resolved"]["output"]["formats"] == ["parquet"]
    assert leftovers(tmp_path) == []


@pytest.fixture
def small_disk(tmp_path, request):
    """A tmpfs of `request.param` bytes mounted at tmp_path/disk (needs root), always unmounted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={request.param}", "tmpfs", str(disk)],
                                 capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command: cannot make a small disk")
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here (needs root): {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.parametrize("small_disk", ["24k", "200k"], indirect=True)  # fills at different writes
def test_a_full_disk_leaves_the_previous_outputs_intact(tmp_path, small_disk):
    rows = [{"id": f"r{i:03d}", "text": " ".join(f"word{(i * 7 + j) % 97}" for j in range(80))} for i in range(400)]
    write_jsonl(tmp_path / "data" / "pool.jsonl", rows)
    out = small_disk / "out"
    first = cli("run", write_recipe(tmp_path, out=str(out), formats="[parquet]"))
    assert first.returncode == 0, first.stderr  # a small set fits
    before = digest(out)
    larger = write_recipe(tmp_path, out=str(out), formats="[parquet, jsonl]", budget="100%", report=True,
                          output_extra="  include_text: true")
    err = refused(cli("run", larger))
    assert "could not write the outputs" in err and "no space left on device [errno 28]" in err, err
    assert "the previous outputs there are intact" in err
    assert digest(out) == before
    assert sorted(p.name for p in small_disk.iterdir()) == ["out"]  # no half-written staging folder


@pytest.mark.parametrize("mask, file_mode, folder_mode", [(0o002, 0o664, 0o775), (0o022, 0o644, 0o755)],
                         ids=["umask-002", "umask-022"])
def test_output_files_follow_the_umask(tmp_path, mask, file_mode, folder_mode):
    write_jsonl(tmp_path / "data" / "pool.jsonl", pool_rows())
    out = tmp_path / "runs" / "today" / "out"
    for report in (False, True):  # a fresh folder, then a set swapped in for it (with report.html)
        recipe = write_recipe(tmp_path, out="runs/today/out", report=report)
        result = subprocess.run([sys.executable, "-m", "selectkit", "run", str(recipe)], capture_output=True,
                                text=True, cwd=ROOT, preexec_fn=lambda: os.umask(mask), timeout=600)
        assert result.returncode == 0, result.stderr
        files = sorted(p for p in out.iterdir())
        assert {p.name for p in files} == OUTPUT_NAMES - ({"report.html"} if not report else set())
        assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(file_mode) for p in files}
        for folder in (out, out.parent, out.parent.parent):
            assert oct(folder.stat().st_mode & 0o777) == oct(folder_mode), folder
