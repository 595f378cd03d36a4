"""Issue 14's selection-side methods: RS2 rounds, pass_rate's verifiers and pass bands, SMART's
choice probabilities. No model: the model-backed parts run in their recipes and tests elsewhere."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from _pools import select_ctx
from conftest import RECIPES, cli

from selectkit.data.sources import Dataset
from selectkit_plugins.selectors.rs2 import RS2


def rs2(n: int, seed: int = 0, ids=None, **params):
    data = None
    if ids is not None:
        rows = pl.DataFrame({"id": ids})
        data = Dataset(name="pool", rows=rows, ids=rows["id"], texts=["x"] * n, fingerprint="test")
    return RS2(RS2.Params(**params)).run(select_ctx(None, n, seed=seed, data=data))


def rounds_of(selection, n: int) -> list[set[int]]:
    table = np.asarray(selection.columns["round"])
    out: list[set[int]] = [set() for _ in range(int(table.max()))]
    for row, rounds in zip(np.asarray(selection.indices), table):
        for r in rounds[rounds > 0]:
            out[r - 1].add(int(row))
    return out


def test_rs2_rounds_without_replacement_use_every_example_equally():
    n, per_round = 100, 30
    sel = rs2(n, budget=per_round, rounds=7)
    rounds = rounds_of(sel, n)
    assert [len(r) for r in rounds] == [per_round] * 7  # each round r·N distinct rows
    assert set().union(*rounds[:3]) == set(rounds[0] | rounds[1] | rounds[2]) and len(rounds[0] | rounds[1] |
                                                                                     rounds[2]) == 90
    counts = np.zeros(n, int)
    counts[sel.indices] = sel.counts
    assert counts.sum() == 7 * per_round and counts.max() - counts.min() <= 1  # 210 uses of 100 rows: 2 or 3
    assert sel.diagnostics["passes"] == 3
    first = np.array([min(r for r, rows in enumerate(rounds) if i in rows) for i in sel.indices])
    assert (np.diff(first) >= 0).all()  # ordered by first round


def test_rs2_is_keyed_by_row_id_and_seeded():
    n = 60
    ids = np.arange(n) * 7 + 3
    a = rs2(n, ids=ids, budget="25%", rounds=5)
    perm = np.random.default_rng(0).permutation(n)
    b = rs2(n, ids=ids[perm], budget="25%", rounds=5)
    assert [{int(ids[i]) for i in r} for r in rounds_of(a, n)] == [{int(ids[perm][i]) for i in r}
                                                                    for r in rounds_of(b, n)]
    c = rs2(n, ids=ids, seed=1, budget="25%", rounds=5)
    assert rounds_of(a, n) != rounds_of(c, n)
    with_replacement = rs2(n, budget=15, rounds=5, replacement=True)
    assert [len(r) for r in rounds_of(with_replacement, n)] == [15] * 5
    again = rs2(n, ids=ids, budget="25%", rounds=5)
    np.testing.assert_array_equal(a.indices, again.indices)
    # `budget` is the per-round size, so the kept union may exceed it (check_selector's rule)


def test_rs2_recipe_writes_one_subset_per_round(tmp_path):
    out = tmp_path / "out"
    result = cli("run", "-q", RECIPES / "rs2.yaml", "--limit", "200", "--out", out)
    assert result.returncode == 0, result.stderr
    table = pl.read_parquet(out / "selection.parquet")
    rounds = [pl.read_ndjson(out / f"subset.round-{t}.jsonl") for t in (1, 2, 3)]
    assert [r.height for r in rounds] == [20, 20, 20]
    assert len(set(rounds[0]["id"]) | set(rounds[1]["id"]) | set(rounds[2]["id"])) == 60
    assert table.filter(pl.col("selected"))["round"].list.len().to_list() == [1] * 60


# ---------------------------------------------------------------- pass_rate


def test_verifiers_by_hand():
    from selectkit.contract.registry import default_registry

    reg = default_registry()

    def verifier(name, **params):
        cls = reg.get("verifiers", name)
        return cls(cls.Params(**params))

    numeric = verifier("numeric")
    assert numeric.check("The answer is 1,000.", "#### 1000")
    assert numeric.check("12 apples and then 7", "7") and not numeric.check("12 apples and then 7", "12")
    assert verifier("numeric", which="first").check("12 apples and then 7", "12")
    assert not numeric.check("no number here", "3")
    exact = verifier("exact_match")
    assert exact.check("  Paris \nand more", "paris") and not exact.check("Lyon", "Paris")
    assert verifier("regex", pattern=r"answer: (\w+)").check("the answer: blue.", "blue")
    assert verifier("regex", pattern=r"\b{answer}\b").check("it is 3.5 m", "3.5")


def test_pass_rate_scores_and_band_by_hand():
    from selectkit_plugins.scorers.pass_rate import PassRate, VerifierRef, build_verifier, pass_rates

    check = build_verifier(VerifierRef(use="numeric"))
    rates = pass_rates(check, [["4", "4", "5", "4"], ["9", "9", "9", "9"], ["1", "2", "3", "4"]], ["4", "9", "7"])
    np.testing.assert_allclose(rates, [0.75, 1.0, 0.0])
    with pytest.raises(ValueError, match="pass_band"):
        PassRate.Params(prompt="{q}", answer="a", pass_band=(0.9, 0.1))
    with pytest.raises(ValueError, match="nope"):
        PassRate.Params(prompt="{q}", answer="a", verifier={"use": "nope"})


def test_pass_rate_with_a_bad_verifier_is_a_clean_error(tmp_path):
    recipe = (RECIPES / "grpo_hard.yaml").read_text().replace("use: numeric", "use: numerik")
    path = tmp_path / "r.yaml"
    path.write_text(recipe.replace("data/", str(RECIPES / "data") + "/").replace("models/",
                                                                                str(RECIPES / "models") + "/"))
    result = cli("validate", path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "numerik" in result.stdout + result.stderr


# ---------------------------------------------------------------- SMART


def test_smart_confidence_by_hand():
    from selectkit_plugins.scorers.smart import choice_probabilities, model_confident

    logp = np.log(np.array([[0.9, 0.05, 0.05], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8]]))
    logp = np.concatenate([logp, [[np.log(0.95), np.log(0.05), np.nan]]])
    np.testing.assert_allclose(choice_probabilities(logp)[3], [0.95, 0.05, 0.0])  # no third choice: probability 0
    np.testing.assert_array_equal(model_confident(logp, np.array([0, 0, 0, 0]), 0.8), [1, 0, 0, 1])
    # row 2: p = 0.8 is not above 0.8
    np.testing.assert_array_equal(model_confident(logp, np.array([0, 1, 2, 1]), 0.8), [1, 0, 0, 0])


def test_smart_answer_forms():
    from selectkit_plugins.scorers.smart import answer_index

    rows = pl.DataFrame({"answer": ["B", "1", "c", "0"]})
    pool = Dataset(name="pool", rows=rows, ids=pl.Series("id", [0, 1, 2, 3]), texts=["x"] * 4, fingerprint="t")
    got = answer_index(pool, "answer", ["a", "b", "c"], np.zeros((4, 3)))
    np.testing.assert_array_equal(got, [1, 1, 2, 0])


def test_mcq_demo_data_is_well_formed():
    rows = [json.loads(line) for line in (RECIPES / "data" / "mcq.jsonl").read_text().splitlines()]
    assert all(0 <= r["answer"] < len(r["choices"]) for r in rows)
