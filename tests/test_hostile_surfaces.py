"""The newer surfaces (eval, split outputs, verifiers, GGUF, Ray addresses) tried as a hostile user
and a failing machine would (issue 25), each guarantee broken on purpose through the real CLI on
real files: a failure is one clear line and a non-zero exit, never a traceback, and nothing the
recipe reads (or a user's own file) changes, which each test checks by hashing it."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli
from test_output_safety import pool_rows as rows
from test_output_safety import write_jsonl

# ---------------------------------------------------------------- helpers


def digest(path: Path) -> dict[str, str]:
    """sha256 of a file, or of every file under a folder, by relative name."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {str(f.relative_to(path) if path.is_dir() else f.name): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in files}


def line_of(recipe: Path, text: str) -> int:
    for number, line in enumerate(recipe.read_text().splitlines(), 1):
        if text in line:
            return number
    raise AssertionError(f"no line holding {text!r} in {recipe}")


def refused(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    return result.stderr


def recipe(folder: Path, *, targets: dict[str, str] | None = None, select: str | None = None,
           output: str = "", out: str = "out", formats: str = "[jsonl]", extra: str = "",
           scores: str = "  words: {use: length, with: {unit: tokens}}") -> Path:
    """A small model-free recipe (token length, top-k; DSIR toward the targets if any)."""
    lines = ["selectkit: 1", "name: hostile", "seed: 0", "data:", "  pool: {path: data/pool.jsonl, id: id}"]
    if targets:
        lines += ["  targets:"] + [f"    {json.dumps(n)}: {{path: {p}, id: id}}" for n, p in targets.items()]
    lines += ["scores:", scores]
    lines += [select or "select:\n  - use: topk\n    with: {score: words, budget: 5}"]
    lines += ["output:", f"  dir: {out}", f"  formats: {formats}", "  report: false"]
    if output:
        lines += [output]
    if extra:
        lines += [extra]
    path = folder / "recipe.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


PPL = "select:\n  - use: topk\n    with: {score: ppl, budget: 3}"
RS2 = "select:\n  - use: rs2\n    with: {budget: 4, rounds: 2}"


# ---------------------------------------------------------------- 1. eval and outputs


def test_eval_refuses_a_target_whose_file_sits_where_the_split_is_written(tmp_path):
    write_jsonl(tmp_path / "data" / "pool.jsonl", rows())
    target = write_jsonl(tmp_path / "ev" / "split" / "t.jsonl", rows(8))
    path = recipe(tmp_path, targets={"t": "ev/split/t.jsonl"})
    before = digest(tmp_path)
    err = refused(cli("eval", path, "--out", tmp_path / "ev", "-q"))
    assert "eval folder" in err and "t source" in err and str(target) in err, err
    assert len(err.strip().splitlines()) <= 2, err  # the error and its hint
    assert digest(tmp_path) == before  # the target and everything else byte for byte; nothing written


def test_eval_refuses_a_split_folder_that_is_a_symlink_into_the_inputs(tmp_path):
    write_jsonl(tmp_path / "data" / "pool.jsonl", rows())
    write_jsonl(tmp_path / "data" / "t.jsonl", rows(8))
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "split").symlink_to(tmp_path / "data")
    path = recipe(tmp_path, targets={"t": "data/t.jsonl"})
    before = digest(tmp_path / "data")
    err = refused(cli("eval", path, "--out", tmp_path / "ev", "-q"))
    assert "eval split file of target 't'" in err and "overwrite an input" in err, err
    assert digest(tmp_path / "data") == before
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "ev" / "split").unlink()
    (tmp_path / "ev" / "split").symlink_to(elsewhere)  # no input there, but a link is never followed
    err = refused(cli("eval", path, "--out", tmp_path / "ev", "-q"))
    assert "split is a symbolic link" in err and not list(elsewhere.iterdir()), err


