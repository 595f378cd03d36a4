"""Model files from elsewhere are hostile: a truncated or garbage safetensors file fails at
validate time naming the file and the reason; a pickle weight file that torch refuses, or any
other load failure, is a ModelError at run time. Never a traceback, never the pickle's code."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
from conftest import cli

from selectkit.errors import ModelError
from selectkit.models.loader import check_model
from selectkit.recipe.spec import ModelSpec

RECIPE = "perplexity_filter.yaml"  # models.lm: models/tiny-lm (line 12)


def _split(file: Path) -> tuple[dict, bytes]:
    raw = file.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def _write(file: Path, header: bytes, data: bytes) -> None:
    file.write_bytes(struct.pack("<Q", len(header)) + header + data)


def _break(file: Path, how: str) -> None:
    header, data = _split(file)
    if how == "truncated-to-4-bytes":
        file.write_bytes(file.read_bytes()[:4])
    elif how == "header-length-past-end":
        file.write_bytes(struct.pack("<Q", 10 * file.stat().st_size) + file.read_bytes()[8:])
    elif how == "header-not-json":
        raw = json.dumps(header).encode()
        _write(file, b"\x00garbage" + raw[8:], data)
    elif how == "header-not-an-object":
        _write(file, b"[1, 2, 3]", data)
    elif how == "data-truncated":
        file.write_bytes(file.read_bytes()[:-1000])
    elif how == "offsets-past-end":
        name = next(k for k in header if k != "__metadata__")
        header[name]["data_offsets"] = [0, len(data) + 4096]
        _write(file, json.dumps(header).encode(), data)
    elif how == "size-does-not-match-shape":
        name = next(k for k in header if k != "__metadata__")
        header[name]["shape"] = [dim * 2 for dim in header[name]["shape"]]
        _write(file, json.dumps(header).encode(), data)
    elif how == "malformed-entry":
        name = next(k for k in header if k != "__metadata__")
        header[name] = {"dtype": "F32"}
        _write(file, json.dumps(header).encode(), data)


CASES = {
    "truncated-to-4-bytes": "only 4 bytes: shorter than the 8-byte header length",
    "header-length-past-end": "runs past the end of the file",
    "header-not-json": "the header is not JSON",
    "header-not-an-object": "the header is not a JSON object",
    "data-truncated": "run past the end of the data",
    "offsets-past-end": "run past the end of the data",
    "size-does-not-match-shape": "bytes of data for a F32 tensor of shape",
    "malformed-entry": "malformed entry",
}


@pytest.mark.parametrize("how", CASES)
def test_broken_safetensors_fail_check_model_naming_file_and_reason(demo, how):
    folder = demo / "models" / "tiny-lm"
    _break(folder / "model.safetensors", how)
    with pytest.raises(ModelError) as info:
        check_model(ModelSpec(path=str(folder), kind="causal-lm"), ".", name="lm")
    assert f"model 'lm': {folder / 'model.safetensors'} is not a valid safetensors file" in info.value.message
    assert CASES[how] in info.value.message


@pytest.mark.parametrize("how", ["data-truncated", "header-not-json"])
def test_validate_reports_a_broken_safetensors_at_the_model_line(demo, how):
    _break(demo / "models" / "tiny-lm" / "model.safetensors", how)
    result = cli("validate", demo / RECIPE)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{demo / RECIPE}:12:" in result.stderr and "model.safetensors is not a valid safetensors file" \
        in result.stderr and CASES[how] in result.stderr
    assert "Traceback" not in result.stderr


class _Payload:
    """Unpickling this creates `marker`: what a hostile weight file does."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_malicious_pickle_weights_never_run_and_the_run_fails_cleanly(demo, tmp_path, protocol):
    folder = demo / "models" / "tiny-lm"
    marker = tmp_path / "pwned"
    (folder / "model.safetensors").unlink()
    with open(folder / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"model.embed_tokens.weight": _Payload(marker)}, handle, protocol=protocol)
    assert cli("validate", demo / RECIPE).returncode == 0  # a .bin is a weight file; loading decides
    result = cli("run", demo / RECIPE, "--limit", "20", "--out", tmp_path / "out")
    assert result.returncode == 1, result.stdout + result.stderr
    assert not marker.exists(), "the pickle's payload ran"
    assert "error: model 'lm': refused to load pytorch_model.bin" in result.stderr
    assert "weights_only" in result.stderr and ".safetensors" in result.stderr
    assert "Traceback" not in result.stderr


def test_garbage_weights_are_a_model_error_not_a_traceback(demo, tmp_path):
    folder = demo / "models" / "tiny-lm"
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not really a zip archive" * 10)
    result = cli("run", demo / RECIPE, "--limit", "20", "--out", tmp_path / "out")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"error: model 'lm': cannot load {folder} (weights: pytorch_model.bin): RuntimeError: " in result.stderr
    assert "Traceback" not in result.stderr


def test_a_device_the_machine_lacks_is_a_model_error(demo, tmp_path):
    recipe = demo / RECIPE
    text = recipe.read_text()
    assert "max_length: 256}" in text
    recipe.write_text(text.replace("max_length: 256}", 'max_length: 256, device: "cuda:99"}'))
    result = cli("run", recipe, "--limit", "20", "--out", tmp_path / "out")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "error: model 'lm': cannot place the model on 'cuda:99'" in result.stderr
    assert "Traceback" not in result.stderr
