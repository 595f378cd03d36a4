"""Where a run's memory goes: `selectkit run` in a fresh process with a fresh cache, its resident
set (VmRSS) sampled every 0.2 s and printed beside its log lines (one per shard:
SELECTKIT_PROGRESS_EVERY=0), so each phase's peak can be read off.

    .venv/bin/python benchmarks/bench_scale.py --rows 1000000          # makes the pool and recipe
    .venv/bin/python benchmarks/rss_profile.py benchmarks/.work/scale/scale-1000000.yaml
    .venv/bin/python benchmarks/rss_profile.py RECIPE -- --limit 1000   # extra `run` arguments after --

Prints a line when RSS rises by more than 25 MB over the last printed peak or falls by 50 MB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe")
    parser.add_argument("run_args", nargs="*", help="more `selectkit run` arguments (after --)")
    args = parser.parse_args()
    cache = tempfile.mkdtemp(prefix="rss-profile-")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SELECTKIT_PROGRESS_EVERY": "0", "SELECTKIT_CACHE_DIR": cache}
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "selectkit", "run", args.recipe, *args.run_args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    samples: list[tuple[float, int]] = []

    def sample() -> None:
        while proc.poll() is None:
            try:
                with open(f"/proc/{proc.pid}/status") as handle:
                    for line in handle:
                        if line.startswith("VmRSS"):
                            samples.append((time.time() - t0, int(line.split()[1]) // 1024))
            except OSError:
                pass
            time.sleep(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    lines = [(time.time() - t0, line.rstrip()) for line in proc.stdout]
    proc.wait()
    sampler.join()
    shutil.rmtree(cache, ignore_errors=True)
    events = sorted([(t, 0, v) for t, v in lines] + [(t, 1, v) for t, v in samples])
    last = shown = 0
    for t, kind, value in events:
        if kind == 0:
            print(f"{t:8.2f}  [{last:5d} MB]  {value[:150]}")
            continue
        if value > shown + 25 or value < last - 50:
            print(f"{t:8.2f}  rss {value} MB")
            shown = max(shown, value)
        last = value
    peak = max((v for _, v in samples), default=0)
    print(f"peak {peak} MB; wall {time.time() - t0:.1f} s; exit {proc.returncode}")
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
