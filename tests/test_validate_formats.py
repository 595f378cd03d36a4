"""`selectkit validate --format json|github`: a versioned JSON document whose errors carry stable
codes and spans, GitHub workflow commands escaped exactly as the runner decodes them, warnings
reported in both, and the code table documented in the README."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import RECIPES, ROOT, cli
from test_registry import fake_distribution

from selectkit.cli.diagnostics import escape_data, escape_property
from selectkit.errors import CODES

BROKEN = Path(__file__).parent / "broken_recipes"
# what each recipe of the broken corpus must report, by code name
EXPECTED_CODES = {
    "01_misspelled_top_key": {"unknown-key", "missing-key"}, "02_misspelled_source_key": {"unknown-key"},
    "03_unknown_scorer": {"unknown-component"}, "04_unknown_selector": {"unknown-component"},
    "05_unknown_normalizer": {"unknown-component"}, "06_unknown_param": {"unknown-key"},
    "07_shape_mismatch": {"shape-mismatch"}, "08_dangling_score": {"unknown-name"},
    "09_dangling_target": {"unknown-name"}, "10_missing_budget": {"budget"}, "11_bad_budget_string": {"budget"},
    "12_budget_larger_than_pool": {"budget"}, "13_missing_file": {"data-file"}, "14_yaml_syntax": {"yaml-syntax"},
    "15_python_tag": {"yaml-tag"}, "16_duplicate_key": {"duplicate-key"}, "17_wrong_version": {"format-version"},
    "18_missing_version": {"format-version"}, "19_fraction_out_of_range": {"budget"},
    "20_targets_needed": {"targets-mismatch"}, "21_bad_value_type": {"invalid-value"},
    "22_no_budget_anywhere": {"budget"}, "23_bad_output_format": {"invalid-value"},
    "24_model_on_modelfree_scorer": {"model-mismatch", "model-files"}, "25_missing_score_param": {"missing-key"},
    "26_bad_param_value": {"invalid-value"}, "27_not_a_mapping": {"not-a-mapping"},
}
ERROR_KEYS = {"code", "name", "severity", "path", "line", "column", "end_line", "end_column", "message", "hint"}


def validate_json(*paths, env=None) -> tuple[int, dict]:
    result = cli("validate", "--format", "json", *paths, env=env)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


def test_every_broken_recipe_reports_its_codes():
    assert {p.stem for p in BROKEN.glob("*.yaml")} == set(EXPECTED_CODES)
    code, report = validate_json(*sorted(BROKEN.glob("*.yaml")))
    assert code == 1 and report["format_version"] == 1 and report["valid"] is False
    for recipe in report["recipes"]:
        assert recipe["valid"] is False and recipe["errors"], recipe
        names = {e["name"] for e in recipe["errors"]}
        assert names == EXPECTED_CODES[Path(recipe["path"]).stem], recipe
        for error in recipe["errors"]:
            assert set(error) == ERROR_KEYS and error["severity"] == "error"
            assert error["code"] == CODES[error["name"]].id and error["path"] == recipe["path"]


def test_errors_have_start_and_end_positions(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text((RECIPES / "quickstart.yaml").read_text().replace("seed: 0", "seeed: 0"))
    line = next(i for i, text in enumerate(recipe.read_text().splitlines(), 1) if text.startswith("seeed"))
    _, report = validate_json(recipe)
    error = next(e for e in report["recipes"][0]["errors"] if e["name"] == "unknown-key")
    assert error["code"] == "SK101" and "did you mean 'seed'" in error["message"]
    assert (error["line"], error["column"], error["end_line"], error["end_column"]) == (line, 1, line, 6)


def test_an_output_folder_over_the_inputs_has_its_code(demo):
    recipe = demo / "quickstart.yaml"
    text = recipe.read_text()
    assert "  dir: ../out/quickstart\n" in text
    recipe.write_text(text.replace("  dir: ../out/quickstart\n", "  dir: data\n"))  # the folder of the pool
    code, report = validate_json(recipe)
    assert code == 1
    errors = report["recipes"][0]["errors"]  # one per input inside it: the pool and the target
    assert {(e["code"], e["name"]) for e in errors} == {("SK403", "output-folder")}
    assert any("contains the pool source" in e["message"] for e in errors)


def test_score_cycles_and_data_content_have_their_codes(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"id": "a", "body": "x"}\n{"id": "b", "body": "y"}\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""selectkit: 1
name: codes
data: {{pool: {{path: {pool}, id: id}}}}
scores:
  a: {{use: combine, with: {{scores: {{b: 1.0}}}}}}
  b: {{use: combine, with: {{scores: {{a: 1.0}}}}}}
select: [{{use: topk, with: {{score: a, budget: 1}}}}]
""")
    _, report = validate_json(recipe)
    names = {e["name"]: e["code"] for e in report["recipes"][0]["errors"]}
    assert names.get("score-cycle") == "SK305" and names.get("data-content") == "SK404", names


