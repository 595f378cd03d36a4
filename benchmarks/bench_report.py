"""What report.html costs a run: wall time of warm-cache runs with and without the report (medians,
interleaved), and the peak RSS of runs with the report on as the pool grows (dsir + topk over the
synthetic Parquet pools of bench_scale.py, summarize_by: domain).

    .venv/bin/python benchmarks/bench_report.py                       # quickstart, 200k and 2M rows
    .venv/bin/python benchmarks/bench_report.py --rows 200000 --repeats 5

Goals (issue 20): a warm-cache run with the report takes at most 1.5x the same run without it;
peak RSS of the 2M-row run with the report on stays within 3x that of the 200k-row run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import WORK, make_pool, make_target, run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def scale_recipe(rows: int, report: bool) -> Path:
    pool, target = make_pool(rows), make_target()
    tag = "report" if report else "plain"
    path = WORK / f"report-{rows}-{tag}.yaml"
    path.write_text(f"""selectkit: 1
name: report-{rows}
data:
  pool: {{path: {pool}, id: id}}
  targets:
    target: {{path: {target}}}
scores:
  dsir: {{use: dsir, targets: [target]}}
  words: {{use: length, with: {{unit: tokens}}}}
select:
  - use: threshold
    with: {{score: words, min: 5}}
  - use: topk
    with: {{score: dsir, budget: 1%}}
output: {{dir: {WORK / f"report-out-{rows}-{tag}"}, formats: [parquet], report: {str(report).lower()},
         summarize_by: domain}}
""")
    return path


def quickstart_recipe(folder: Path, report: bool) -> Path:
    text = (ROOT / "recipes" / "quickstart.yaml").read_text()
    text = text.replace("path: data/", f"path: {ROOT / 'recipes' / 'data'}/")
    out = folder / ("out-report" if report else "out-plain")
    lines = text.splitlines()
    lines = lines[:next(i for i, line in enumerate(lines) if line.startswith("output:"))]
    lines.append(f"output: {{dir: {out}, formats: [parquet, jsonl], summarize_by: domain, "
                 f"report: {str(report).lower()}}}")
    path = folder / f"quickstart-{'report' if report else 'plain'}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def warm_ratio(plain: Path, with_report: Path, cache: Path, repeats: int) -> dict:
    """Median wall time of warm-cache runs without and with the report, interleaved."""
    run(plain, cache)  # fills the cache (run() clears `cache` first: so it is filled once, here)
    times = {"plain": [], "report": []}
    for _ in range(repeats):
        for tag, path in (("plain", plain), ("report", with_report)):
            times[tag].append(run(path, cache, fresh=False)["seconds"])
    p, r = statistics.median(times["plain"]), statistics.median(times["report"])
    return {"plain_s": p, "report_s": r, "ratio": r / p, "runs": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="*", default=[200_000, 2_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        res = warm_ratio(quickstart_recipe(folder, False), quickstart_recipe(folder, True), folder / "cache",
                         args.repeats)
        results["quickstart"] = res
        print(f"quickstart (1,306 rows): warm run {res['plain_s']:.2f} s, with report {res['report_s']:.2f} s: "
              f"x{res['ratio']:.2f}", flush=True)
    for rows in sorted(args.rows):
        cold = run(scale_recipe(rows, True), WORK / f"report-cache-{rows}")
        res = {"cold_with_report_s": cold["seconds"], "peak_rss_mb": cold["peak_rss_mb"]}
        if rows <= 200_000:
            res.update(warm_ratio(scale_recipe(rows, False), scale_recipe(rows, True), WORK / f"report-cache-{rows}",
                                  args.repeats))
        results[rows] = res
        line = f"{rows:>11,} rows: cold run with report {cold['seconds']:.1f} s, peak RSS {cold['peak_rss_mb']:.0f} MB"
        if "ratio" in res:
            line += f"; warm {res['plain_s']:.2f} s, with report {res['report_s']:.2f} s: x{res['ratio']:.2f}"
        print(line, flush=True)
        shutil.rmtree(WORK / f"report-cache-{rows}", ignore_errors=True)
    sizes = [r for r in results if isinstance(r, int)]
    if len(sizes) >= 2:
        a, b = sizes[0], sizes[-1]
        ratio = results[b]["peak_rss_mb"] / results[a]["peak_rss_mb"]
        print(f"peak RSS with report: {b:,} rows / {a:,} rows = x{ratio:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
