"""benchmarks/gpu.sh cannot rot: its dry run executes every measurement on CPU at toy sizes, as
committed, and writes the figures the GPU run would (issue 21, part 6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_script_dry_run_measures_every_part(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", "benchmarks/gpu.sh", "--dry-run", str(tmp_path / "out")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "out" / "gpu.json").read_text())
    assert result["device"] == "cpu" and result["tiny"]
    for dtype in ("bfloat16", "float32"):
        assert result[f"forward_{dtype}"]["tokens_per_s"] > 0
    store = result["gradient_store"]
    assert store["proj_dim"] == 8192 and store["projection"] == "sjlt" and store["ratio_to_plain"] > 0
    assert result["scoring"]["rows_per_s"] > 0


def test_gpu_script_refuses_a_machine_without_cuda(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    done = subprocess.run([sys.executable, "benchmarks/gpu_bench.py", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "sees no CUDA device" in done.stderr and "Traceback" not in done.stderr
