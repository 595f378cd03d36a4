"""The docs' examples run verbatim: docs/plugins.md's scorer, selector and sharded pass provider,
installed as a third-party plugin (a distribution on PYTHONPATH), in a recipe run through the CLI."""

from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest
from conftest import ROOT, cli

from selectkit.contract.keyed_random import row_keys

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """A distribution whose three plugin modules are the ```python blocks of docs/plugins.md, verbatim."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "plugins.md").read_text(), re.S)
    assert len(blocks) == 3
    site = tmp_path_factory.mktemp("site")
    names = ["docs_scorer", "docs_selector", "docs_pass"]
    for name, block in zip(names, blocks):
        (site / f"{name}.py").write_text(block)
    info = site / "docsplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: docsplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[selectkit]\n" + "".join(f"{n} = {n}\n" for n in names))
    return site


def test_the_guides_plugin_runs_in_a_recipe(plugin_site, tmp_path):
    env = {"PYTHONPATH": str(plugin_site)}
    listed = cli("plugins", env=env).stdout
    assert all(name in listed for name in ("digit_share", "longest", "embedding_norm"))
    recipe = tmp_path / "docs.yaml"
    recipe.write_text(f"""
selectkit: 1
name: docs-plugin
data:
  pool: {{path: {ROOT / 'recipes/data/pool.jsonl'}, id: id, limit: 300}}
models:
  lm: {{path: {ROOT / 'recipes/models/tiny-lm'}, kind: causal-lm, max_length: 64}}
scores:
  digits: {{use: digit_share, with: {{ignore_spaces: false}}}}
  rare: {{use: embedding_norm, model: lm}}
select:
  - use: longest
    with: {{budget: 100}}
  - use: topk
    with: {{score: rare, budget: 25}}
output: {{dir: {tmp_path / 'out'}, formats: [parquet], include_text: true}}
""")
    assert cli("validate", recipe, env=env).returncode == 0
    plan = cli("plan", recipe, "--shard-rows", "128", env=env)
    assert plan.returncode == 0, plan.stderr
    assert "embedding norms of lm over pool" in plan.stdout and "shards: 3" in plan.stdout
    result = cli("run", recipe, "--shard-rows", "128", env=env)
    assert result.returncode == 0, result.stderr
    table = pl.read_parquet(tmp_path / "out" / "selection.parquet")
    texts = table["text"].to_list()

    # the scorer: its definition, by hand
    digits = [sum(c.isdigit() for c in t) / max(len(t), 1) for t in texts]
    np.testing.assert_allclose(table["score.digits"].to_numpy(), digits)

    # the selector: the 100 longest (ties by row key) reached the next stage
    tokens = table["tokens"].to_numpy()
    order = np.lexsort((row_keys(table["id"]), -tokens))
    longest = set(order[:100].tolist())
    survived = set(np.flatnonzero(table["dropped_by"].to_numpy() != "longest").tolist())
    assert survived == longest

    # the pass provider: the mean input-embedding norm of each text's tokens, computed directly
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = ROOT / "recipes/models/tiny-lm"
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder)
    weights = model.get_input_embeddings().weight.detach()
    expected = [weights[tok(t, truncation=True, max_length=64)["input_ids"]].norm(dim=-1).mean().item()
                for t in texts]
    np.testing.assert_allclose(table["score.rare"].to_numpy(), expected, rtol=1e-5)
    assert table["selected"].sum() == 25

    # a rerun finds the scores cached: no model is loaded, no pass runs
    again = cli("run", recipe, "--shard-rows", "128", env=env)
    assert again.returncode == 0 and "score: rare (cached)" in again.stderr
    assert "loading model" not in again.stderr and "embedding norms" not in again.stderr


def test_the_python_guide_runs_verbatim(demo, monkeypatch, capsys):
    """docs/python.md's ```python blocks, in order, in one namespace (a notebook session), from a folder that
    holds a copy of recipes/; each printed value the guide shows in a comment is checked."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "python.md").read_text(), re.S)
    assert len(blocks) == 5
    monkeypatch.chdir(demo.parent)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/python.md", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "130 of 1,306 selected" in printed
    assert "scores.dsir.use: unknown scorer 'dsirr'; did you mean 'dsir'?" in printed
    assert "pool= has no id column 'id' (its columns: text, domain)" in printed
    assert namespace["top50"].manifest["selection"]["selected"] == 50
    assert len(namespace["batch"]["text"]) == 8
    assert (demo.parent / "out" / "top50" / "subset.hf_dataset").is_dir()
    assert "['step-2', 'step-4']\n[True]\n" in printed  # the callback's checkpoints, their pool gradients cached
    assert "out/less-callback: 2 of 48 selected" in printed
