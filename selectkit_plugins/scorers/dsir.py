"""DSIR: hashed n-gram importance weights of pool examples against target data.

Xie, Santurkar, Ma, Liang: "Data Selection for Language Models via Importance Resampling"
(NeurIPS 2023); reference code: PyPI `data-selection` 1.0.3 (`HashedNgramDSIR`).

log w(x) = sum over x's n-grams of log p_target(bucket) - log p_pool(bucket), with both bag-of-ngram
models fitted here (the pool is DSIR's "raw" data, fitted on all its tokens).

`preset: reference` reproduces the package's `log_importance_weights` exactly (fit with
`num_tokens_to_fit='all'`, or 'auto' on pools under 1e9 n-grams): nltk wordpunct tokens of the
lowercased text, unigrams + bigrams sha256-hashed into 10,000 buckets, no smoothing,
log(p + 1e-8) differences, the plain sum, and NaN for documents under 100 tokens (the package
masks them at resample time).

Where the defaults deviate, and why: with small targets (tens to a few hundred documents) the
unsmoothed target model gives every n-gram it never saw log(1e-8) - log p_pool, about -9, so the
weight mostly counts unseen n-grams and short documents win. The defaults (1) add `smoothing`
Dirichlet pseudo-counts per bucket, spread like the pool distribution, to the target counts;
(2) score the mean log ratio per n-gram rescaled to the pool's median n-gram count, so
a median-length document keeps the reference's scale (for Gumbel resampling) and length stops
deciding the ranking; (3) use 65,536 buckets (fewer collisions, still uint16); (4) hash each
distinct token once with blake2b and combine n-grams arithmetically (splitmix64), which is stable
across processes and far faster than hashing every n-gram string. tests/test_dsir.py measures it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from selectkit.plugin import DataError, Params, Score, ScoreContext, Scorer, Shape, hookimpl, lazy_import, mix64

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap

pl = lazy_import("polars")  # polars loads when data is read, not when a recipe is validated

WORDPUNCT = r"\w+|[^\w\s]+"  # nltk's WordPunctTokenizer pattern
_WORDPUNCT_RE = re.compile(WORDPUNCT, re.UNICODE | re.MULTILINE | re.DOTALL)
_CHUNK_DOCS = 8192  # documents tokenized at once: bounds the memory of the token lists
_REFERENCE_EPS = 1e-8  # the reference adds this inside both logs

_GOLDEN = 0x9E3779B97F4A7C15  # combines token hashes into n-gram hashes (then splitmix64: `mix64`)

REFERENCE = {
    "ngrams": 2,
    "num_buckets": 10000,
    "tokenizer": "nltk",
    "hash": "sha256",
    "smoothing": 0.0,
    "length_norm": "none",
    "min_example_length": 100,
}
"""Settings of `preset: reference`: bit-for-bit the log weights of `data-selection` 1.0.3."""


class DSIRParams(Params):
    """DSIR settings. `preset: reference` fills every setting not given with the reference
    package's value (REFERENCE); the plain defaults are the robust ones."""

    preset: Literal["robust", "reference"] = Field(
        "robust", description="robust: smoothed, length-normalized defaults; reference: data-selection 1.0.3 exactly")
    ngrams: int = Field(2, ge=1, le=8, description="n-grams of order 1..ngrams, hashed into one count vector")
    num_buckets: int = Field(65536, ge=2, le=2**32, description="hash buckets of the bag-of-ngrams model")
    tokenizer: Literal["fast", "nltk"] = Field(
        "fast", description="fast: polars regex \\w+|[^\\w\\s]+ on lowercased text; nltk: Python re with the same "
        "pattern (identical on ASCII text; Unicode classes differ slightly)")
    hash: Literal["blake2b", "sha256"] = Field(
        "blake2b", description="blake2b: each distinct token hashed once, n-grams combined arithmetically; "
        "sha256: each distinct n-gram string hashed like the reference package")
    smoothing: float = Field(
        1.0, ge=0, description="Dirichlet pseudo-counts per bucket added to the target counts, spread in "
        "proportion to the pool distribution (0: none, the reference)")
    length_norm: Literal["mean", "none"] = Field(
        "mean", description="mean: mean log ratio per n-gram times the pool's median n-gram count; "
        "none: plain sum (long documents get the most extreme weights)")
    length_prior: float = Field(
        0.25, ge=0, description="with length_norm=mean: pseudo n-grams at log ratio 0, as a multiple of the pool's "
        "median n-gram count, that damp the noisy means of very short documents (0: plain mean)")
    min_example_length: int = Field(
        0, ge=0, description="documents with fewer tokens get NaN (never sampled); the reference uses 100")
    per_target: bool = Field(False, description="one column per target (a matrix) instead of one pooled target")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") == "reference":
            return {**REFERENCE, **data}
        return data


