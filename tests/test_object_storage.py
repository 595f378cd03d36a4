"""Pools, targets, cache and outputs on object storage, against a real S3-compatible server (moto's
server mode on 127.0.0.1, a random free port), through the real CLI: the quickstart read from a
bucket selects byte for byte what it selects from local files; store failures are one line."""

from __future__ import annotations

import json
import socket
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import RECIPES, cli

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

BUCKET = "pools"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """Credentials and endpoint from the standard environment (what the CLI child inherits), a
    fresh bucket holding the quickstart data, and a boto3 client for the test's own looks."""
    env = {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    client = boto3.client("s3", endpoint_url=s3_server)
    for bucket in client.list_buckets().get("Buckets", []):  # each test starts from empty buckets
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket["Name"]):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=bucket["Name"], Key=obj["Key"])
        client.delete_bucket(Bucket=bucket["Name"])
    client.create_bucket(Bucket=BUCKET)
    for name in ("pool.jsonl", "target_politics.jsonl"):
        client.upload_file(str(RECIPES / "data" / name), BUCKET, f"quickstart/{name}")
    return client


def _recipe(folder: Path, *, pool: str, target: str, out: str) -> Path:
    text = (RECIPES / "quickstart.yaml").read_text()
    text = text.replace("path: data/pool.jsonl", f"path: {pool}")
    text = text.replace("path: data/target_politics.jsonl", f"path: {target}")
    text = text.replace("dir: ../out/quickstart", f"dir: {out}")
    file = folder / "quickstart.yaml"
    file.write_text(text)
    return file


def _local_selection(tmp_path: Path) -> bytes:
    out = tmp_path / "local-out"
    run = cli("run", RECIPES / "quickstart.yaml", "--out", out, "-q", "--cache-dir", tmp_path / "local-cache")
    assert run.returncode == 0, run.stderr
    return (out / "selection.parquet").read_bytes()


def test_pool_and_target_from_s3_select_what_local_files_select(s3, tmp_path):
    expected = _local_selection(tmp_path)
    recipe = _recipe(tmp_path, pool=f"s3://{BUCKET}/quickstart/pool.jsonl",
                     target=f"s3://{BUCKET}/quickstart/target_*.jsonl", out=str(tmp_path / "out"))
    assert cli("validate", recipe).returncode == 0
    run = cli("run", recipe, "-q", "--cache-dir", tmp_path / "cache")
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "out" / "selection.parquet").read_bytes() == expected
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert "s3://pools/quickstart/pool.jsonl" in json.dumps(manifest)
    # a second run is served from the cache: the fingerprint comes from the object's ETag, not a download
    again = cli("run", recipe, "-q", "--cache-dir", tmp_path / "cache")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "out" / "selection.parquet").read_bytes() == expected


def test_a_missing_bucket_is_one_line(s3, tmp_path):
    recipe = _recipe(tmp_path, pool="s3://no-such-bucket/pool.jsonl",
                     target=f"s3://{BUCKET}/quickstart/target_politics.jsonl", out=str(tmp_path / "out"))
    for command in ("validate", "run"):
        result = cli(command, recipe, *(["-q"] if command == "run" else []))
        assert result.returncode != 0
        assert "Traceback" not in result.stderr + result.stdout
        lines = [line for line in (result.stderr + result.stdout).splitlines() if "no-such-bucket" in line]
        assert lines and "bucket 'no-such-bucket' does not exist" in lines[0], result.stderr + result.stdout
    assert not (tmp_path / "out").exists()


