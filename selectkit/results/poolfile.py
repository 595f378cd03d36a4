"""A finished run's pool file, read only at the rows a page or a command shows: found from the manifest
(recorded path, else the recipe's path next to the recipe file), checked against the recorded fingerprint
(the run's cache remembers file digests, so a fresh run's check reads nothing) and its row count, then read
row range by row range through the pool's own reader."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selectkit.errors import SelectkitError

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

    from selectkit.data.pool import Table


class PoolFile:
    """The pool of one run; every problem is a note on the run, never an error."""

    def __init__(self, run: Any):  # the results.rundir.Run it belongs to (its manifest, notes, folder)
        self.run = run

    @cached_property
    def table(self) -> Table | None:
        """The pool file as rows by position (nothing read yet), when it is still there and unchanged; else None
        with a note. Its fingerprint is checked against the manifest's (the run's cache remembers file digests)."""
        from selectkit.data.pool import SourceSpec, Table
        from selectkit.data.sources import pick_reader, source_files, source_fingerprint

        run = self.run
        record = (run.manifest.get("data") or {}).get("pool") or {}
        spec = (run.resolved.get("data") or {}).get("pool") or {}
        places: list[list[Path]] = []  # each: the pool's files (a glob pattern stands for its matches)
        if record.get("path"):  # several files are recorded joined by ", "
            places += [[Path(record["path"])], [Path(p) for p in record["path"].split(", ")]]
        if spec.get("path") and run.recipe.get("file"):
            places.append([Path(run.recipe["file"]).parent / spec["path"]])
        if not places:
            run.notes.append("the manifest names no pool file: texts and pool fields not shown")
            return None
        # relative paths in today's manifests are relative to where `run` was started: try here, then the run
        # folder and its ancestors (a run folder usually sits inside the project); the fingerprint check below
        # rejects a same-named file that is not the run's pool
        roots = [Path.cwd(), run.path, *list(run.path.resolve().parents)[:4]]
        files = None
        for paths, root in ((paths, root) for paths in places for root in roots):
            found = [f for p in paths for f in source_files(p if p.is_absolute() else root / p)]
            if found and all(f.is_file() or f.is_dir() for f in found):
                files = found
                break
        if not files:
            run.notes.append(f"pool file {places[0][0]} not found (from {Path.cwd()}): texts and pool fields "
                              "not shown")
            return None
        try:
            from selectkit.contract.registry import default_registry

            readers = {n: e.cls for n, e in default_registry().components["readers"].items()}
            reader = pick_reader(files[0], readers, spec.get("format"), "pool")
            cache = run.manifest.get("cache")
            memo = Path(cache) / "fingerprints" if cache and (Path(cache) / "fingerprints").is_dir() else None
            fingerprint = source_fingerprint(files, text=spec.get("text") or "text", id_column=spec.get("id"),
                                             limit=spec.get("limit"), reader=reader.name,
                                             on_missing=spec.get("on_missing") or "error", memo=memo)
            expected = record.get("fingerprint")
            if expected and fingerprint != expected:
                run.notes.append(f"pool file {files[0]} changed since the run (fingerprint differs): "
                                  "texts and pool fields not shown")
                return None
            table = Table(SourceSpec("pool", tuple(files), type(reader), spec.get("text") or "text", spec.get("id"),
                                     spec.get("limit"), spec.get("on_missing") or "error", fingerprint))
        except (SelectkitError, OSError) as exc:
            run.notes.append(f"pool not read: {exc}")
            return None
        if table.rows != run.size:
            run.notes.append(f"pool file {files[0]} has {table.rows:,} rows, the selection {run.size:,}: "
                              "texts and pool fields not shown")
            return None
        return table

    def rows(self, indices: list[int], fields: Sequence[str], ids: list[str]) -> pl.DataFrame | None:
        """`__text` and `fields` of the pool rows at these positions (in that order), read row range by row
        range; None (with a note) when the pool cannot be read or its ids there are not `ids` (the table's)."""
        import polars as pl

        from selectkit.data.pool import read_shard

        run, table = self.run, self.table
        if table is None:
            return None
        found: dict[int, dict] = {}
        try:
            for lo, hi in _ranges(sorted(set(indices))):
                ds = read_shard(table, lo, hi)
                pool_ids = ds.ids.cast(pl.String).to_list()
                for k in range(hi - lo):
                    row = {f: _text(ds.rows[f][k]) if f in ds.rows.columns else None for f in fields}
                    found[lo + k] = {"__id": pool_ids[k], "__text": ds.texts[k], **row}
        except (SelectkitError, OSError) as exc:
            run.notes.append(f"pool not read: {exc}")
            return None
        if any(found[r]["__id"] != i for r, i in zip(indices, ids)):
            run.notes.append("the pool file's rows are not the selection's (ids differ): texts and pool fields "
                              "not shown")
            return None
        return pl.DataFrame([found[i] for i in indices], schema={"__id": pl.String, "__text": pl.String,
                                                                 **{f: pl.String for f in fields}}, strict=False)


def _text(value) -> str | None:
    return None if value is None else str(value)


def _ranges(rows: list[int], gap: int = 8) -> Iterator[tuple[int, int]]:
    """Sorted rows as [lo, hi) ranges, rows closer than `gap` read together."""
    start = prev = None
    for r in rows:
        if start is None:
            start = prev = r
        elif r - prev > gap:
            yield start, prev + 1
            start = prev = r
        else:
            prev = r
    if start is not None:
        yield start, prev + 1