@dataclass
class NgramChunk:
    """The n-grams of consecutive documents: buckets[k-1] holds the bucket of every k-gram
    occurrence, documents in order (doc-major); tokens holds each document's token count."""

    buckets: list[np.ndarray]
    tokens: np.ndarray

    def doc_index(self, order: int) -> np.ndarray:
        """The (chunk-local) document of each order-`order` n-gram occurrence."""
        per_doc = np.maximum(self.tokens - order + 1, 0)
        return np.repeat(np.arange(len(self.tokens), dtype=np.int64), per_doc)


@dataclass
class NgramFeatures:
    """Hashed n-grams of a whole dataset, kept per chunk of documents (compact: uint16 buckets)."""

    chunks: list[NgramChunk]

    @property
    def tokens(self) -> np.ndarray:
        """Tokens per document."""
        return np.concatenate([c.tokens for c in self.chunks]) if self.chunks else np.zeros(0, np.int64)

    def ngram_counts(self, ngrams: int) -> np.ndarray:
        """n-gram occurrences per document, orders 1..ngrams together."""
        tokens = self.tokens
        return sum(np.maximum(tokens - k + 1, 0) for k in range(1, ngrams + 1))

    def bucket_counts(self, num_buckets: int, docs: np.ndarray | None = None) -> np.ndarray:
        """Summed bucket counts over all documents, or over the documents flagged in boolean `docs`."""
        total = np.zeros(num_buckets, dtype=np.int64)
        offset = 0
        for chunk in self.chunks:
            for order, buckets in enumerate(chunk.buckets, start=1):
                if docs is not None:
                    buckets = buckets[docs[offset:offset + len(chunk.tokens)][chunk.doc_index(order)]]
                total += np.bincount(buckets, minlength=num_buckets)
            offset += len(chunk.tokens)
        return total

    def weighted_sums(self, weights: np.ndarray) -> np.ndarray:
        """Per-document sum of `weights[bucket]` over its n-grams, without per-document count vectors."""
        out = []
        for chunk in self.chunks:
            n = len(chunk.tokens)
            total = np.zeros(n, dtype=np.float64)
            for order, buckets in enumerate(chunk.buckets, start=1):
                total += np.bincount(chunk.doc_index(order), weights=weights[buckets], minlength=n)
            out.append(total)
        return np.concatenate(out) if out else np.zeros(0)


def featurize(texts: Sequence[str], params: DSIRParams) -> NgramFeatures:
    """Tokenize and hash every document into n-gram buckets, a chunk of documents at a time."""
    dtype = np.uint16 if params.num_buckets <= 1 << 16 else np.uint32
    chunks = []
    for start in range(0, len(texts), _CHUNK_DOCS):
        lists = _tokenize(texts[start:start + _CHUNK_DOCS], params.tokenizer)
        tokens = lists.list.len().fill_null(0).to_numpy().astype(np.int64)
        chunks.append(NgramChunk([b.astype(dtype) for b in _hash_ngrams(lists, tokens, params)], tokens))
    return NgramFeatures(chunks)