@pytest.mark.parametrize("name", ["../escape", "/tmp/abs", "a/b", "..", ".hidden"])
def test_a_target_name_that_is_a_path_is_a_validate_error_at_its_line(tmp_path, name):
    write_jsonl(tmp_path / "data" / "pool.jsonl", rows())
    write_jsonl(tmp_path / "data" / "t.jsonl", rows(8))
    path = recipe(tmp_path, targets={name: "data/t.jsonl"})
    before = digest(tmp_path)
    for command in ("validate", "eval"):
        err = refused(cli(command, path, *(("--out", tmp_path / "ev") if command == "eval" else ())))
        assert f"{path}:{line_of(path, json.dumps(name))}:" in err, err
        assert f"target name {name!r}" in err, err
    assert digest(tmp_path) == before and not (tmp_path / "ev").exists()


def test_a_user_file_named_like_a_split_output_is_refused_and_untouched(tmp_path):
    write_jsonl(tmp_path / "data" / "pool.jsonl", rows())
    mine = write_jsonl(tmp_path / "out" / "subset.round-1.jsonl", [{"mine": True}])
    path = recipe(tmp_path, select=RS2, output="  split_by: round")
    before = digest(tmp_path)
    err = refused(cli("run", path))
    assert f"{mine} exists and was not written by selectkit" in err, err
    assert digest(tmp_path) == before


def test_split_outputs_are_written_and_rewritten_by_selectkit(tmp_path):
    write_jsonl(tmp_path / "data" / "pool.jsonl", rows())
    path = recipe(tmp_path, select=RS2, output="  split_by: round")
    for _ in range(2):  # a rerun replaces its own split files
        done = cli("run", path, "-q")
        assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert {"subset.round-1.jsonl", "subset.round-2.jsonl"} <= set(names), names


