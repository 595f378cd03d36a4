"""`selectkit eval`: known answers on the demo data through the real command (the quickstart's DSIR
selection beats random on held-out political statements; Hamlet lines for a politics target lose;
random vs random is inconclusive), the statistics on synthetic losses, and clean errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import RECIPES, cli

from selectkit.contract.keyed_random import row_keys
from selectkit.evaluation import stats as evalstats
from selectkit.evaluation.evaluate import overlap, split_target

# small enough for the default suite: each run trains 4 pairs x 3 arms of the default 23k-parameter proxy on a 5%
# selection's tokens (two pairs are too few for the pair level of the bootstrap: the null's CI came out too narrow)
SMALL = {"random_subsets": 4, "stratified": False, "pool_sample": 50, "bootstrap": 500, "permutations": 500,
         "proxy": {"epochs": 1}}  # the default proxy


def recipe(folder: Path, name: str, scores: str, select: str, evaluate: dict, targets: str = "", seed: int = 0) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(f"""selectkit: 1
name: {name}
seed: {seed}
data:
  pool: {{path: data/pool.jsonl, id: id}}
  targets:
    politics: {{path: data/target_politics.jsonl}}
{targets}scores:
{scores}select:
{select}output: {{dir: out/{name}, summarize_by: domain}}
evaluate: {json.dumps(evaluate)}
""")
    return path


def evaluation(path: Path, *extra: str) -> dict:
    done = cli("eval", path, "--format", "json", "-q", *extra)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The quickstart (DSIR toward politics, 5%) and a deliberately wrong recipe (DSIR toward Hamlet, 10%: Hamlet's
    lines are short, and 5% of them trains the proxy for too few steps to tell anything), evaluated on the
    held-out political statements."""
    import shutil

    folder = tmp_path_factory.mktemp("eval")
    shutil.copytree(RECIPES / "data", folder / "data")
    pool = pl.read_ndjson(folder / "data" / "pool.jsonl")
    hamlet = pool.filter(pl.col("domain") == "drama").head(40).select("id", "text")
    hamlet.write_ndjson(folder / "data" / "hamlet.jsonl")
    right = recipe(folder, "right", "  dsir: {use: dsir, targets: [politics]}\n",
                   "  - use: importance_resample\n    with: {score: dsir, budget: 5%}\n", SMALL)
    wrong = recipe(folder, "wrong", "  dsir: {use: dsir, targets: [hamlet]}\n",
                   "  - use: topk\n    with: {score: dsir, budget: 10%}\n", {**SMALL, "targets": ["politics"]},
                   targets="    hamlet: {path: data/hamlet.jsonl}\n")
    console = cli("eval", right, "-q")  # the text form; its results are in the run's manifest
    assert console.returncode == 0, console.stderr
    manifest = json.loads((folder / "out" / "right-eval" / "run" / "manifest.json").read_text())
    return {"folder": folder, "right": manifest["evaluation"], "console": console.stdout, "manifest": manifest,
            "wrong": evaluation(wrong)}


def test_quickstart_beats_random_on_held_out_politics(runs):
    result = runs["right"]
    politics = result["sets"]["politics"]
    assert result["verdicts"]["politics"] == "better", politics["selection_vs_random"]
    assert politics["selection_vs_random"]["ci_high"] < 0
    assert politics["bpb"]["selection"] < politics["bpb"]["random"]
    # the recipe never saw the held-out quarter: the scoring part on disk lacks exactly those rows
    split = result["split"]["politics"]
    assert (split["rows"], split["heldout"], split["scoring"]) == (100, 25, 75)
    scoring = pl.read_ndjson(split["scoring_file"])["id"].to_list()
    heldout = pl.read_ndjson(Path(split["scoring_file"]).with_name("politics.heldout.jsonl"))["id"].to_list()
    assert not set(scoring) & set(heldout) and len(scoring) == 75
    manifest = runs["manifest"]
    assert manifest["recipe"]["resolved"]["evaluate"]["random_subsets"] == 4  # the block is in the hashed recipe
    assert manifest["data"]["politics"]["rows"] == 75
    assert "DataDecide" in result["caveat"]
    page = (runs["folder"] / "out" / "right-eval" / "run" / "report.html").read_text()
    assert 'id="evaluation"' in page and "better" in page
    assert "manifest.json: " not in page  # the readers' schema (results/manifest.py) fits what eval writes