def _tokenize(texts: Sequence[str], tokenizer: str) -> pl.Series:
    """Lowercase and split into word/punctuation runs; a List[str] series, one list per document."""
    if tokenizer == "nltk":
        return pl.Series([_WORDPUNCT_RE.findall(t.lower()) for t in texts], dtype=pl.List(pl.String))
    return pl.Series(list(texts), dtype=pl.String).fill_null("").str.to_lowercase().str.extract_all(WORDPUNCT)


def _vocabulary(lists: pl.Series) -> tuple[np.ndarray, list[str]]:
    """Each token occurrence's id (int64) and the distinct tokens those ids index."""
    flat = lists.explode().drop_nulls()  # an empty document explodes to one null
    vocab = flat.unique()
    return flat.cast(pl.Enum(vocab)).to_physical().to_numpy().astype(np.int64), vocab.to_list()


def _starts(tokens: np.ndarray, total: int, order: int) -> np.ndarray:
    """Flat positions where an order-`order` n-gram starts without crossing its document's end."""
    valid = np.ones(total - order + 1, dtype=bool)
    ends = np.cumsum(tokens)
    for back in range(1, order):  # the last order-1 tokens of a document start no full n-gram
        cut = ends - back
        valid[cut[(tokens >= back) & (cut < len(valid))]] = False
    return np.flatnonzero(valid)


def _hash_ngrams(lists: pl.Series, tokens: np.ndarray, params: DSIRParams) -> list[np.ndarray]:
    """Bucket of every n-gram occurrence per order 1..ngrams, doc-major. Each distinct token (or,
    for sha256, each distinct n-gram) is hashed once in Python; the rest is numpy."""
    total = int(tokens.sum())
    if total == 0:
        return [np.zeros(0, np.int64) for _ in range(params.ngrams)]
    ids, words = _vocabulary(lists)
    buckets = params.num_buckets
    out = []
    if params.hash == "sha256":  # the reference's buckets: sha256 of the n-gram's tokens joined by spaces
        code, strings, size = ids, words, len(words)
        for k in range(1, params.ngrams + 1):
            if k > 1:  # code[i]: id of the k-gram starting at token i
                uniq, code = np.unique(code[:-1] * size + ids[k - 1:], return_inverse=True)
                strings = [f"{strings[u // size]} {words[u % size]}" for u in uniq.tolist()]
            table = np.fromiter((_sha256_bucket(g, buckets) for g in strings), dtype=np.int64, count=len(strings))
            out.append(table[code[_starts(tokens, total, k)]])
        return out
    token_hash = np.fromiter((_blake2b64(w) for w in words), dtype=np.uint64, count=len(words))[ids]
    rolling = token_hash
    for k in range(1, params.ngrams + 1):
        if k > 1:  # rolling[i]: hash of tokens i..i+k-1 (across documents too; those are dropped)
            rolling = mix64(rolling[:-1] * np.uint64(_GOLDEN) + token_hash[k - 1:])
        out.append((rolling[_starts(tokens, total, k)] % np.uint64(buckets)).astype(np.int64))
    return out


def _blake2b64(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


def _sha256_bucket(text: str, num_buckets: int) -> int:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16) % num_buckets


def log_ratio(target_counts: np.ndarray, raw_counts: np.ndarray, smoothing: float) -> np.ndarray:
    """log p_target − log p_raw per bucket. With smoothing 0 this is the reference's
    log(p+1e-8) difference; otherwise the target gets `smoothing` pseudo-counts per bucket
    spread like the raw distribution, and buckets the pool never uses get 0."""
    raw = raw_counts / max(raw_counts.sum(), 1)
    if smoothing == 0:
        target = target_counts / max(target_counts.sum(), 1)
        return np.log(target + _REFERENCE_EPS) - np.log(raw + _REFERENCE_EPS)
    prior = smoothing * len(raw_counts)
    target = (target_counts + prior * raw) / (target_counts.sum() + prior)
    out = np.zeros(len(raw_counts), dtype=np.float64)
    seen = raw > 0
    out[seen] = np.log(target[seen]) - np.log(raw[seen])
    return out