def test_split_by_a_pool_column_escapes_values_that_are_not_file_names(tmp_path):
    data = rows()
    for i, r in enumerate(data):
        r["domain"] = ["../up", "a/b", "plain"][i % 3]
    write_jsonl(tmp_path / "data" / "pool.jsonl", data)
    path = recipe(tmp_path, output="  split_by: domain", select="select:\n  - use: topk\n"
                  "    with: {score: words, budget: 12}")
    done = cli("run", path, "-q")
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith("subset.domain-"))
    assert names == ["subset.domain-%2E%2E%2Fup.jsonl", "subset.domain-a%2Fb.jsonl", "subset.domain-plain.jsonl"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out", "recipe.yaml"]


@pytest.mark.parametrize("column, says", [("rounds", "did you mean 'round'?"), ("nonesuch", "pool columns: id, text"),
                                          ("../x", "holds a path separator")])
def test_a_split_by_column_nobody_writes_fails_at_validate(tmp_path, column, says):
    write_jsonl(tmp_path / "data" / "pool.jsonl", rows())
    path = recipe(tmp_path, select=RS2, output=f"  split_by: {json.dumps(column)}")
    err = refused(cli("validate", path))
    assert f"{path}:{line_of(path, 'split_by')}:" in err and says in err, err


def test_a_read_only_output_folder_with_an_earlier_run_is_refused(tmp_path):
    write_jsonl(tmp_path / "data" / "pool.jsonl", rows())
    path = recipe(tmp_path)
    assert cli("run", path, "-q").returncode == 0
    out = tmp_path / "out"
    before = digest(out)
    inode = out.stat().st_ino
    out.chmod(0o555)
    try:
        err = refused(cli("run", path))
        assert "read-only" in err and str(out) in err, err
        assert err.strip().splitlines()[0].startswith("error:") or "read-only" in err.strip().splitlines()[0]
        assert out.stat().st_ino == inode and stat.S_IMODE(out.stat().st_mode) == 0o555  # not swapped
        assert digest(out) == before
        assert not [p for p in tmp_path.iterdir() if ".staging-" in p.name or ".old-" in p.name]
    finally:
        out.chmod(0o755)


# ---------------------------------------------------------------- 2. validate runs no code


def _side_effecting_package(folder: Path, marker: Path, with_model: bool) -> None:
    """A package on the path whose `__init__.py` leaves a marker (and could do anything else)."""
    import shutil

    from conftest import RECIPES

    package = folder / "evilpkg"
    package.mkdir()
    (package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                         "def get_model_path():\n    return '/'\n")
    if with_model:
        shutil.copytree(RECIPES / "models" / "tiny-lm", package / "assets" / "lm")


@pytest.mark.parametrize("with_model", [True, False])
def test_a_side_effecting_pkg_model_is_never_imported(tmp_path, with_model):
    marker = tmp_path / "MARKER"
    _side_effecting_package(tmp_path, marker, with_model)
    write_jsonl(tmp_path / "data" / "pool.jsonl", rows(12))
    path = recipe(tmp_path, extra="models:\n  lm: {path: 'pkg:evilpkg', kind: causal-lm, max_length: 64}",
                  scores="  ppl: {use: perplexity, model: lm}", select=PPL)
    env = {"PYTHONPATH": str(tmp_path)}  # a checkout on sys.path, and the cwd too
    commands = (("validate",), ("plan",), ("run", "-q")) if with_model else (("validate",), ("plan",))
    for command in commands:
        done = cli(*command, path, cwd=tmp_path, env=env)
        assert "Traceback" not in done.stderr, done.stderr
        if with_model:  # found from the package's files: the model under assets/lm
            assert done.returncode == 0, done.stderr
        else:
            assert done.returncode == 1 and "no config.json" in done.stderr, done.stderr
        assert not marker.exists(), f"{command[0]} ran the package's __init__.py"


def test_validate_of_pkg_torch_and_of_every_shipped_recipe_imports_no_torch_numpy_nor_polars(tmp_path):
    from conftest import RECIPES

    write_jsonl(tmp_path / "data" / "pool.jsonl", rows(12))
    path = recipe(tmp_path, extra="models:\n  lm: {path: 'pkg:torch', kind: causal-lm}",
                  scores="  ppl: {use: perplexity, model: lm}", select=PPL)
    recipes = [str(path)] + sorted(str(p) for p in RECIPES.glob("*.yaml"))
    code = ("import sys\nfrom selectkit.api import validate\nfrom selectkit.errors import SelectkitError\n"
            "for r in sys.argv[1:]:\n    try:\n        validate(r)\n    except SelectkitError as exc:\n"
            "        print('ERR', r, str(exc).splitlines()[0])\n"
            "    assert 'torch' not in sys.modules, r\n"
            "    assert 'numpy._core' not in sys.modules, r  # numpy stays lazy until data is computed on\n"
            "    assert 'polars.dataframe' not in sys.modules, r  # a jsonl source's first rows are read by json\n"
            "print('OK')\n")
    done = subprocess.run([sys.executable, "-c", code, *recipes], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stdout + done.stderr
    assert f"ERR {path}" in done.stdout  # torch is no model folder: said as an error, not by importing it


# ---------------------------------------------------------------- 3. Ray addresses


def _ray_recipe(tmp_path: Path, timeout: float = 3) -> Path:
    write_jsonl(tmp_path / "data" / "pool.jsonl", rows(12))
    return recipe(tmp_path, extra=f"execution: {{executor: ray, connect_timeout: {timeout}}}")


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is: nothing listens there


def _timed_run(path: Path, address: str) -> tuple[str, float]:
    import time

    started = time.monotonic()
    done = cli("run", path, "-q", "--address", address)
    return refused(done), time.monotonic() - started


@pytest.mark.parametrize("address, says", [
    ("no-such-host.invalid:6379", "cannot resolve the host"),
    ("127.0.0.1:{closed}", "no Ray cluster answers at '127.0.0.1:{closed}' (tried for 3 s"),
    ("ray://127.0.0.1:{closed}", "no Ray cluster answers at 'ray://127.0.0.1:{closed}'"),
])
def test_an_unreachable_ray_address_fails_in_bounded_time_with_one_line(tmp_path, address, says):
    path = _ray_recipe(tmp_path)
    closed = _closed_port()
    address, says = address.format(closed=closed), says.format(closed=closed)
    err, seconds = _timed_run(path, address)
    assert says in err, err
    assert err.startswith("error: executor: ray:") and len(err.strip().splitlines()) <= 2, err
    assert seconds < 30, seconds  # the 3 s timeout, plus the start of the command
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("address", ["not an address", "ray://", "http://10.0.0.1:6379", "host:99999", "host:"])
def test_a_malformed_ray_address_is_one_line(tmp_path, address):
    path = _ray_recipe(tmp_path)
    err, _ = _timed_run(path, address)
    assert f"malformed Ray address {address!r}" in err and len(err.strip().splitlines()) <= 2, err
    (tmp_path / "recipe.yaml").write_text(path.read_text().replace("connect_timeout: 3", f"address: '{address}'"))
    err = refused(cli("validate", path))
    assert f"{path}:{line_of(path, 'address')}:" in err and "malformed Ray address" in err, err


def test_a_port_where_no_ray_answers_fails_within_the_timeout(tmp_path):
    """Something listens but never speaks Ray's protocol: ray.init would wait; the run stops at the timeout."""
    import socket

    path = _ray_recipe(tmp_path, timeout=4)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        err, seconds = _timed_run(path, f"127.0.0.1:{server.getsockname()[1]}")
    assert "did not accept the connection within 4 s" in err or "cannot join the Ray cluster" in err, err
    assert seconds < 60, seconds


def _without(module: str, folder: Path) -> dict[str, str]:
    """An environment in which `module` is not installed: a sitecustomize hides it from the path finder."""
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        "import sys\nfrom importlib.machinery import PathFinder\n\n"
        "class _Hidden(PathFinder):\n    @classmethod\n    def find_spec(cls, name, path=None, target=None):\n"
        f"        if name == {module!r} or name.startswith({module + '.'!r}):\n            return None\n"
        "        return PathFinder.find_spec(name, path, target)\n\n"
        "sys.meta_path[:] = [_Hidden if f is PathFinder else f for f in sys.meta_path]\n")
    return {"PYTHONPATH": str(folder)}


def _without_ray(folder: Path) -> dict[str, str]:
    return _without("ray", folder)


def test_an_hf_dataset_output_without_datasets_is_said_before_any_compute(tmp_path):
    """output.formats: hf_dataset is written with datasets' save_to_disk: without datasets installed,
    validate warns and plan and run refuse, naming the package and the extra, before anything runs."""
    write_jsonl(tmp_path / "data" / "pool.jsonl", rows())
    path = recipe(tmp_path, formats="[parquet, hf_dataset]")
    env = _without("datasets", tmp_path / "shim")
    done = cli("validate", path, env=env)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "output.formats: hf_dataset need(s) the 'models' extra" in done.stderr, done.stderr
    for command in ("plan", "run"):
        err = refused(cli(command, path, env=env))
        assert "needs the 'datasets' package" in err and "selectkit[models]" in err, err
    assert not (tmp_path / "out").exists()
    assert cli("validate", path).stderr.count("'models' extra") == 0  # with datasets installed: no word of it


def test_a_missing_ray_extra_is_said_by_validate_and_plan(tmp_path):
    env = _without_ray(tmp_path / "shim")
    probe = subprocess.run([sys.executable, "-c", "import importlib.util as u; print(u.find_spec('ray'))"],
                           capture_output=True, text=True, env={**os.environ, **env})
    assert probe.stdout.strip() == "None", probe.stdout + probe.stderr
    path = _ray_recipe(tmp_path)
    done = cli("validate", path, env=env)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "execution.executor: ray need(s) the 'ray' extra, which is not installed" in done.stderr, done.stderr
    err = refused(cli("validate", "--strict", path, env=env))
    assert "'ray' extra" in err, err
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "data").symlink_to(tmp_path / "data")
    plain = recipe(tmp_path / "local")  # a local recipe planned with --executor ray
    for command in (("plan", path), ("plan", plain, "--executor", "ray"), ("run", path)):
        err = refused(cli(*command, env=env))
        assert "executor: ray needs the 'ray' package, which is not installed" in err, err
        assert "pip install 'selectkit[ray]'" in err, err


