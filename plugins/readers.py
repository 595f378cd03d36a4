"""Built-in data readers: jsonl, json, csv, parquet, and `datasets.save_to_disk` folders."""

from __future__ import annotations

from pathlib import Path

from selectkit.data import Reader
from selectkit.errors import require
from selectkit.hookspecs import hookimpl
from selectkit.lazy import lazy_import

pl = lazy_import("polars")  # polars loads when data is read, not when a recipe is validated


class JsonLines(Reader):
    name = "jsonl"
    suffixes = (".jsonl", ".ndjson", ".jsonl.gz")

    def read(self, path: Path) -> pl.DataFrame:
        return pl.read_ndjson(path, infer_schema_length=None)

    def count_rows(self, path: Path) -> int | None:
        if path.name.endswith(".gz"):
            return None
        with open(path, "rb") as handle:
            return sum(1 for line in handle if line.strip())


class Json(Reader):
    name = "json"
    suffixes = (".json",)

    def read(self, path: Path) -> pl.DataFrame:
        return pl.read_json(path, infer_schema_length=None)


class Csv(Reader):
    name = "csv"
    suffixes = (".csv", ".tsv")

    def read(self, path: Path) -> pl.DataFrame:
        return pl.read_csv(path, separator="\t" if path.suffix == ".tsv" else ",", infer_schema_length=10000)


class Parquet(Reader):
    name = "parquet"
    suffixes = (".parquet",)

    def read(self, path: Path) -> pl.DataFrame:
        return pl.read_parquet(path)

    def count_rows(self, path: Path) -> int | None:
        return pl.scan_parquet(path).select(pl.len()).collect().item()


class HuggingFaceDisk(Reader):
    """A folder written by `datasets.Dataset.save_to_disk` (needs the `models` extra)."""

    name = "hf_disk"
    reads_folders = True

    def read(self, path: Path) -> pl.DataFrame:
        datasets = require("datasets", "models", "the hf_disk reader")
        dataset = datasets.load_from_disk(str(path))
        if isinstance(dataset, datasets.DatasetDict):
            raise ValueError(f"a DatasetDict with splits {list(dataset)}: point `path` at one split's folder")
        return pl.from_arrow(dataset.data.table)


@hookimpl
def register_readers(register):
    for reader in (JsonLines, Json, Csv, Parquet, HuggingFaceDisk):
        register(reader)