def test_valid_recipes_and_warnings_in_json(tmp_path):
    site = fake_distribution(tmp_path / "site", "brokenplugin", "broken_plugin", "raise RuntimeError('boom')\n")
    code, report = validate_json(RECIPES / "quickstart.yaml", env={"PYTHONPATH": str(site)})
    assert code == 0 and report["valid"] is True
    assert report["recipes"] == [{"path": str(RECIPES / "quickstart.yaml"), "valid": True, "errors": [],
                                  "warnings": []}]
    [warning] = report["warnings"]
    assert warning["severity"] == "warning" and warning["code"] == "SK950" and warning["name"] == "plugin-skipped"
    assert "broken_plugin (brokenplugin) failed to load" in warning["message"] and "boom" in warning["message"]


def test_escaping_follows_the_workflow_command_spec():
    assert escape_data("100% done\r\nnext: a, b") == "100%25 done%0D%0Anext: a, b"
    assert escape_property("C:\\a,b%\n") == "C%3A\\a%2Cb%25%0A"
    assert escape_data("%0A") == "%250A"  # already-escaped-looking text survives a round trip


def unescape(text: str) -> str:
    """What GitHub's runner does to a workflow command's data and property values."""
    return re.sub(r"%(25|0D|0A|3A|2C)", lambda m: {"25": "%", "0D": "\r", "0A": "\n", "3A": ":", "2C": ","}[
        m.group(1)], text)


def parse_command(line: str) -> tuple[str, dict, str]:
    match = re.fullmatch(r"::(\w+) ([^:]*)::(.*)", line)
    assert match, line
    props = dict(item.split("=", 1) for item in match.group(2).split(","))
    return match.group(1), {k: unescape(v) for k, v in props.items()}, unescape(match.group(3))


def test_github_commands_round_trip_percent_comma_and_colon(tmp_path):
    folder = tmp_path / "odd%dir,with:chars"
    folder.mkdir()
    recipe = folder / "r%1,a:b.yaml"
    recipe.write_text((RECIPES / "quickstart.yaml").read_text().replace("seed: 0", '"50%,x:y": 0')
                      .replace("data/", str(RECIPES / "data") + "/"))
    site = fake_distribution(tmp_path / "site", "brokenplugin", "broken_plugin",
                             "raise RuntimeError('boom: 100%, really')\n")
    env = {"PYTHONPATH": str(site)}
    result = cli("validate", "--format", "github", recipe, env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    commands = [parse_command(line) for line in result.stdout.splitlines()]
    _, report = validate_json(recipe, env=env)
    [error] = report["recipes"][0]["errors"]
    [warning] = report["warnings"]
    assert commands[0] == ("warning", {"title": "selectkit SK950 plugin-skipped"},
                           f"{warning['message']} ({warning['hint']})")
    kind, props, message = commands[1]
    assert kind == "error" and props["file"] == str(recipe) and props["title"] == "selectkit SK101 unknown-key"
    assert (int(props["line"]), int(props["col"]), int(props["endLine"]), int(props["endColumn"])) == (
        error["line"], error["column"], error["end_line"], error["end_column"])
    assert message == error["message"] + (f" ({error['hint']})" if error["hint"] else "")
    assert "'50%,x:y'" in message


def test_readme_documents_every_code():
    readme = (ROOT / "README.md").read_text()
    for code in CODES.values():
        assert re.search(rf"\|\s*`{code.id}`\s*\|\s*`{code.name}`\s*\|", readme), f"{code.id} missing from README"


@pytest.mark.parametrize("fmt", ["text", "github", "json"])
def test_a_missing_recipe_is_reported_in_every_format(tmp_path, fmt):
    result = cli("validate", "--format", fmt, tmp_path / "nope.yaml")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "recipe not found" in result.stdout + result.stderr
    if fmt != "text":
        assert "SK005" in result.stdout