def test_hamlet_for_a_politics_target_is_worse(runs):
    result = runs["wrong"]
    assert result["verdicts"] == {"politics": "worse"}, result["sets"]["politics"]["selection_vs_random"]
    mix = result["arms"]["selection"][0]["mix"]
    assert max(mix, key=mix.get) == "drama"
    # every arm of a pair trains on the same number of tokens
    tokens = {arm: [a["tokens"] for a in info] for arm, info in result["arms"].items()}
    assert len({t for ts in tokens.values() for t in ts}) == 1


def test_random_vs_random_is_inconclusive(runs):
    for name in ("right", "wrong"):
        assert runs[name]["sets"]["politics"]["random_vs_random"]["verdict"] == "inconclusive"


def test_console_output_names_the_verdict_and_the_caveat(runs):
    text = runs["console"]
    assert "verdict: better" in text and "80%" in text and "contamination" in text and "95% CI" in text


def test_a_second_eval_reads_every_from_scratch_arm_back_from_the_cache(demo, tmp_path):
    """The default proxy's arms are cached (kind `eval`, keyed by the proxy's settings, the pair seed,
    the arm's tokens and the evaluation sets): a second eval trains nothing and gives the same bits."""
    settings = {**SMALL, "random_subsets": 2, "random_vs_random": False}
    scores = "  dsir: {use: dsir, targets: [politics]}\n"
    select = "  - use: topk\n    with: {score: dsir, budget: 5%}\n"
    env = {"SELECTKIT_CACHE_DIR": str(tmp_path / "cache")}

    def again(evaluate: dict) -> dict:
        done = cli("eval", recipe(demo, "arms", scores, select, evaluate), "--format", "json", "-q", env=env)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        return json.loads(done.stdout)

    first, second = again(settings), again(settings)
    assert (first["proxy"]["arms_cached"], first["proxy"]["arms_trained"]) == (0, 4)
    assert (second["proxy"]["arms_cached"], second["proxy"]["arms_trained"]) == (4, 0)
    assert second["sets"]["politics"]["bpb"] == first["sets"]["politics"]["bpb"]
    assert all(e["cached"] for entries in second["arms"].values() for e in entries)


def test_a_from_scratch_arms_key_names_everything_its_bits_depend_on():
    from selectkit.evaluation.evaluate import arm_key
    from selectkit.recipe.spec import ProxySpec

    spec, tokens = ProxySpec(), np.arange(128, dtype=np.int64).reshape(2, 64)
    sets = {"politics": [np.array([1, 2, 3])], "pool sample": [np.array([4, 5])]}
    key = arm_key("sel", spec, 7, tokens, sets)
    assert key.startswith("sel-arm-")  # pruned with the selection it was drawn against
    assert key == arm_key("sel", ProxySpec(), 7, tokens.copy(), {k: [v.copy() for v in x] for k, x in sets.items()})
    changed = [arm_key("sel", ProxySpec(learning_rate=1e-3), 7, tokens, sets), arm_key("sel", spec, 8, tokens, sets),
               arm_key("sel", spec, 7, tokens[::-1].copy(), sets),
               arm_key("sel", spec, 7, tokens, dict(reversed(sets.items()))),
               arm_key("sel", spec, 7, tokens, {**sets, "politics": [np.array([1, 2]), np.array([3])]})]
    assert len({key, *changed}) == 6