def _median_positive(histogram: np.ndarray) -> float:
    """The median of the positive values counted by `histogram` (np.median's convention: the mean
    of the two middle values for an even count); 1 when there are none."""
    counts = np.asarray(histogram, dtype=np.int64).copy()
    counts[0] = 0
    total = int(counts.sum())
    if total == 0:
        return 1.0
    cumulative = np.cumsum(counts)
    lower = int(np.searchsorted(cumulative, (total + 1) // 2))
    upper = int(np.searchsorted(cumulative, total // 2 + 1))
    return (lower + upper) / 2.0


class DSIR(Scorer):
    """Log importance weight log p_target(x)/p_pool(x) under hashed bag-of-ngrams models (DSIR);
    higher is more target-like. Runs shard by shard: pool n-gram counts are summed over shards
    first (exact in any order), then each shard is scored. O(total tokens) time; memory bounded
    by a shard and the bucket tables, not by the pool."""

    name = "dsir"
    Params = DSIRParams
    needs_targets = True
    output = Shape.VECTOR
    rowwise = True

    def output_shape(self) -> Shape:
        return Shape.MATRIX if self.params.per_target else Shape.VECTOR

    def statistics(self, ctx: ScoreContext) -> dict[str, np.ndarray]:
        """This shard's bucket counts (the pool's bag-of-ngrams model) and its histogram of n-gram counts
        per document (for the pool's median length): both sum exactly over shards."""
        pool = featurize(ctx.pool.texts, self.params)
        grams = pool.ngram_counts(self.params.ngrams)
        return {"raw": pool.bucket_counts(self.params.num_buckets),
                "lengths": np.bincount(grams.astype(np.int64), minlength=1)}

    def merge(self, parts: list[dict[str, np.ndarray]], ctx: ScoreContext) -> dict[str, np.ndarray]:
        """Pool statistics plus the targets' log ratios (targets are small: featurized here, once)."""
        p = self.params
        if not ctx.targets:
            raise DataError("dsir needs target data: name at least one target under the score's `targets`")
        raw = sum(part["raw"] for part in parts)
        width = max(len(part["lengths"]) for part in parts)
        lengths = sum(np.pad(part["lengths"], (0, width - len(part["lengths"]))) for part in parts)
        target_counts = {name: featurize(ds.texts, p).bucket_counts(p.num_buckets) for name, ds in ctx.targets.items()}
        ratios = ([log_ratio(c, raw, p.smoothing) for c in target_counts.values()] if p.per_target else
                  [log_ratio(sum(target_counts.values()), raw, p.smoothing)])
        return {"ratios": np.stack(ratios), "median": np.array([_median_positive(lengths)]),
                "names": list(target_counts)}

    def run(self, ctx: ScoreContext) -> Score:
        stats = ctx.stats if ctx.stats is not None else self.merge([self.statistics(ctx)], ctx)
        pool = featurize(ctx.pool.texts, self.params)
        columns = [self._score(pool, ratio, float(stats["median"][0])) for ratio in stats["ratios"]]
        if self.params.per_target:
            names = tuple(stats["names"])
            return Score(values=np.stack(columns, axis=1), shape=Shape.MATRIX, columns=names, tasks=names)
        return Score(values=columns[0])

    def _score(self, pool: NgramFeatures, log_diff: np.ndarray, reference: float) -> np.ndarray:
        values = pool.weighted_sums(log_diff)
        grams = pool.ngram_counts(self.params.ngrams)
        if self.params.length_norm == "mean":
            prior = self.params.length_prior * reference
            values = np.divide(values * (reference + prior), grams + prior, out=np.zeros_like(values),
                               where=grams + prior > 0)
        # the reference's per-example length: (n-gram count + n(n-1)/2) // n
        n = self.params.ngrams
        length = (grams + n * (n - 1) // 2) // n
        return np.where(length < self.params.min_example_length, np.nan, values)


@hookimpl
def register_scorers(register):
    register(DSIR)