# ---------------------------------------------------------------- 4. verifiers


CATASTROPHIC = r"^([\s\S]|[\s\S]{2})*(?!)"  # fails on every text, after Fibonacci(len) paths


def _sums(folder: Path, n: int = 12, null_at: tuple[int, ...] = (), drop_at: tuple[int, ...] = ()) -> Path:
    """A copy of the demo's sums with some reference answers null (`null_at`) or absent (`drop_at`)."""
    from conftest import RECIPES

    data = [json.loads(line) for line in (RECIPES / "data" / "arithmetic.jsonl").read_text().splitlines()[:n]]
    for row in data:
        row["text"] = row["question"]
    for i in null_at:
        data[i]["answer"] = None
    for i in drop_at:
        del data[i]["answer"]
    write_jsonl(folder / "data" / "pool.jsonl", data)
    return folder / "data" / "pool.jsonl"


def _pass_rate_recipe(folder: Path, *, verifier: str = "{use: numeric, with: {which: first}}",
                      answer: str = "answer", prompt: str = '"{question}"', extra: str = "",
                      max_new_tokens: int = 4, budget: int = 3) -> Path:
    from conftest import RECIPES

    return recipe(folder, extra=f"models:\n  lm: {{path: {RECIPES / 'models' / 'tiny-lm'}, kind: causal-lm, "
                  "max_length: 96}",
                  scores=("  hard:\n    use: pass_rate\n    model: lm\n    with:\n"
                          f"      prompt: {prompt}\n      answer: {answer}\n      verifier: {verifier}\n"
                          f"      samples: 1\n      max_new_tokens: {max_new_tokens}\n{extra}"),
                  select=f"select:\n  - use: topk\n    with: {{score: hard, budget: {budget}}}")