# statistics ------------------------------------------------------------------------------------------
def test_compare_finds_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(0)
    nbytes = rng.integers(50, 500, size=80).astype(float)
    base = nbytes[None, :] * rng.normal(3.0, 0.3, size=(5, 80))
    better = evalstats.compare("a", base - 0.1 * nbytes, "b", base, nbytes, bootstrap=1000, permutations=1000, seed=1)
    assert better.verdict == "better" and better.ci_high < 0 and better.p_value < 0.01
    assert abs(better.difference + 0.1) < 1e-9
    worse = evalstats.compare("b", base, "a", base - 0.1 * nbytes, nbytes, bootstrap=1000, permutations=1000, seed=1)
    assert worse.verdict == "worse"
    noise = base + nbytes * rng.normal(0, 0.05, size=(5, 80))
    null = evalstats.compare("a", noise, "b", base, nbytes, bootstrap=1000, permutations=1000, seed=1)
    assert null.verdict == "inconclusive" and null.ci_low < 0 < null.ci_high
    assert evalstats.small_k_factor(5) == pytest.approx(2.776 / 1.96 * (5 / 4) ** 0.5, rel=1e-3)  # t with 4 df
    again = evalstats.compare("a", noise, "b", base, nbytes, bootstrap=1000, permutations=1000, seed=1)
    assert again == null  # seeded


def test_split_is_keyed_by_row_id_not_position():
    ids = pl.Series([f"t{i}" for i in range(40)])
    mask = split_target(row_keys(ids), 0.25, 0, "politics")
    assert mask.sum() == 10
    order = np.random.default_rng(0).permutation(40)
    shuffled = split_target(row_keys(ids[order]), 0.25, 0, "politics")
    assert set(ids.filter(pl.Series(mask)).to_list()) == set(ids[order].filter(pl.Series(shuffled)).to_list())


def test_overlap_counts_shared_ngrams():
    found = overlap(["the cat sat on the mat today", "nothing in common here at all"],
                    ["yesterday the cat sat on the mat today, again"], 4)
    assert found["examples_with_overlap"] == 0.5 and 0 < found["ngrams_found"] < 1


# errors ----------------------------------------------------------------------------------------------
def test_a_recipe_without_targets_is_a_clean_error(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(f"selectkit: 1\nname: r\ndata:\n  pool: {{path: {Path(__file__).parent.parent}/recipes/data/"
                    "pool.jsonl}\nscores:\n  n: {use: length}\nselect:\n  - use: topk\n    with: {score: n, "
                    "budget: 10}\n")
    done = cli("eval", path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "has none" in done.stderr and "data.targets" in done.stderr


def test_an_unknown_evaluate_target_is_located_with_a_suggestion(demo):
    path = recipe(demo, "bad", "  dsir: {use: dsir, targets: [politics]}\n",
                  "  - use: topk\n    with: {score: dsir, budget: 10}\n", {"targets": ["politcs"]})
    for command in ("validate", "eval"):
        done = cli(command, path)
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert "bad.yaml:" in done.stderr and "did you mean 'politics'" in done.stderr


def test_evaluate_settings_are_checked_by_validate(demo):
    path = recipe(demo, "bad", "  dsir: {use: dsir, targets: [politics]}\n",
                  "  - use: topk\n    with: {score: dsir, budget: 10}\n",
                  {"random_subset": 3, "proxy": {"hidden": 30, "heads": 4}, "heldout": 1.5})
    done = cli("validate", path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "did you mean 'random_subsets'" in done.stderr
    assert "heads (4) must divide hidden (30)" in done.stderr and "heldout" in done.stderr
    done = cli("eval", path)
    assert done.returncode == 1 and "Traceback" not in done.stderr and "random_subsets" in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_random_selection_is_inconclusive(demo, seed):
    """Random vs random through the selection path: a `random` selector's subset against the random arms."""
    path = recipe(demo, f"random{seed}", "  n: {use: length}\n", "  - use: random\n    with: {budget: 10%}\n",
                  SMALL, seed=seed)
    assert evaluation(path)["verdicts"]["politics"] == "inconclusive"
