#!/usr/bin/env bash
# The GPU run of issue 21 in one call, on the borrowed GPU machine (no network, at most 64 MiB sent;
# its image has CUDA torch, transformers and peft but lacks polars, pydantic and gguf).
#
#   benchmarks/gpu.sh --prepare DIR      # here, with network: the wheels the GPU image lacks
#                                        # (Python 3.12, manylinux x86-64) into DIR (~2.9 MB) and the
#                                        # peers' (kronfluence, dattri) into DIR/peers (~0.6 MB)
#   benchmarks/gpu.sh [--wheels DIR] [OUT_DIR]   # there: install DIR's wheels, the peers apart in
#                                        # DIR/site, measure, write OUT_DIR/gpu.json (default $OUT,
#                                        # else ./gpu-out)
#   benchmarks/gpu.sh --dry-run [OUT_DIR]        # anywhere: every part on CPU at toy sizes, exit 0
#                                        # (GPU_PEERS_PATH=DIR/site runs the peers too)
#
# The device tool sends the working tree plus carried paths: keep DIR inside the checkout, ignored
# by git, and carry it, e.g.
#   echo /gpu-wheels/ >> .git/info/exclude; benchmarks/gpu.sh --prepare gpu-wheels
#   run(command="benchmarks/gpu.sh --wheels gpu-wheels $OUT", carry=["gpu-wheels"], timeout_s=540)
#
# What it measures (benchmarks/gpu_bench.py): SmolLM2-135M forward tokens/s and MFU in bfloat16 vs
# float32; gradient-store features at k = 8192 (LoRA r=8 on q,k,v,o, the sparse JL projection):
# tokens/s and the ratio to a plain forward+backward; LESS scoring throughput. SmolLM2 is built from
# its config with random weights (the 98 MB GGUF cannot travel; cost does not depend on the values).
# Then the peers on the same GPU: selectkit against kronfluence (EK-FAC) and dattri (TracIn, DataInf) on
# one task (the same model, 1,000 x 32-token random texts, 32 queries): seconds per phase, peak GPU
# memory, Spearman with selectkit's scores; a peer that is missing or fails is recorded as skipped.
# PEAK_TFLOPS (default 989, H100/H200 SXM dense bf16) sets the MFU denominator.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[[ -x .venv/bin/python && -z "${PYTHON:-}" && "${1:-}" == "--dry-run" ]] && PY=.venv/bin/python
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
peers=()

case "${1:-}" in
  --prepare)
    dir=${2:?usage: benchmarks/gpu.sh --prepare DIR}
    mkdir -p "$dir"
    # what the GPU image lacks for this script: pydantic (selectkit.plugin's contract) and gguf;
    # torch, transformers, peft, numpy, pyyaml, pluggy are there already. polars (54 MB) is not
    # needed: the script reads no table, and selectkit imports polars only where it reads one
    "$PY" -m pip download -q --dest "$dir" --only-binary=:all: --python-version 3.12 \
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
      --implementation cp --abi cp312 --no-deps \
      pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection typing-extensions gguf
    # the peers, pure Python, into DIR/peers (installed apart on the device, never into its site-packages):
    # kronfluence imports einops, einconv and opt_einsum besides torch, accelerate, safetensors and tqdm
    # (in the image); dattri's TracIn and DataInf import torch, numpy and tqdm (its declared scipy, pyyaml
    # are in the image; pretty_midi serves only its MIDI benchmark and is left out)
    "$PY" -m pip download -q --dest "$dir/peers" --only-binary=:all: --python-version 3.12 \
      --platform manylinux2014_x86_64 --implementation cp --abi cp312 --no-deps \
      kronfluence==1.0.1 einops==0.8.2 einconv==0.1.0 opt-einsum==3.4.0 dattri==0.3.0
    du -sh --apparent-size "$dir/peers"; du -sh --apparent-size "$dir"
    exit 0 ;;
  --dry-run)
    out=${2:-${OUT:-gpu-dry}}
    exec "$PY" benchmarks/gpu_bench.py --device cpu --tiny --repeats 1 --out "$out" ;;
  --wheels)
    dir=${2:?usage: benchmarks/gpu.sh --wheels DIR [OUT_DIR]}
    shift 2
    "$PY" -m pip install -q --no-index --no-deps "$dir"/*.whl
    if compgen -G "$dir/peers/*.whl" >/dev/null; then
      # apart in DIR/site, which gpu_bench appends to sys.path (kronfluence's wheel ships a top-level
      # `tests` package: it must shadow nothing); a failed install only skips the peers
      rm -rf "$dir/site"
      if "$PY" -m pip install -q --no-index --no-deps --target "$dir/site" "$dir"/peers/*.whl; then
        # the wheels' stray top-level folders (kronfluence: tests, examples; dattri: test, docs, examples,
        # experiments) go: a regular `tests` package would win over the checkout's namespace `tests`
        rm -rf "$dir/site"/{tests,test,examples,docs,experiments}
        peers=(--peers-path "$(cd "$dir/site" && pwd)")
      else
        echo "gpu.sh: the peers' wheels did not install; the peers part records them as skipped"
      fi
    fi ;;
esac
out=${1:-${OUT:-gpu-out}}
mkdir -p "$out"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
  | tee "$out/nvidia-smi.txt" || echo "nvidia-smi not found"
timeout 480 "$PY" benchmarks/gpu_bench.py --device cuda --out "$out" ${peers[@]+"${peers[@]}"}