def test_a_catastrophic_regex_on_real_generated_output_stops_with_one_line(tmp_path):
    import time

    _sums(tmp_path, n=3)
    path = _pass_rate_recipe(tmp_path, verifier=f"{{use: regex, with: {{pattern: '{CATASTROPHIC}', timeout: 0.5}}}}",
                             max_new_tokens=48, budget=1)
    done = cli("validate", path)
    assert done.returncode == 0, done.stderr
    assert f"{path}:{line_of(path, 'verifier:')}:" in done.stderr and "nests quantifiers" in done.stderr, done.stderr
    started = time.monotonic()
    err = refused(cli("run", path, "-q"))
    assert time.monotonic() - started < 120
    assert f"pattern {CATASTROPHIC!r} ran longer than 0.5 s" in err and "(example id 'sum-0" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("how", ["null", "absent"])
def test_a_missing_reference_answer_is_an_error_at_validate(tmp_path, how):
    _sums(tmp_path, **({"null_at": (4,)} if how == "null" else {"drop_at": (4,)}))
    path = _pass_rate_recipe(tmp_path)
    err = refused(cli("validate", path))
    assert f"{path}:{line_of(path, 'answer: answer')}:" in err, err
    assert "pool row 5 has no reference answer ('answer' is null or absent)" in err, err


def test_missing_references_beyond_the_first_rows_stop_the_run(tmp_path):
    from selectkit.planning.check import HEAD_ROWS

    _sums(tmp_path, n=HEAD_ROWS + 10, null_at=(HEAD_ROWS + 3,))
    path = _pass_rate_recipe(tmp_path)
    assert cli("validate", path).returncode == 0  # validate sees the first rows only
    err = refused(cli("run", path, "-q"))
    assert f"1 of {HEAD_ROWS + 10} examples have no reference answer" in err and "'sum-103'" in err, err
    assert not (tmp_path / "out").exists()


def test_on_missing_skip_leaves_unlabelled_rows_unselected_and_counts_them(tmp_path):
    import polars as pl

    _sums(tmp_path, null_at=(1, 5, 7))
    path = _pass_rate_recipe(tmp_path, extra="      on_missing: skip\n", budget=9)
    done = cli("run", path, "-q")
    assert done.returncode == 0, done.stderr
    selection = pl.read_parquet(tmp_path / "out" / "selection.parquet")
    unlabelled = selection.filter(pl.col("id").is_in(["sum-001", "sum-005", "sum-007"]))
    assert not unlabelled["selected"].any() and unlabelled["score.hard"].is_nan().all()
    warnings = json.loads((tmp_path / "out" / "manifest.json").read_text())["warnings"]
    assert any("3 of 12 examples have no reference answer" in w and "on_missing: skip" in w for w in warnings), \
        warnings


@pytest.mark.parametrize("param, value, says", [
    ("answer", "answr", "column 'answr' not found"),
    ("prompt", '"{questoin} ="', "column 'questoin' not found"),
])
def test_a_typod_prompt_or_answer_column_is_caught_at_validate(tmp_path, param, value, says):
    _sums(tmp_path)
    path = _pass_rate_recipe(tmp_path, **{param: value})
    err = refused(cli("validate", path))
    assert f"{path}:{line_of(path, f'{param}: {value}')}:" in err and says in err, err


