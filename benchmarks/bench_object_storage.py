"""Reading a Parquet pool from object storage against the same files on local disk.

Writes a pool of N rows (default 1M) as 10 Parquet shard files, uploads them to a real S3-compatible
server (moto's server mode on 127.0.0.1, a random port), then reads the pool shard by shard through
selectkit's own reader path (`source_files` -> `Table` -> `read_shard`, rendering every text), once
from `s3://bench/pool/part-*.parquet` and once from the local glob, each in a fresh child process
that reports its wall time and peak RSS. Remote reads should stay streaming: peak RSS about the same
as local, not growing with the pool.

    .venv/bin/python benchmarks/bench_object_storage.py             # 1M rows
    .venv/bin/python benchmarks/bench_object_storage.py --rows 200000
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from selectkit.data.pool import SourceSpec, Table, read_shard, shard_ranges
from selectkit.data.sources import source_files
from selectkit.storage.objects import as_path
from selectkit_plugins.readers import Parquet

started = time.perf_counter()
files = tuple(source_files(as_path(sys.argv[1])))
table = Table(SourceSpec("pool", files, Parquet, "text", "id"))
chars = rows = 0
for lo, hi in shard_ranges(table.rows, int(sys.argv[2])):
    shard = read_shard(table, lo, hi)
    rows += len(shard)
    chars += sum(map(len, shard.texts))
print(json.dumps({"seconds": time.perf_counter() - started, "rows": rows, "chars": chars, "files": len(files),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--shard-rows", type=int, default=65536)
    args = parser.parse_args()

    import logging

    import boto3
    import numpy as np
    import polars as pl
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    folder = Path(tempfile.mkdtemp(prefix="bench-objects-"))
    rng = np.random.default_rng(0)
    words = np.array([f"w{i}" for i in range(5000)])
    per = args.rows // args.files
    for k in range(args.files):
        picks = words[rng.integers(0, len(words), size=(per, 16))]
        texts = [" ".join(row) for row in picks]
        pl.DataFrame({"id": np.arange(k * per, (k + 1) * per), "text": texts}).write_parquet(
            folder / f"part-{k:02d}.parquet", row_group_size=20_000)
    size = sum(p.stat().st_size for p in folder.glob("*.parquet"))

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    client = boto3.client("s3")
    client.create_bucket(Bucket="bench")
    for path in sorted(folder.glob("*.parquet")):
        client.upload_file(str(path), "bench", f"pool/{path.name}")

    results = {}
    for label, source in (("local disk", str(folder / "part-*.parquet")), ("s3 (moto, 127.0.0.1)",
                                                                           "s3://bench/pool/part-*.parquet")):
        out = subprocess.run([sys.executable, "-c", CHILD, source, str(args.shard_rows)], env=env,
                             capture_output=True, text=True, check=True)
        results[label] = json.loads(out.stdout.strip().splitlines()[-1])
    server.stop()
    print(f"{args.rows} rows in {args.files} Parquet files ({size / 1e6:.1f} MB), shards of {args.shard_rows} rows")
    print("| source | files | rows | seconds | peak RSS (MB) |")
    print("|---|---|---|---|---|")
    for label, r in results.items():
        print(f"| {label} | {r['files']} | {r['rows']} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} |")
    assert len({r["chars"] for r in results.values()}) == 1, "the two reads disagree"


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"(total {time.perf_counter() - started:.0f} s)")
