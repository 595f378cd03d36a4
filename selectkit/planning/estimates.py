"""Planner estimates for model passes: FLOPs, memory, batch size and time, from the model's
config.json and token lengths sampled from the data. Pure Python: never imports torch.

    inv = parse_inventory(devices="cuda:0,cuda:1") or parse_inventory(assume="8xH100-80GB")
    est = estimate_model_pass(facts, examples=N, mean_tokens=T, inventory=inv, dtype="bfloat16")
    est.as_detail()            # strings for `selectkit plan`
    estimate_pass(checked, model_name, requests, inv)   # the planner's one-call entry point
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from selectkit.errors import SelectkitError
from selectkit.models.sizing import (
    CPU_ACTIVATION_BUDGET,
    DTYPE_BYTES,
    MAX_BATCH_TOKENS_CPU,
    MAX_BATCH_TOKENS_CUDA,
    activation_bytes_per_token,
    batch_tokens_that_fit,
)

GiB = 1 << 30
# name -> (memory GiB, dense bf16 TFLOP/s; fp16 for GPUs without bf16). Public spec sheets, SXM parts.
GPUS: dict[str, tuple[float, float]] = {
    "B200-180GB": (180, 2250),
    "H200-141GB": (141, 989),
    "H100-80GB": (80, 989),
    "H100-PCIE-80GB": (80, 756),
    "A100-80GB": (80, 312),
    "A100-40GB": (40, 312),
    "L40S-48GB": (48, 362),
    "A10-24GB": (24, 125),
    "L4-24GB": (24, 121),
    "V100-32GB": (32, 125),
    "V100-16GB": (16, 125),
    "T4-16GB": (16, 65),
}
# Assumed sustained fp32 throughput of one CPU core on dense transformer inference (measured:
# benchmarks/bench_perplexity.py: ~10 GFLOP/s per core on a loaded 2-core machine, ~50 idle).
CPU_TFLOPS_PER_CORE = 0.02
GPU_MFU = 0.4  # assumed model-FLOPs utilisation of a forward pass on a GPU
CPU_FULL_SPEED_HIDDEN = 768  # narrower models reach a proportionally smaller share of the CPU's speed
LOAD_SECONDS = 1.0  # fixed cost of a step that loads a model (process-level imports excluded)
LOAD_BYTES_PER_S = 400e6  # reading weights from disk into memory
# seconds per FLOP against a plain pass, measured with benchmarks/bench_estimates.py on the demo recipes:
# a provider names its work (`PassEstimate.scaled(..., work=...)`), never these numbers
GRADIENT_OVERHEAD = 0.5  # per-example gradients (hooks), Adam transform and random projection, per checkpoint
# (4.0 when measured at load average ~10; 0.5 on a quiet 2-core machine, 2026-12-02: contention slows
# the hooks' many small ops far more than a plain pass)
TRAIN_OVERHEAD = 3.0  # optimizer steps, gradient accumulation, one checkpoint written per epoch
OVERHEADS = {"forward": 1.0, "gradients": GRADIENT_OVERHEAD, "training": TRAIN_OVERHEAD}
CUDA_OVERHEAD = int(1.5 * GiB)  # CUDA context, allocator slack, kernels' workspaces
PADDING = 1.05  # length-sorted batches pad about this much
SAMPLE_ROWS = 256


@dataclass(frozen=True)
class Device:
    """One device a pass may use; memory and throughput are None when unknown."""

    name: str  # cpu, cuda:0, H100-80GB#3
    kind: str  # cpu | cuda
    memory_bytes: int | None
    peak_tflops: float | None  # dense bf16 for GPUs; assumed sustained fp32 for a CPU
    hypothetical: bool = False


@dataclass(frozen=True)
class Inventory:
    """The devices a plan is made for and where the list came from (detected, given, assumed)."""

    devices: tuple[Device, ...]
    source: str

    @property
    def gpus(self) -> tuple[Device, ...]:
        return tuple(d for d in self.devices if d.kind == "cuda")

    def __str__(self) -> str:
        names: dict[str, int] = {}
        for d in self.devices:
            base = d.name.split("#")[0]
            names[base] = names.get(base, 0) + 1
        text = ", ".join(f"{n}x {k}" if n > 1 else k for k, n in names.items())
        return f"{text} ({self.source})"


def _cpu() -> Device:
    cores = os.cpu_count() or 1
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        memory = None
    return Device("cpu", "cpu", memory, cores * CPU_TFLOPS_PER_CORE)


def gpu_by_name(text: str) -> tuple[str, float, float] | None:
    """Match a GPU name ('H100', 'h100-80gb', 'NVIDIA H100 80GB HBM3') to the table: the longest
    model name that prefixes it, with the memory size that follows (else that model's first row)."""
    key = re.sub(r"NVIDIA|TESLA|GEFORCE|HBM\dE?|SXM\d?|[^A-Z0-9]", "", text.upper())
    best: tuple[int, int, str] | None = None
    for rank, name in enumerate(GPUS):
        model, size = name.rsplit("-", 1)
        model = model.replace("-", "")
        if not key.startswith(model):
            continue
        rest = key[len(model):]
        if rest and not rest.startswith(size.removesuffix("GB")):
            continue
        score = (len(model), -rank if not rest else 1)
        if best is None or score > best[:2]:
            best = (*score, name)
    if best is None:
        return None
    mem, tflops = GPUS[best[2]]
    return best[2], mem, tflops


def _smi() -> list[tuple[str, int]]:
    """(name, memory bytes) of each visible NVIDIA GPU via nvidia-smi; [] without one."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found = []
    for line in out.strip().splitlines():
        name, _, mem = line.rpartition(",")
        try:
            found.append((name.strip(), int(float(mem)) * (1 << 20)))
        except ValueError:
            continue
    return found


def _cuda(index: int, smi: list[tuple[str, int]]) -> Device:
    if index < len(smi):
        name, memory = smi[index]
        match = gpu_by_name(name)
        return Device(f"cuda:{index}", "cuda", memory, match[2] if match else None)
    return Device(f"cuda:{index}", "cuda", None, None)


@lru_cache(maxsize=1)
def detect_inventory() -> Inventory:
    """The machine's GPUs (via nvidia-smi, no torch) or its CPU."""
    smi = _smi()
    if smi:
        return Inventory(tuple(_cuda(i, smi) for i in range(len(smi))), "detected")
    return Inventory((_cpu(),), "detected")


def parse_inventory(devices: str | None = None, assume: str | None = None) -> Inventory:
    """`--devices cpu|cuda|cuda:0,cuda:1` or `--assume 8xH100-80GB[,2xA100-40GB]` -> Inventory."""
    if devices and assume:
        raise SelectkitError("give either --devices or --assume, not both")
    if assume:
        found: list[Device] = []
        for part in assume.split(","):
            m = re.fullmatch(r"\s*(?:(\d+)\s*[xX*]\s*)?([A-Za-z0-9-]+)\s*", part)
            match = gpu_by_name(m.group(2)) if m else None
            if m and m.group(2).lower() == "cpu":
                found += [_cpu()] * int(m.group(1) or 1)
                continue
            if match is None:
                raise SelectkitError(f"unknown device {part.strip()!r} in --assume",
                                     hint=f"known: {', '.join(GPUS)} (e.g. 8xH100-80GB)")
            name, mem, tflops = match
            count = int(m.group(1) or 1)
            found += [Device(f"{name}#{i}", "cuda", int(mem * GiB), tflops, True) for i in range(count)]
        return Inventory(tuple(found), "assumed")
    if not devices:
        return detect_inventory()
    smi: list[tuple[str, int]] | None = None
    found = []
    for part in (p.strip() for p in devices.split(",")):
        if part == "cpu":
            found.append(_cpu())
        elif m := re.fullmatch(r"cuda(?::(\d+))?", part):
            smi = _smi() if smi is None else smi
            found.append(_cuda(int(m.group(1) or 0), smi))
        else:
            raise SelectkitError(f"unknown device {part!r} in --devices", hint="cpu, cuda, cuda:0,cuda:1")
    return Inventory(tuple(found), "given")


# ---------------------------------------------------------------- the arithmetic


def pass_flops(params: int, tokens: float, *, layers: int = 0, hidden: int = 0, seq: float = 0,
               backward: bool = False) -> float:
    """≈ 2·params·tokens for a forward (plus attention 4·layers·seq·hidden per token), x3 with backward.
    `params` are the parameters used in matmuls (not the input embedding table)."""
    forward = 2.0 * params * tokens + 4.0 * layers * seq * hidden * tokens
    return forward * (3 if backward else 1)


@dataclass(frozen=True)
class PassEstimate:
    """Cost of one model pass over `examples` rows split evenly over the devices (repeated
    `passes` times: checkpoints, epochs, readings)."""

    examples: int
    tokens: float
    flops: float
    weights_bytes: int
    batch_tokens: int
    batch_rows: int
    peak_bytes: int  # per device: weights + one batch's activations (+ CUDA overhead)
    device_memory: int | None
    devices: int
    device_label: str
    seconds: float | None
    fits: bool
    note: str = ""
    device_kind: str = "cpu"
    gpus: int = 0
    what: str = ""  # e.g. "forward", "forward + backward x 2 checkpoints"

    def as_json(self) -> dict[str, Any]:
        return {"examples": self.examples, "tokens": self.tokens, "flops": self.flops, "seconds": self.seconds,
                "peak_bytes": self.peak_bytes, "batch_tokens": self.batch_tokens, "devices": self.device_label,
                "fits": self.fits, "what": self.what}

    def scaled(self, times: float, what: str, work: str = "forward") -> PassEstimate:
        """`times` such passes of `work` (forward, gradients, training): seconds per FLOP differ by work
        (per-example gradients with their projections cost more than the FLOPs of a forward + backward say)."""
        seconds = None if self.seconds is None else self.seconds * times * OVERHEADS[work]
        return replace(self, flops=self.flops * times, seconds=seconds, what=what)

    @property
    def load_seconds(self) -> float:
        """The part of `seconds` that loads the model (once per step)."""
        return LOAD_SECONDS + self.weights_bytes / LOAD_BYTES_PER_S

    def without_load(self) -> PassEstimate:
        """The same pass with the model already loaded (a step that runs several passes loads once)."""
        return replace(self, seconds=None if self.seconds is None else self.seconds - self.load_seconds)

    def plus(self, other: PassEstimate, what: str) -> PassEstimate:
        """This pass, then `other` in the same step (FLOPs and seconds add up)."""
        seconds = None if self.seconds is None or other.seconds is None else self.seconds + other.seconds
        return replace(self, flops=self.flops + other.flops, seconds=seconds, what=what)

    def as_detail(self) -> dict[str, str]:
        """Human-readable lines for the plan."""
        mem = f"{_bytes(self.peak_bytes)} per device"
        if self.device_memory:
            mem += f" of {_bytes(self.device_memory)}"
        detail = {
            "work": self.what or "forward",
            "devices": self.device_label,
            "tokens": f"≈ {self.tokens:,.0f} ({self.examples:,} examples)",
            "flops": f"{self.flops:.2e}",
            "memory": f"{mem} (weights {_bytes(self.weights_bytes)})",
            "batch": f"{self.batch_tokens:,} padded tokens (≈ {self.batch_rows} rows)",
            "time": _duration(self.seconds) if self.seconds is not None else "unknown (device throughput unknown)",
        }
        if not self.fits or self.note:
            detail["warning"] = self.note or "does not fit in device memory"
        return detail


def estimate_model_pass(facts: Any, *, examples: int, mean_tokens: float, inventory: Inventory,
                        dtype: str = "float32", max_length: int = 512, backward: bool = False,
                        hidden_states: bool = False, logits: bool = True,
                        batch_tokens: int | None = None) -> PassEstimate:
    """FLOPs, memory, batch size and time of one pass; GPUs (else CPUs) share the pool evenly."""
    used = inventory.gpus or inventory.devices
    device = min(used, key=lambda d: d.memory_bytes or 0)
    n = len(used)
    tokens = examples * mean_tokens
    # the input embedding is a lookup, not a matmul; a tied LM head multiplies by it again
    lookup = facts.vocab * facts.hidden
    matmul_params = max(1, facts.params - lookup + (lookup if logits and facts.tied_embeddings else 0))
    flops = pass_flops(matmul_params, tokens * PADDING, layers=facts.layers, hidden=facts.hidden,
                       seq=mean_tokens, backward=backward)
    weights = facts.params * DTYPE_BYTES.get(dtype, 4)
    overhead = CUDA_OVERHEAD if device.kind == "cuda" else 0
    note = ""
    if batch_tokens is None:
        if device.kind == "cuda" and device.memory_bytes:
            fit = batch_tokens_that_fit(facts, int(device.memory_bytes * 0.9) - overhead, dtype, backward=backward,
                                        hidden_states=hidden_states, max_length=max_length, logits=logits)
            batch_tokens = min(fit, MAX_BATCH_TOKENS_CUDA)
        else:
            fit = batch_tokens_that_fit(facts, CPU_ACTIVATION_BUDGET, dtype, weights_loaded=True, backward=backward,
                                        hidden_states=hidden_states, max_length=max_length, logits=logits)
            batch_tokens = max(max_length, min(fit, MAX_BATCH_TOKENS_CPU))
    fits = batch_tokens >= min(max_length, max(1, math.ceil(mean_tokens)))
    if not fits:
        note = "the weights and one example do not fit in one device's memory (model parallelism is not supported)"
    per_token = activation_bytes_per_token(facts, dtype, backward=backward, hidden_states=hidden_states,
                                           max_length=max_length, logits=logits)
    peak = weights * (4 if backward else 1) + batch_tokens * per_token + overhead
    utilisation = GPU_MFU if device.kind == "cuda" else min(1.0, facts.hidden / CPU_FULL_SPEED_HIDDEN)
    throughput = sum((d.peak_tflops or 0) for d in used) * 1e12 * max(utilisation, 1e-3)
    seconds = flops / throughput if throughput > 0 and all(d.peak_tflops for d in used) else None
    if seconds is not None:
        seconds += LOAD_SECONDS + weights / LOAD_BYTES_PER_S
    label = str(Inventory(tuple(used), inventory.source))
    rows = max(1, int(batch_tokens // max(mean_tokens, 1)))
    return PassEstimate(examples, tokens, flops, weights, batch_tokens, rows, peak, device.memory_bytes, n, label,
                        seconds, fits, note, device.kind, len(inventory.gpus),
                        "forward + backward" if backward else "forward")


# ---------------------------------------------------------------- from a checked recipe


def sample_texts(source: Any, rows: int = SAMPLE_ROWS) -> list[str]:
    """The texts of the first `rows` rows of a source (a selectkit.data.pool.SourceSpec)."""
    from selectkit.data.pool import Table, read_shard

    table = Table(source)
    return read_shard(table, 0, min(rows, table.rows)).texts if table.rows else []


def token_lengths(texts: Sequence[str], spec: Any, base_dir: str | Path) -> list[int]:
    """Token counts with the model's own tokenizer.json (`tokenizers`, no torch) when present;
    bytes for byte-level tokenizers; else about 4 characters per token."""
    from selectkit.models.loader import byte_level_tokenizer, resolve_model_path

    folder = resolve_model_path(spec.path, base_dir)
    file = folder / "tokenizer.json" if isinstance(folder, Path) else None
    if file is not None and file.is_file():
        try:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(file))
            tok.no_padding()  # some folders pad every encoding to a fixed length
            tok.no_truncation()
            return [len(e.ids) for e in tok.encode_batch(list(texts))]
        except Exception:  # noqa: BLE001 - an unreadable tokenizer falls back to the heuristic
            pass
    if byte_level_tokenizer(spec, base_dir):
        return [len(t.encode("utf-8")) + 1 for t in texts]
    return [max(1, math.ceil(len(t) / 4)) + 1 for t in texts]


@lru_cache(maxsize=64)
def _mean_tokens(source: Any, spec_json: str, base_dir: str) -> float:
    from selectkit.recipe.spec import ModelSpec

    spec = ModelSpec.model_validate_json(spec_json)
    sample = token_lengths(sample_texts(source), spec, base_dir)
    limit = spec.max_length
    return sum(min(n, limit) for n in sample) / max(1, len(sample))


def model_pass(model: Any, data: str, ctx: Any, inventory: Inventory | None = None, *, backward: bool = False,
               hidden_states: bool = False, examples: int | None = None) -> PassEstimate | None:
    """Estimate one pass of `model` (a ModelRef) over `examples` rows of source `data` (a PlanContext
    says which sources and row counts there are) on `inventory` (default: the devices detected)."""
    from selectkit.models.loader import model_facts

    facts = model_facts(model.spec, model.base)
    if facts is None:
        return None
    inventory = inventory if isinstance(inventory, Inventory) else detect_inventory()
    max_length = min(model.spec.max_length, facts.max_positions or model.spec.max_length)
    source = ctx.sources[data]
    mean = _mean_tokens(source, model.spec.model_dump_json(), str(model.base))
    rows = examples if examples is not None else (ctx.rows.get(data) or _guess_rows(source.files[0], SAMPLE_ROWS))
    return estimate_model_pass(facts, examples=rows, mean_tokens=mean, inventory=inventory, dtype=model.spec.dtype,
                               max_length=max_length, backward=backward, hidden_states=hidden_states,
                               logits=model.spec.kind != "embedding")


def _guess_rows(path: Path, sampled: int) -> int:
    """Rows of a file whose reader cannot count them: size / mean line size of the sample."""
    if not Path(path).is_file() or sampled == 0:
        return sampled
    with open(path, "rb") as handle:
        head = handle.read(1 << 20)
    lines = max(1, head.count(b"\n"))
    return max(sampled, int(Path(path).stat().st_size / (len(head) / lines)))


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


def _duration(seconds: float) -> str:
    if seconds < 0.1:
        return "< 0.1 s"
    if seconds < 120:
        return f"≈ {seconds:.1f} s"
    if seconds < 7200:
        return f"≈ {seconds / 60:.1f} min"
    return f"≈ {seconds / 3600:.1f} h"