def test_a_pattern_that_breaks_with_the_real_reference_is_one_line(tmp_path):
    _sums(tmp_path)
    path = _pass_rate_recipe(tmp_path, verifier="{use: regex, with: {pattern: 'a{{answer},1}'}}")
    err = refused(cli("validate", path))
    assert f"{path}:{line_of(path, 'verifier:')}:" in err, err
    assert "with the reference '114' is not a valid regular expression" in err and "re.error" not in err, err
    from selectkit.plugin import DataError
    from selectkit_plugins.verifiers import Regex

    verifier = Regex(Regex.Params(pattern="a{{answer},1}"))
    with pytest.raises(DataError, match="with the reference '7' is not a valid"):
        verifier.check("aaa", "7")  # at run time (rows validate did not see): a DataError, not re.error



def test_without_the_regex_package_a_runaway_search_is_stopped_in_a_worker(monkeypatch):
    import time

    from selectkit.plugin import DataError
    from selectkit_plugins import verifiers

    monkeypatch.setattr(verifiers._Bounded, "__init__", lambda self, timeout: (
        setattr(self, "timeout", timeout), setattr(self, "engine", None), setattr(self, "pool", None))[0])
    verifier = verifiers.Regex(verifiers.Regex.Params(pattern=r"answer: (\d+)", timeout=0.5))
    assert verifier.check("so the answer: 42", "42")  # the worker answers an ordinary search
    runaway = verifiers.Regex(verifiers.Regex.Params(pattern=CATASTROPHIC, timeout=0.5))
    started = time.monotonic()
    with pytest.raises(DataError, match="ran longer than 0.5 s"):
        runaway.check("x" * 60, "1")  # re would take years: the worker is killed
    assert time.monotonic() - started < 30


# ---------------------------------------------------------------- 5. hostile model metadata


GOOD = {"llama.block_count": ("uint32", 2), "llama.context_length": ("uint32", 128),
        "llama.embedding_length": ("uint32", 16), "llama.feed_forward_length": ("uint32", 32),
        "llama.attention.head_count": ("uint32", 4), "llama.attention.head_count_kv": ("uint32", 2),
        "llama.attention.layer_norm_rms_epsilon": ("float32", 1e-5)}