def test_an_object_replaced_after_planning_stops_the_run(s3, tmp_path):
    """The plan pins each object's ETag; a pool object rewritten before it is read is an error naming
    it, never a selection over a mix of two versions."""
    from selectkit import api
    from selectkit.errors import SelectkitError

    recipe = _recipe(tmp_path, pool=f"s3://{BUCKET}/quickstart/pool.jsonl",
                     target=f"s3://{BUCKET}/quickstart/target_politics.jsonl", out=str(tmp_path / "out"))
    plan = api.plan(recipe, cache_dir=tmp_path / "cache")
    body = (RECIPES / "data" / "pool.jsonl").read_bytes()
    s3.put_object(Bucket=BUCKET, Key="quickstart/pool.jsonl", Body=body.replace(b'"text": "', b'"text": "x ', 1))
    with pytest.raises(SelectkitError, match=r"s3://pools/quickstart/pool.jsonl changed during the run"):
        api.run_plan(plan)
    assert not (tmp_path / "out").exists()


def test_a_replaced_object_is_caught_between_shards(s3, tmp_path):
    """Shard by shard: rows already read came from one version; the next read of another version fails."""
    from selectkit.data.pool import SourceSpec, Table, read_shard
    from selectkit.data.sources import source_files
    from selectkit.storage.objects import ObjectError, ObjectPath
    from selectkit_plugins.readers import JsonLines

    files = tuple(source_files(ObjectPath(f"s3://{BUCKET}/quickstart/pool.jsonl")))
    assert files[0].meta["etag"] and files[0].meta["size"] == (RECIPES / "data" / "pool.jsonl").stat().st_size
    table = Table(SourceSpec("pool", files, JsonLines, "text", "id"))
    assert len(read_shard(table, 0, 100)) == 100
    s3.put_object(Bucket=BUCKET, Key="quickstart/pool.jsonl", Body=b'{"id": 1, "text": "other"}\n')
    with pytest.raises(ObjectError, match="changed during the run"):
        read_shard(table, 100, 200)


def test_parquet_shards_are_read_by_row_group_from_s3(s3, tmp_path):
    """A glob over parquet shards in a bucket: rows equal the local files', read by range requests."""
    import polars as pl

    from selectkit.data.pool import SourceSpec, Table
    from selectkit.data.sources import source_files
    from selectkit.storage.objects import ObjectPath
    from selectkit_plugins.readers import Parquet, StoredParquetRows

    frame = pl.read_ndjson(RECIPES / "data" / "pool.jsonl")
    for i in range(3):
        part = tmp_path / f"part-{i}.parquet"
        frame.slice(i * 500, 500).write_parquet(part, row_group_size=100)
        s3.upload_file(str(part), BUCKET, f"shards/part-{i}.parquet")
    files = tuple(source_files(ObjectPath(f"s3://{BUCKET}/shards/part-*.parquet")))
    assert [f.name for f in files] == ["part-0.parquet", "part-1.parquet", "part-2.parquet"]
    table = Table(SourceSpec("pool", files, Parquet, "text", "id"))
    assert all(isinstance(p, StoredParquetRows) for p in table.parts)
    assert table.rows == frame.height
    assert table.slice(450, 1050).equals(frame.slice(450, 600))
    assert table.column("id", 990, 1010).to_list() == frame["id"].slice(990, 20).to_list()


def test_validate_warns_about_a_secret_in_a_url(s3, s3_server, tmp_path):
    """A target over plain https(-like) with a token in its query is read (the same fsspec path),
    and validate warns that the recipe holds a secret."""
    s3.put_object_acl(Bucket=BUCKET, Key="quickstart/target_politics.jsonl", ACL="public-read")
    recipe = _recipe(tmp_path, pool=f"s3://{BUCKET}/quickstart/pool.jsonl",
                     target=f"{s3_server}/{BUCKET}/quickstart/target_politics.jsonl?token=abc",
                     out=str(tmp_path / "out"))
    result = cli("validate", recipe)
    assert result.returncode == 0, result.stderr
    assert "the URL holds a token in its query" in result.stderr + result.stdout
    assert "token=abc" not in result.stderr + result.stdout


