"""`selectkit plugins` is readable (choices, whole first sentences, JSON defaults; one component in
full with NAME) and the JSON Schema describes every `use:` value with its component's summary,
for the built-ins and for a team's own plugins alike."""

from __future__ import annotations

import inspect
import json

import pytest
from conftest import ROOT, cli
from test_registry import fake_distribution

from selectkit.contract import components
from selectkit.contract.registry import default_registry
from selectkit.recipe.schema import summary_of

TEAM_PLUGIN = '''
    from typing import Literal

    import numpy as np
    from pydantic import Field

    from selectkit.contract.components import Params, Score, Scorer
    from selectkit.contract.hookspecs import hookimpl


    class Vowels(Scorer):
        """Share of vowels in the text, counted per character
        of the example. A toy scorer for the tests."""

        name = "vowels"

        class Params(Params):
            alphabet: Literal["latin", "greek"] = Field("latin", description="which vowels count")

        def run(self, ctx):
            return Score(np.array([sum(c in "aeiou" for c in t) / max(len(t), 1) for t in ctx.pool.texts]))


    @hookimpl
    def register_scorers(register):
        register(Vowels)
'''


def test_listing_shows_choices_whole_first_sentences_and_json_defaults():
    result = cli("plugins")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert 'preset: "robust" | "reference" = "robust"  # robust: smoothed' in out  # dsir's Literal
    assert "per_target: bool = false" in out and "response: str | null = null" in out
    # first sentences that the docstrings wrap over two lines, shown whole on one
    assert ("Model embeddings of the pool and of the targets it names (all by default, none when the recipe has "
            "none), for feature-based selectors.  [selectkit]") in out
    assert ("GraNd (Paul et al. 2021): mean over checkpoints (and seeded training runs) of ||grad loss(z)||.  "
            "[selectkit]") in out
    listing = json.loads(cli("plugins", "--format", "json").stdout)
    dsir = next(c for c in listing["scorers"] if c["name"] == "dsir")
    preset = next(p for p in dsir["params"] if p["name"] == "preset")
    assert preset["choices"] == ["robust", "reference"] and preset["default"] == "robust"
    assert next(p for p in dsir["params"] if p["name"] == "per_target")["default"] is False


def test_one_component_in_full():
    result = cli("plugins", "balanced")
    assert result.returncode == 0, result.stderr
    doc = inspect.cleandoc(default_registry().get("selectors", "balanced").__doc__)
    assert doc in result.stdout  # the whole docstring, not its first line
    for line in ("balanced  (selector from selectkit, version 1)", "accepts:                matrix",
                 "budget:                 required", 'rule: "marginal" | "argmin_task" = "marginal"',
                 "      marginal: highest gain over the current task means"):
        assert line in result.stdout, line
    perplexity = cli("plugins", "perplexity").stdout
    assert "model kinds:            causal-lm" in perplexity and "targets:                not used" in perplexity
    assert "targets:                needed" in cli("plugins", "dsir").stdout
    [detail] = json.loads(cli("plugins", "zscore", "--format", "json").stdout)
    assert detail["kind"] == "normalizer" and detail["accepts"] == ["matrix", "vector"]


def test_unknown_component_name_is_a_usage_error_with_a_suggestion():
    result = cli("plugins", "topkk")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "unknown component 'topkk'; did you mean 'topk'?" in result.stderr


def _internal_docstrings() -> set[str]:
    return {inspect.cleandoc(obj.__doc__) for _, obj in inspect.getmembers(components, inspect.isclass)
            if obj.__module__ == components.__name__ and obj.__doc__}


def _descriptions(node):
    if isinstance(node, dict):
        if isinstance(node.get("description"), str):
            yield node["description"]
        for value in node.values():
            yield from _descriptions(value)
    elif isinstance(node, list):
        for value in node:
            yield from _descriptions(value)


def test_schema_describes_every_use_value_and_no_internal_docstring():
    schema = json.loads((ROOT / "schemas" / "recipe.schema.json").read_text())
    registry = default_registry()
    for kind, model in (("scorers", "ScoreSpec"), ("selectors", "StageSpec"), ("normalizers", "ComponentRef")):
        choices = schema["$defs"][model]["properties"]["use"]["anyOf"]
        assert [c["const"] for c in choices] == registry.names(kind)
        for choice in choices:
            assert choice["description"] == summary_of(registry.get(kind, choice["const"])) != ""
    shorthand = schema["$defs"]["ScoreSpec"]["properties"]["normalize"]["items"]["anyOf"][0]["anyOf"]
    assert [c["const"] for c in shorthand] == registry.names("normalizers")
    internal = _internal_docstrings()
    assert internal and not internal & set(_descriptions(schema))


def test_schema_rejects_unknown_use_values():
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    schema = json.loads((ROOT / "schemas" / "recipe.schema.json").read_text())
    recipe = yaml.safe_load((ROOT / "recipes" / "quickstart.yaml").read_text())
    jsonschema.validate(recipe, schema)
    for bad in ({"scores": {**recipe["scores"], "x": {"use": "lenght"}}},
                {"scores": {**recipe["scores"], "x": {"use": "length", "normalize": ["zscor"]}}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**recipe, **bad}, schema)


def test_a_teams_own_plugin_in_plugins_and_schema(tmp_path):
    site = fake_distribution(tmp_path / "site", "teamplugin", "team_plugin", TEAM_PLUGIN)
    env = {"PYTHONPATH": str(site)}
    out = tmp_path / "repo" / "schemas" / "recipe.schema.json"
    result = cli("schema", "--out", out, env=env)
    assert result.returncode == 0, result.stderr
    schema = json.loads(out.read_text())
    choices = {c["const"]: c["description"] for c in schema["$defs"]["ScoreSpec"]["properties"]["use"]["anyOf"]}
    assert choices["vowels"] == "Share of vowels in the text, counted per character of the example."
    [clause] = [c for c in schema["$defs"]["ScoreSpec"]["allOf"] if c["if"]["properties"]["use"]["const"] == "vowels"]
    assert clause["then"]["properties"]["with"]["properties"]["alphabet"]["enum"] == ["latin", "greek"]
    assert cli("schema", "--check", "--out", out, env=env).returncode == 0
    stale = cli("schema", "--check", "--out", out)  # without the plugin installed
    assert stale.returncode == 1 and "is stale" in stale.stderr
    detail = cli("plugins", "vowels", env=env)
    assert detail.returncode == 0, detail.stderr
    assert "vowels  (scorer from teamplugin, version 1)" in detail.stdout
    assert "A toy scorer for the tests." in detail.stdout and 'alphabet: "latin" | "greek" = "latin"' in detail.stdout


def test_schema_strict_refuses_a_broken_plugin(tmp_path):
    site = fake_distribution(tmp_path / "site", "brokenplugin", "broken_plugin", "raise RuntimeError('boom')\n")
    env = {"PYTHONPATH": str(site)}
    out = tmp_path / "s.json"
    loose = cli("schema", "--out", out, env=env)
    assert loose.returncode == 0 and "broken_plugin (brokenplugin) failed to load" in loose.stderr
    strict = cli("schema", "--strict", "--out", tmp_path / "t.json", env=env)
    assert strict.returncode == 2 and "boom" in strict.stderr and "Traceback" not in strict.stderr
    assert not (tmp_path / "t.json").exists()