def _gguf(path: Path, **bad: tuple[str, object]) -> Path:
    """A small llama GGUF written by the `gguf` package, with `bad` values (key with '.' as '__')."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    values = {**GOOD, **{k.replace("__", "."): v for k, v in bad.items()}}
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny test model")
    for key, (kind, value) in values.items():
        getattr(writer, f"add_{kind}")(key, value)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(64)])
    rng = np.random.default_rng(0)
    writer.add_tensor("token_embd.weight", rng.normal(size=(64, 16)).astype(np.float32))
    writer.add_tensor("blk.0.attn_q.weight", rng.normal(size=(16, 16)).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _model_recipe(folder: Path, model: str) -> Path:
    write_jsonl(folder / "data" / "pool.jsonl", rows(12))
    return recipe(folder, extra=f"models:\n  lm: {{path: {model}, kind: causal-lm}}",
                  scores="  ppl: {use: perplexity, model: lm}", select=PPL)


@pytest.mark.parametrize("key, kind, value, says", [
    ("llama.embedding_length", "string", "sixteen", "'llama.embedding_length' is a string ('sixteen'), not a whole"),
    ("llama.block_count", "float32", float("nan"), "'llama.block_count' is nan, not a whole number"),
    ("llama.context_length", "float64", float("inf"), "'llama.context_length' is inf, not a whole number"),
    ("llama.embedding_length", "array", [16, 16], "'llama.embedding_length' is an array, but it holds one number"),
    ("llama.attention.head_count", "uint32", 0, "'llama.attention.head_count' is 0, outside 1 to"),
    ("llama.feed_forward_length", "uint64", 1 << 40, "'llama.feed_forward_length' is 1,099,511,627,776, outside"),
    ("llama.attention.layer_norm_rms_epsilon", "float32", float("nan"), "'llama.attention.layer_norm_rms_epsilon' "
     "is nan, outside (0, 1)"),
    ("llama.attention.head_count_kv", "array", ["a", "b"], "'llama.attention.head_count_kv' is a string ('a')"),
])
def test_gguf_metadata_of_the_wrong_type_or_range_is_one_error_naming_the_key(tmp_path, key, kind, value, says):
    model = _gguf(tmp_path / "m.gguf", **{key.replace(".", "__"): (kind, value)})
    path = _model_recipe(tmp_path, str(model))
    before = digest(tmp_path)
    err = refused(cli("validate", path))
    assert f"{path}:{line_of(path, 'lm: {path')}:" in err and says in err, err
    assert len(err.strip().splitlines()) == 1, err
    err = refused(cli("plan", path))
    assert says in err and len(err.strip().splitlines()) == 1, err
    assert digest(tmp_path) == before


def test_per_layer_gguf_arrays_still_read_as_their_largest_entry(tmp_path):
    from selectkit.models.gguf import config_of, read_header

    model = _gguf(tmp_path / "m.gguf", llama__attention__head_count_kv=("array", [2, 4]),
                  llama__feed_forward_length=("array", [32] * 100))
    config = config_of(read_header(model))
    assert config["num_key_value_heads"] == 4 and config["intermediate_size"] == 32


@pytest.mark.parametrize("key, value, says", [
    ("hidden_size", '"wide"', "'hidden_size' is 'wide', not a whole number"),
    ("num_hidden_layers", "NaN", "'num_hidden_layers' is nan, not a whole number"),
    ("vocab_size", "Infinity", "'vocab_size' is inf"),
    ("intermediate_size", "[64, 64]", "'intermediate_size' is [64, 64], not a whole number"),
    ("max_position_embeddings", "-1", "'max_position_embeddings' is -1, outside 0 to 2**40"),
])
def test_config_json_values_of_the_wrong_type_are_one_error_naming_the_key(tmp_path, key, value, says):
    import shutil

    from conftest import RECIPES

    model = tmp_path / "lm"
    shutil.copytree(RECIPES / "models" / "tiny-lm", model)
    config = (model / "config.json").read_text()
    config = json.dumps({**json.loads(config), key: "__BAD__"}).replace('"__BAD__"', value)
    (model / "config.json").write_text(config)
    path = _model_recipe(tmp_path, "lm")
    for command in ("validate", "plan"):
        err = refused(cli(command, path))
        assert says in err and str(model / "config.json") in err and len(err.strip().splitlines()) == 1, err


# ---------------------------------------------------------------- 8. cache symlinks
# A group-shared cache is a place others write to: a symbolic link planted where an entry, a shard,
# meta.json, the last-use marker or a whole kind of entries belongs is never followed for a write, a
# touch or a delete. The run reports it on one line, removes the link (never its target), computes
# the entry again into a real folder and selects exactly what a clean run selects; `cache list`
# marks such links and `cache prune` removes them. Nothing outside the cache changes (its tree,
# with modes and times, is compared before and after).


def _outside_tree(folder: Path) -> dict[str, tuple]:
    """Every path under `folder`, never following a link: (type, mode, mtime, bytes' sha256 or link target)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        st = path.lstat()
        what = (os.readlink(path) if path.is_symlink() else
                hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else "")
        found[str(path.relative_to(folder))] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_mtime_ns, what)
    return found


def _links(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_symlink())


@pytest.fixture(scope="module")
def _clean_quickstart(tmp_path_factory):
    """The quickstart run once on a clean cache: (recipes folder, the cache it left, its selection)."""
    import shutil

    from conftest import RECIPES

    base = tmp_path_factory.mktemp("quickstart")
    recipes = base / "recipes"
    shutil.copytree(RECIPES, recipes, ignore=shutil.ignore_patterns("out"))
    result = cli("run", recipes / "quickstart.yaml", "--out", base / "out", "--cache-dir", base / "cache")
    assert result.returncode == 0, result.stderr
    return recipes, base / "cache", (base / "out" / "selection.parquet").read_bytes()