def test_a_missing_store_package_names_its_extra(tmp_path):
    """Without gcsfs, a gs:// source is one line naming the `gcs` extra (run in a child whose import
    of gcsfs fails, so the test holds whichever packages are installed)."""
    recipe = _recipe(tmp_path, pool="gs://bucket/pool.jsonl", target="gs://bucket/target.jsonl",
                     out=str(tmp_path / "out"))
    sitecustomize = tmp_path / "nogcs"
    sitecustomize.mkdir()
    (sitecustomize / "gcsfs.py").write_text("raise ImportError('gcsfs is not installed')\n")
    result = cli("validate", recipe, env={"PYTHONPATH": str(sitecustomize)})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    assert "pip install 'selectkit[gcs]'" in result.stderr + result.stdout


def _keys(client, prefix: str) -> set[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def test_cache_on_s3_is_shared_by_machines_with_no_common_disk(s3, tmp_path):
    """Two runs with their own local mirror folders (two machines): the second computes nothing,
    it pulls every entry the first published, and selects the same bytes."""
    expected = _local_selection(tmp_path)
    recipe = _recipe(tmp_path, pool=f"s3://{BUCKET}/quickstart/pool.jsonl",
                     target=f"s3://{BUCKET}/quickstart/target_politics.jsonl", out=str(tmp_path / "out"))
    first = cli("run", recipe, "-q", "--cache-dir", f"s3://{BUCKET}/cache",
                env={"SELECTKIT_CACHE_MIRROR": str(tmp_path / "machine-a")})
    assert first.returncode == 0, first.stderr
    published = _keys(s3, "cache/")
    assert any(k.endswith("/_COMMITTED.json") for k in published)
    second = cli("run", recipe, "-q", "--cache-dir", f"s3://{BUCKET}/cache", "--out", tmp_path / "out2",
                 env={"SELECTKIT_CACHE_MIRROR": str(tmp_path / "machine-b")})
    assert second.returncode == 0, second.stderr
    assert _keys(s3, "cache/") == published  # nothing computed again, nothing written again
    assert (tmp_path / "out2" / "selection.parquet").read_bytes() == expected
    assert any((tmp_path / "machine-b").rglob("meta.json"))


def test_an_entry_without_its_marker_is_never_read_and_racing_writers_are_safe(s3, tmp_path):
    from selectkit.storage.cache import Cache

    url = f"s3://{BUCKET}/race"
    writers = [Cache(url) for _ in range(2)]
    for i, cache in enumerate(writers):  # each writer its own local folder (SELECTKIT_CACHE_MIRROR unset)
        cache.root = cache.mirror.local_root = tmp_path / f"w{i}"
    # files uploaded but no marker (a writer killed mid-upload): not an entry
    s3.put_object(Bucket=BUCKET, Key="race/scores/k1/abc/arrays.npz", Body=b"half")
    reader = Cache(url)
    reader.root = reader.mirror.local_root = tmp_path / "reader"
    assert not reader.has("scores", "k1")
    # two writers commit the same key: the marker names one complete set, whichever came last
    import numpy as np

    for cache in writers:
        cache.write_arrays("scores", "k1", {"v": np.arange(5.0)})
    got = reader.read_arrays("scores", "k1")
    assert got is not None and got[0]["v"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_a_cache_bucket_that_does_not_exist_is_one_line(s3, tmp_path):
    recipe = _recipe(tmp_path, pool=str(RECIPES / "data" / "pool.jsonl"),
                     target=str(RECIPES / "data" / "target_politics.jsonl"), out=str(tmp_path / "out"))
    result = cli("run", recipe, "-q", "--cache-dir", "s3://no-such-bucket/cache")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "bucket 'no-such-bucket' does not exist" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _current(client, prefix: str) -> dict:
    return json.loads(client.get_object(Bucket=BUCKET, Key=f"{prefix}/current.json")["Body"].read())


def test_quickstart_entirely_on_s3_matches_the_local_run(s3, tmp_path):
    """Pool, target, cache and output all in the bucket: the committed set's selection.parquet is
    byte-identical to the local run's; a second run commits a new set and leaves the first whole."""
    expected = _local_selection(tmp_path)
    recipe = _recipe(tmp_path, pool=f"s3://{BUCKET}/quickstart/pool.jsonl",
                     target=f"s3://{BUCKET}/quickstart/target_politics.jsonl", out=f"s3://{BUCKET}/out/quickstart")
    run = cli("run", recipe, "-q", "--cache-dir", f"s3://{BUCKET}/cache")
    assert run.returncode == 0, run.stderr
    first = _current(s3, "out/quickstart")
    assert first["written_by"] == "selectkit" and first["set"] in run.stdout
    body = s3.get_object(Bucket=BUCKET, Key=f"out/quickstart/{first['set']}/selection.parquet")["Body"].read()
    assert body == expected
    assert {"selection.parquet", "manifest.json", "subset.parquet", "subset.jsonl"} <= set(first["files"])

    again = cli("run", recipe, "-q", "--cache-dir", f"s3://{BUCKET}/cache")
    assert again.returncode == 0, again.stderr
    second = _current(s3, "out/quickstart")
    assert second["set"] != first["set"]
    kept = _keys(s3, f"out/quickstart/{first['set']}/")
    assert {k.rsplit("/", 1)[1] for k in kept} >= set(first["files"])  # the earlier set is untouched


def test_an_output_url_that_points_at_an_input_is_refused(s3, tmp_path):
    recipe = _recipe(tmp_path, pool=f"s3://{BUCKET}/quickstart/pool.jsonl",
                     target=f"s3://{BUCKET}/quickstart/target_politics.jsonl", out=f"s3://{BUCKET}/quickstart")
    result = cli("run", recipe, "-q")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "contains the pool source" in result.stderr, result.stderr
    assert _keys(s3, "quickstart/") == {"quickstart/pool.jsonl", "quickstart/target_politics.jsonl"}


def test_an_output_bucket_that_does_not_exist_is_one_line(s3, tmp_path):
    recipe = _recipe(tmp_path, pool=f"s3://{BUCKET}/quickstart/pool.jsonl",
                     target=f"s3://{BUCKET}/quickstart/target_politics.jsonl", out="s3://no-such-bucket/out")
    result = cli("run", recipe, "-q", "--cache-dir", tmp_path / "cache")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "no-such-bucket" in result.stderr and "does not exist" in result.stderr


@contextmanager
def _two_nodes(tmp_path: Path, monkeypatch):
    """A real two-node Ray cluster on 127.0.0.1 (ray.cluster_utils.Cluster), each node with its own
    temp folder and its own local cache folder; yields (address, [node cache folders])."""
    pytest.importorskip("ray")
    import os
    import tempfile

    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # nodes and driver on 127.0.0.1, no other address
    ray_tmp = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # short: Ray's socket paths have a length limit
    os.makedirs(os.path.join(ray_tmp, "ray"))
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    cluster = Cluster(initialize_head=False)
    mirrors = []
    try:
        for i in range(2):
            mirror = tmp_path / f"node-{i}" / "cache"
            args = {"num_cpus": 1, "object_store_memory": 128 * 1024**2,
                    "temp_dir": tempfile.mkdtemp(prefix=f"n{i}-", dir=ray_tmp), "node_ip_address": "127.0.0.1",
                    "env_vars": {"SELECTKIT_CACHE_MIRROR": str(mirror), "SELECTKIT_CACHE_DIR": str(mirror)}}
            if i == 0:
                args["include_dashboard"] = False
            cluster.add_node(**args)
            mirrors.append(mirror)
        cluster.wait_for_nodes()
        yield cluster.address, mirrors
    finally:
        cluster.shutdown()  # this process never connected (no ray.init): a session's own Ray is left alone


@pytest.mark.ray
def test_ray_on_two_nodes_that_share_no_disk_selects_what_a_local_run_selects(s3, tmp_path, monkeypatch):
    """Pool, target and cache live only in the bucket; each node and the driver have their own cache
    folder, so every shard a worker computes reaches the driver through the bucket. The selection is
    byte-identical to a local run on local files."""
    expected = _local_selection(tmp_path)
    with _two_nodes(tmp_path, monkeypatch) as (address, mirrors):
        recipe = _recipe(tmp_path, pool=f"s3://{BUCKET}/quickstart/pool.jsonl",
                         target=f"s3://{BUCKET}/quickstart/target_politics.jsonl", out=str(tmp_path / "out"))
        result = cli("run", recipe, "-q", "--cache-dir", f"s3://{BUCKET}/cache", "--shard-rows", "300",
                     "--executor", "ray", "--address", address,
                     env={"SELECTKIT_CACHE_MIRROR": str(tmp_path / "driver" / "cache")})
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "out" / "selection.parquet").read_bytes() == expected
        assert any(any(m.rglob("shard-*/meta.json")) for m in mirrors), "no node wrote a shard into its own folder"
        published = _keys(s3, "cache/")
        assert sum(k.endswith("/_COMMITTED.json") and "/shard-" in k for k in published) >= 5


@pytest.mark.ray
def test_a_worker_killed_mid_pass_on_a_node_with_no_shared_disk_is_retried(s3, tmp_path, monkeypatch):
    """A model pass on the two-node cluster with the cache in the bucket: one shard worker is SIGKILLed
    once shards are published; Ray retries it and the selection equals the local run's."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.test_ray import _pass_recipe, _shard_workers

    recipe = _pass_recipe(tmp_path)
    local = cli("run", "-q", recipe, "--out", tmp_path / "local", "--shard-rows", "25", "--cache-dir",
                tmp_path / "local-cache")
    assert local.returncode == 0, local.stderr
    with _two_nodes(tmp_path, monkeypatch) as (address, _):
        command = [sys.executable, "-m", "selectkit", "run", "-q", str(recipe), "--out", str(tmp_path / "ray"),
                   "--shard-rows", "25", "--executor", "ray", "--address", address, "--cache-dir",
                   f"s3://{BUCKET}/cache"]
        env = {**os.environ, "SELECTKIT_CACHE_MIRROR": str(tmp_path / "driver" / "cache")}
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        killed, deadline = None, time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            passes = [k for k in _keys(s3, "cache/passes/") if k.endswith("/_COMMITTED.json") and "/shard-" in k]
            workers = _shard_workers()
            if killed is None and workers and len(passes) >= 2:
                killed = workers[0]
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.3)
        _, err = proc.communicate(timeout=300)
    assert killed is not None, "no shard worker was seen running"
    assert proc.returncode == 0, err
    assert (tmp_path / "ray" / "selection.parquet").read_bytes() == \
        (tmp_path / "local" / "selection.parquet").read_bytes()


def test_an_endpoint_that_does_not_answer_and_missing_credentials_are_one_line(s3, tmp_path):
    recipe = _recipe(tmp_path, pool=f"s3://{BUCKET}/quickstart/pool.jsonl",
                     target=f"s3://{BUCKET}/quickstart/target_politics.jsonl", out=str(tmp_path / "out"))
    closed = f"http://127.0.0.1:{_free_port()}"
    result = cli("run", recipe, "-q", env={"AWS_ENDPOINT_URL": closed})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()  # one line per source that cannot be read (pool, target)
    assert len(lines) == 2 and all("the endpoint does not answer" in line for line in lines), result.stderr
    assert "s3://pools/quickstart/pool.jsonl" in lines[0]
    # no credentials anywhere (and no instance-metadata lookup: nothing leaves 127.0.0.1)
    bare = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
    result = cli("validate", recipe, env=bare)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "no credentials found" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_run_killed_mid_pass_resumes_from_the_bucket_on_another_machine(s3, tmp_path):
    """SIGKILL a run whose cache is in the bucket once some shards are published; a second run with
    a fresh local folder (another machine) computes only what is missing and selects the same bytes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ("--limit", "400", "--shard-rows", "5")
    local = cli("run", RECIPES / "quickstart.yaml", "-q", "--out", tmp_path / "local", "--cache-dir",
                tmp_path / "local-cache", *args)
    assert local.returncode == 0, local.stderr
    recipe = _recipe(tmp_path, pool=f"s3://{BUCKET}/quickstart/pool.jsonl",
                     target=f"s3://{BUCKET}/quickstart/target_politics.jsonl", out=str(tmp_path / "out"))
    command = [sys.executable, "-m", "selectkit", "run", "-q", str(recipe), "--cache-dir", f"s3://{BUCKET}/cache",
               *args]
    proc = subprocess.Popen(command, env={**os.environ, "SELECTKIT_CACHE_MIRROR": str(tmp_path / "machine-a")},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def shards() -> set[str]:
        return {k for k in _keys(s3, "cache/") if "/shard-" in k and k.endswith("/_COMMITTED.json")}

    deadline = time.monotonic() + 120
    while proc.poll() is None and len(shards()) < 10 and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = shards()
    assert 10 <= len(before) and not (tmp_path / "out").exists()
    prefixes = {k.rsplit("/", 2)[0] + "/" + k.rsplit("/", 2)[1] for k in _keys(s3, "cache/") if "/shard-" in k}
    result = cli("run", recipe, "-q", "--cache-dir", f"s3://{BUCKET}/cache", *args,
                 env={"SELECTKIT_CACHE_MIRROR": str(tmp_path / "machine-b")})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "selection.parquet").read_bytes() == \
        (tmp_path / "local" / "selection.parquet").read_bytes()
    after = {k.rsplit("/", 2)[0] + "/" + k.rsplit("/", 2)[1] for k in _keys(s3, "cache/") if "/shard-" in k}
    committed_before = {k.rsplit("/", 1)[0] for k in before}
    # a shard committed before the kill was pulled, not written again: still exactly one writer prefix
    for shard in committed_before:
        assert len([p for p in after if p.startswith(shard + "/")]) == 1, shard
    assert prefixes <= after


def test_urls_secrets_and_object_identity():
    from selectkit.storage.digest import object_fingerprint
    from selectkit.storage.objects import ObjectPath, embedded_secret, is_url, redact, same_object

    assert is_url("s3://b/k") and is_url("hf://datasets/org/x/a.jsonl") and not is_url("data/pool.jsonl")
    assert not is_url("file:///tmp/x") and not is_url("C:/data")
    assert embedded_secret("https://user:pw@host/x.jsonl") == "a user name and password"
    assert embedded_secret("https://host/x.jsonl?sig=abc") == "a token in its query"
    assert embedded_secret("s3://bucket/pool/*.parquet") is None
    assert redact("https://user:pw@host/x.jsonl?token=abc") == "https://host/x.jsonl"
    path = ObjectPath("s3://bucket/pool/part-00.parquet")
    assert (path.name, path.suffix, str(path.parent), str(path.parent / "b.jsonl")) == \
        ("part-00.parquet", ".parquet", "s3://bucket/pool", "s3://bucket/pool/b.jsonl")
    a = {"etag": "e1", "version": None, "size": 10, "mtime": "t1"}
    assert same_object(a, {**a, "mtime": "t2"})  # a touched object with the same ETag is the same version
    assert not same_object(a, {**a, "etag": "e2"}) and not same_object(a, {**a, "size": 11})
    assert same_object({"etag": None, "size": 1, "mtime": "t"}, {"etag": None, "size": 1, "mtime": "t"})
    assert object_fingerprint("a", a) == object_fingerprint("a", {**a, "mtime": "t2"})
    assert object_fingerprint("a", a) != object_fingerprint("a", {**a, "etag": "e2"})
    import pickle

    pinned = ObjectPath(path.url, a)
    assert pickle.loads(pickle.dumps(pinned)).meta == a
