"""The artifact cache as a shared, hostile place: corrupt or truncated entries are found by their
checksums and computed again (never read as data), concurrent writers of one key are safe, an
unusable cache folder is a clear error naming SELECTKIT_CACHE_DIR, `prune --keep` keeps exactly
what a recipe needs, and keys depend on content, not on how a path was spelled."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import cli

from selectkit.contract.components import Score, Shape
from selectkit.execution.artifacts import load_score, save_score
from selectkit.storage.cache import Cache, Staging


def _statuses(out: Path) -> dict[str, str]:
    """Status of every step that has a cache entry (reading a target and writing are always done)."""
    return {s["step"]: s["status"] for s in json.loads((out / "manifest.json").read_text())["stages"] if s["key"]}


def _run(recipe: Path, out: Path, cache: Path, *args: str):
    result = cli("run", recipe, "--out", out, *args, env={"SELECTKIT_CACHE_DIR": str(cache)})
    assert result.returncode == 0, result.stdout + result.stderr
    return result


# ---------------------------------------------------------------- entries and shards


def test_entry_is_complete_or_absent_and_checksummed(tmp_path):
    cache = Cache(tmp_path)
    score = Score(np.arange(5.0))
    save_score(cache, "k1", score)
    assert load_score(cache, "k1").values.tolist() == [0, 1, 2, 3, 4]
    meta = json.loads((tmp_path / "scores" / "k1" / "meta.json").read_text())
    assert set(meta["files"]) == {"arrays.npz"} and len(meta["files"]["arrays.npz"]["sha256"]) == 64
    # flip one byte of the data: the checksum catches it, the entry goes, a warning says so
    data = tmp_path / "scores" / "k1" / "arrays.npz"
    raw = bytearray(data.read_bytes())
    raw[-5] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="corrupt or incomplete; computing it again"):
        assert load_score(cache, "k1") is None
    assert not (tmp_path / "scores" / "k1").exists()


def test_killed_writer_leaves_no_entry(tmp_path):
    cache = Cache(tmp_path)
    staging = cache.stage("scores", "k2")
    staging.add_bytes("arrays.npz", b"half")
    # the process dies here: the staging folder stays, but no entry appears
    assert not cache.has("scores", "k2") and load_score(cache, "k2") is None
    assert [e.key for e in cache.entries()] == []


def test_concurrent_writers_of_one_key(tmp_path):
    cache = Cache(tmp_path)
    score = Score(np.linspace(0, 1, 1000), Shape.VECTOR)
    errors: list[BaseException] = []

    def write():
        try:
            save_score(cache, "same", score)
        except BaseException as exc:  # noqa: BLE001 - any failure fails the test
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(300)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    np.testing.assert_array_equal(load_score(cache, "same").values, score.values)
    leftovers = [p.name for p in (tmp_path / "scores").iterdir() if p.name != "same"]
    assert leftovers == []  # every losing writer cleaned up its staging folder


def test_sharded_entry_resumes_and_replaces_a_corrupt_shard(tmp_path):
    cache = Cache(tmp_path)
    entry = cache.sharded("passes", "p1", 3)
    entry.write(0, {"x": np.zeros(4)})
    entry.write(2, {"x": np.full(4, 2.0)})
    assert entry.missing() == [1] and not entry.complete()
    entry.write(1, {"x": np.ones(4)})
    entry.finish()
    assert cache.has("passes", "p1") and entry.verified()
    next(entry.shard_folder(1).glob("*.np[yz]")).write_bytes(b"garbage")  # the shard's data file
    with pytest.warns(UserWarning, match="shard 1 .* corrupt"):
        assert entry.read(1) is None
    assert entry.missing() == [1] and not entry.complete()  # the entry is whole again only after a rewrite


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o002)
    try:
        save_score(Cache(tmp_path), "u", Score(np.zeros(3)))
    finally:
        os.umask(old)
    folder = tmp_path / "scores" / "u"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o775
    assert stat.S_IMODE((folder / "arrays.npz").stat().st_mode) == 0o664
    assert stat.S_IMODE((folder / "meta.json").stat().st_mode) == 0o664


def test_staging_discards_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with Staging(tmp_path / "kind" / "key", {}) as staging:
            staging.add_bytes("a", b"1")
            raise RuntimeError("boom")
    assert not list((tmp_path / "kind").iterdir())


# ---------------------------------------------------------------- through the CLI


@pytest.mark.parametrize("damage", ["truncate", "garbage-meta", "missing-file", "pool-shard"])
def test_corrupt_artifacts_are_recomputed_with_a_warning(demo, tmp_path, damage):
    cache, recipe = tmp_path / "cache", demo / "quickstart.yaml"
    _run(recipe, tmp_path / "a", cache)
    first = (tmp_path / "a" / "selection.parquet").read_bytes()
    score = next(p for p in (cache / "scores").iterdir() if not p.name.startswith("."))
    if damage == "truncate":
        data = score / "arrays.npz"
        data.write_bytes(data.read_bytes()[:100])
    elif damage == "garbage-meta":
        (score / "meta.json").write_text("{not json")
    elif damage == "missing-file":
        (score / "arrays.npz").unlink()
    else:
        shard = next((cache / "pool").glob("*/shard-00000/arrays.npz"))
        shard.write_bytes(b"\x00" * shard.stat().st_size)
    result = _run(recipe, tmp_path / "b", cache)
    assert "corrupt" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "b" / "selection.parquet").read_bytes() == first


@pytest.mark.parametrize("where", ["a-file", "under-a-file"])
def test_unusable_cache_dir_is_a_clear_error(demo, tmp_path, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    cache = blocker if where == "a-file" else blocker / "cache"
    result = cli("run", demo / "quickstart.yaml", "--out", tmp_path / "o", env={"SELECTKIT_CACHE_DIR": str(cache)})
    assert result.returncode == 1, result.stderr
    assert "SELECTKIT_CACHE_DIR" in result.stderr and "Traceback" not in result.stderr


def test_read_only_cache_dir_is_a_clear_error(demo, tmp_path):
    mount = tmp_path / "ro"
    mount.mkdir()
    if os.system(f"mount -t tmpfs -o size=1m,ro tmpfs {mount} 2>/dev/null") != 0:
        pytest.skip("cannot mount a read-only tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        result = cli("run", demo / "quickstart.yaml", "--out", tmp_path / "o",
                     env={"SELECTKIT_CACHE_DIR": str(mount / "cache")})
    finally:
        os.system(f"umount {mount}")
    assert result.returncode == 1 and "SELECTKIT_CACHE_DIR" in result.stderr and "Traceback" not in result.stderr


def test_prune_keeps_exactly_what_a_recipe_needs(demo, tmp_path):
    cache = tmp_path / "cache"
    env = {"SELECTKIT_CACHE_DIR": str(cache)}
    quick, model = demo / "quickstart.yaml", demo / "perplexity_filter.yaml"
    _run(quick, tmp_path / "q", cache)
    _run(model, tmp_path / "m", cache, "--limit", "120")
    listing = cli("cache", "list", env=env)
    assert listing.returncode == 0 and "passes" in listing.stdout and "pool" in listing.stdout
    pruned = cli("cache", "prune", "--keep", quick, env=env)
    assert pruned.returncode == 0, pruned.stderr
    # the kept recipe recomputes nothing ...
    _run(quick, tmp_path / "q2", cache)
    assert set(_statuses(tmp_path / "q2").values()) == {"cached"}, _statuses(tmp_path / "q2")
    # ... and the other one recomputes its own work, model pass included
    _run(model, tmp_path / "m2", cache, "--limit", "120")
    statuses = _statuses(tmp_path / "m2")
    assert statuses["pass:forward:lm:pool"] == "computed" and statuses["score:ppl"] == "computed"


def test_keys_do_not_depend_on_how_a_path_is_spelled(demo, tmp_path):
    cache = tmp_path / "cache"
    _run(demo / "quickstart.yaml", tmp_path / "a", cache)
    other = tmp_path / "elsewhere"
    other.symlink_to(demo)
    spelled = other / ".." / "elsewhere" / "quickstart.yaml"
    _run(spelled, tmp_path / "b", cache)
    assert set(_statuses(tmp_path / "b").values()) == {"cached"}, _statuses(tmp_path / "b")
    a = pl.read_parquet(tmp_path / "a" / "selection.parquet")
    assert a.equals(pl.read_parquet(tmp_path / "b" / "selection.parquet"))
