"""Faults of the machine (disk full, read-only file system, a file where a folder should be, file
size limits) are one `error:` line naming the problem and the path, exit 1, no traceback;
`selectkit --debug` shows the traceback instead."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli

from selectkit.errors import describe_fault

RUN = ("--limit", "200", "--quiet")  # quickstart is model-free; 200 rows keep a run to a second or two


@contextlib.contextmanager
def tmpfs(folder: Path, options: str):
    """A tmpfs mounted at `folder` for the test (root in a container may mount; skip otherwise)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and mount rights): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def fill(folder: Path) -> None:
    """Write into `folder` until its file system has no space left."""
    with open(folder / "filler", "wb") as handle:
        with contextlib.suppress(OSError):
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
    with contextlib.suppress(OSError):  # also the last blocks that a small write still fits in
        with open(folder / "filler2", "wb") as handle:
            while True:
                handle.write(b"\0" * 512)
                handle.flush()


def assert_clean_failure(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_output_on_a_full_disk(demo, tmp_path):
    with tmpfs(tmp_path / "full", "size=2m") as full:
        fill(full)
        result = cli("run", demo / "quickstart.yaml", *RUN, "--out", full / "out")
        assert_clean_failure(result, f"error: could not write the outputs to {full / 'out'}: "
                             f"no space left on device [errno 28] (writing under {full})", "free some space")
        # the folders a failed write might have been in are named fullest first, whatever the order of writes
        error = OSError(28, "No space left on device")
        assert describe_fault(error, [str(tmp_path), str(full)]).startswith(
            f"no space left on device [errno 28] (writing under {full}, {tmp_path})")


def test_output_on_a_read_only_file_system(demo, tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as read_only:
        result = cli("run", demo / "quickstart.yaml", *RUN, "--out", read_only / "out")
        assert_clean_failure(result, f"error: read-only file system [errno 30]: {read_only}")


def test_output_under_a_regular_file(demo, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    result = cli("run", demo / "quickstart.yaml", *RUN, "--out", tmp_path / "a-file" / "out")
    assert_clean_failure(result, f"{tmp_path / 'a-file'}")
    assert f"{tmp_path / 'a-file'} is a file, not a folder" in result.stderr, result.stderr  # refused before any work
    assert (tmp_path / "a-file").read_text() == "not a folder"


def test_schema_out_under_a_regular_file(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    result = cli("schema", "--out", tmp_path / "a-file" / "recipe.schema.json")
    assert_clean_failure(result, f"error: file exists [errno 17]: {tmp_path / 'a-file'}")


def _file_size_limit(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_output_past_a_file_size_limit(demo, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "selectkit", "run", str(demo / "quickstart.yaml"), *RUN,
                             "--out", str(out)], capture_output=True, text=True, timeout=600,
                            preexec_fn=_file_size_limit(2048),
                            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})  # no .pyc cut short
    assert_clean_failure(result, "error: file too large [errno 27]", "(writing under ")


def test_debug_shows_the_traceback(demo, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    result = cli("--debug", "run", demo / "quickstart.yaml", *RUN, "--out", tmp_path / "a-file" / "out")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "OutputError: " in result.stderr
    assert "is a file, not a folder" in result.stderr
    broken = Path(__file__).parent / "broken_recipes" / "03_unknown_scorer.yaml"
    result = cli("--debug", "validate", broken)
    assert result.returncode != 0 and "Traceback" in result.stderr and "RecipeErrors" in result.stderr
    plain = cli("validate", broken)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr and "unknown scorer" in plain.stderr


def test_a_closed_pipe_is_quiet():
    proc = subprocess.Popen([sys.executable, "-m", "selectkit", "plugins", "--format", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # ~90 KB: more than a pipe holds
    proc.stdout.read(10)
    proc.stdout.close()  # like `selectkit plugins | head -1`
    stderr = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def test_fault_lines_for_errors_without_a_path():
    import polars as pl

    class OutOfMemoryError(RuntimeError):  # torch.OutOfMemoryError, matched by name (no torch import)
        pass

    assert describe_fault(MemoryError()).startswith("out of memory (use a smaller batch")
    assert describe_fault(OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")).startswith(
        "out of memory: CUDA out of memory. Tried to allocate 2 GiB")
    full = pl.exceptions.ComputeError("parquet: underlying IO error: No space left on device (os error 28)")
    assert describe_fault(full, ["/data/out"]) == (
        "no space left on device [errno 28] (writing under /data/out) "
        "(free some space, or write elsewhere: --out, --cache-dir or SELECTKIT_CACHE_DIR)")
    assert describe_fault(OSError("the hub is unreachable")) == "the hub is unreachable"
    assert describe_fault(pl.exceptions.ComputeError("a bug, not a fault")) is None
    assert describe_fault(ValueError("a bug")) is None
