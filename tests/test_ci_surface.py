"""The CI surface works as shipped: each pre-commit hook's entry, run as pre-commit runs it
(on the files its filters pick), passes on the shipped recipes and fails on a broken one; the
example GitHub Actions workflow's selectkit steps pass on this repository."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import RECIPES, ROOT

HOOKS = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
WORKFLOW = yaml.safe_load((ROOT / "docs" / "ci" / "selectkit.yml").read_text())
# the keys pre-commit's manifest schema knows (pre_commit.clientlib.MANIFEST_HOOK_DICT)
HOOK_KEYS = {"id", "name", "entry", "language", "alias", "files", "exclude", "types", "types_or", "exclude_types",
             "additional_dependencies", "args", "always_run", "fail_fast", "pass_filenames", "description",
             "language_version", "log_file", "minimum_pre_commit_version", "require_serial", "stages", "verbose"}
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # `selectkit` on PATH


def repository_files() -> list[str]:
    files = []
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in {".git", ".venv", "out", "__pycache__", ".work"}]
        files += [str((Path(folder) / n).relative_to(ROOT)) for n in names]
    return sorted(files)


def picked_files(hook: dict) -> list[str]:
    """The files pre-commit hands the hook in `pre-commit run --all-files`: `files`/`exclude` are
    searched in the relative path; `types: [yaml]` is the .yaml/.yml suffix."""
    files = [f for f in repository_files() if re.search(hook.get("files", ""), f)
             and not re.search(hook.get("exclude", "^$"), f)]
    if "yaml" in hook.get("types", []):
        files = [f for f in files if f.endswith((".yaml", ".yml"))]
    return files


def run_hook(hook: dict, files: list[str]) -> subprocess.CompletedProcess:
    command = shlex.split(hook["entry"]) + hook.get("args", [])
    if hook.get("pass_filenames", True):
        command += files
    return subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)


def test_hook_definitions_are_well_formed():
    assert [h["id"] for h in HOOKS] == ["selectkit-validate", "selectkit-schema-check"]
    for hook in HOOKS:
        assert {"id", "name", "entry", "language"} <= set(hook) <= HOOK_KEYS, hook
        assert hook["language"] == "python"  # pre-commit installs this repository (selectkit) for it


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h["id"])
def test_each_hook_passes_on_the_shipped_recipes(hook):
    files = picked_files(hook)
    if hook.get("pass_filenames", True):
        assert files == sorted(str(p.relative_to(ROOT)) for p in RECIPES.glob("*.yaml"))  # not broken_recipes
    result = run_hook(hook, files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_validate_hook_fails_on_a_broken_recipe():
    [hook] = [h for h in HOOKS if h["id"] == "selectkit-validate"]
    broken = "tests/broken_recipes/03_unknown_scorer.yaml"
    result = run_hook(hook, ["recipes/quickstart.yaml", broken])
    assert result.returncode == 1 and f"{broken}:9:10: error: unknown scorer 'lenght'" in result.stderr


def test_example_workflow_steps_pass_on_this_repository():
    steps = [s["run"] for s in WORKFLOW["jobs"]["recipes"]["steps"] if "run" in s]
    commands = [s for s in steps if s.startswith("selectkit ")]
    assert len(commands) == 2 and "--format github" in commands[0] and "schema --check" in commands[1]
    for command in commands:
        result = subprocess.run(["bash", "-c", command], cwd=ROOT, env=ENV, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, command + "\n" + result.stdout + result.stderr
        assert "::error" not in result.stdout
