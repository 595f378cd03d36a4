"""A model pass split over several devices (each computes every k-th shard) gives the same
features as one pass; which devices a run splits over."""

from __future__ import annotations

import numpy as np
import pytest
from model_fixtures import dataset, tiny_causal_lm

from selectkit.execution.local import pass_devices
from selectkit.planning.estimates import parse_inventory
from selectkit.recipe.spec import ModelSpec
from selectkit.testing import compute_features
from selectkit_plugins.passes.forward import feature_request

pytest.importorskip("torch")


def test_split_shards_equal_one_pass(tmp_path):
    folder = tiny_causal_lm(tmp_path / "lm")
    spec = ModelSpec(path=str(folder), kind="causal-lm", max_length=64)
    texts = [f"example {i} " + "word " * (i % 7) for i in range(40)]
    data = {"pool": dataset("pool", texts)}
    reqs = [feature_request("loss"), feature_request("el2n")]
    whole = compute_features(spec, tmp_path, data, reqs, tmp_path / "one", shard_size=8, device="cpu")
    for worker in range(3):  # three "devices" share the shards
        part = compute_features(spec, tmp_path, data, reqs, tmp_path / "split", shard_size=8, device="cpu",
                                worker=(worker, 3))
        assert part.stats.shards_computed == len(range(worker, 5, 3))
    assembled = compute_features(spec, tmp_path, data, reqs, tmp_path / "split", shard_size=8, device="cpu")
    assert assembled.stats.shards_computed == 0 and not assembled.stats.model_loaded
    for kind in ("loss", "el2n"):
        np.testing.assert_array_equal(assembled.get(kind, "pool"), whole.get(kind, "pool"))


def test_which_devices_a_pass_uses():
    two = parse_inventory(devices="cuda:0,cuda:1")
    assert pass_devices(two, "auto") == ["cuda:0", "cuda:1"]
    assert pass_devices(two, "cuda:1") == []  # the recipe pinned a device
    assert pass_devices(parse_inventory(devices="cpu"), "auto") == []
    assert pass_devices(parse_inventory(assume="8xH100-80GB"), "auto") == []  # plans are never run