def _cache_copy(clean, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A copy of the clean cache to plant links in, an outside folder holding a file and a folder
    with a sentinel, and the recipe."""
    import shutil

    recipes, cache, _ = clean
    shutil.copytree(cache, tmp_path / "cache", symlinks=True)
    outside = tmp_path / "outside"
    (outside / "folder").mkdir(parents=True)
    (outside / "folder" / "sentinel").write_text("do not touch\n")
    (outside / "file").write_text("do not touch\n")
    return recipes / "quickstart.yaml", tmp_path / "cache", outside


def _plant(where: str, cache: Path, outside: Path, nth: int = 0) -> Path:
    """A symbolic link planted in `cache` where `where` belongs (in the `nth` selection entry); returns the link."""
    import shutil

    selection = sorted((cache / "selections").iterdir())[nth]  # read by every run of the recipe
    if where in ("marker", "marker-dangling"):
        link = selection / ".used"
        link.unlink(missing_ok=True)
        link.symlink_to(outside / ("file" if where == "marker" else "created-by-a-touch"))
    elif where == "entry":
        shutil.rmtree(selection)
        link = selection
        link.symlink_to(outside / "folder", target_is_directory=True)
    elif where in ("shard", "meta"):  # a link to an identical copy: the checksums alone would not catch it
        entry = (sorted((cache / "pool").iterdir())[0] / "shard-00000") if where == "shard" else selection
        link = entry / ("arrays.npz" if where == "shard" else "meta.json")
        shutil.copy(link, outside / link.name)
        link.unlink()
        link.symlink_to(outside / link.name)
    elif where == "kind":
        link = cache / "selections"
        shutil.rmtree(link)
        link.symlink_to(outside / "folder", target_is_directory=True)
    else:  # the fingerprint memo folder
        link = cache / "fingerprints"
        shutil.rmtree(link, ignore_errors=True)
        link.symlink_to(outside / "folder", target_is_directory=True)
    return link


@pytest.mark.parametrize("where", ["marker", "marker-dangling", "entry", "shard", "meta", "kind", "memo"])
def test_a_planted_cache_symlink_is_never_followed_and_the_run_recomputes(tmp_path, _clean_quickstart, where):
    recipe_path, cache, outside = _cache_copy(_clean_quickstart, tmp_path)
    link = _plant(where, cache, outside)
    before = _outside_tree(outside)
    result = cli("run", recipe_path, "--out", tmp_path / "out", "--cache-dir", cache)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert (tmp_path / "out" / "selection.parquet").read_bytes() == _clean_quickstart[2]
    assert _outside_tree(outside) == before  # nothing created, written, touched or deleted there
    warned = [line for line in (result.stdout + result.stderr).splitlines() if "symbolic link" in line]
    if where == "memo":  # the memo is a shortcut: skipped quietly while a link (cache list and prune show it)
        assert warned == [] and link.is_symlink()
        return
    assert len(warned) == 1 and str(link) in warned[0] and "never followed" in warned[0], warned
    assert _links(cache) == []  # the link is gone; the entry is a real folder again, inside the cache
    assert not link.is_symlink() and (link.exists() or where.startswith("marker"))


def test_cache_list_marks_planted_links_and_prune_removes_the_links_not_their_targets(tmp_path, _clean_quickstart):
    recipe_path, cache, outside = _cache_copy(_clean_quickstart, tmp_path)
    planted = (("marker", 1), ("shard", 0), ("memo", 0), ("entry", 0))
    links = [_plant(where, cache, outside, nth) for where, nth in planted]
    before = _outside_tree(outside)
    listed = cli("cache", "list", "--cache-dir", cache)
    assert listed.returncode == 0, listed.stderr
    marked = [line for line in listed.stdout.splitlines() if "symbolic link" in line]
    assert len(marked) == 4 + 1, listed.stdout  # four entries, and the summary line
    assert any(str(outside / "folder") in line for line in marked)
    pruned = cli("cache", "prune", "--keep", recipe_path, "--cache-dir", cache)
    assert pruned.returncode == 0 and "Traceback" not in pruned.stderr, pruned.stderr
    assert _links(cache) == [] and not any(link.is_symlink() for link in links)
    assert _outside_tree(outside) == before and (outside / "folder" / "sentinel").is_file()
    kept = cli("cache", "list", "--cache-dir", cache).stdout
    assert "scores" in kept and "symbolic link" not in kept, kept  # the real entries the recipe uses stay
