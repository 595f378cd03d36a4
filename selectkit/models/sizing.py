"""What a model is and how many tokens a batch of it can take: ModelFacts read from config.json
(exact parameter counts from safetensors headers) and the activation arithmetic that sizes batches.
The planner's estimates and a loaded model's batch sizes share these, so the plan's batch is the
run's batch. Pure Python: never imports torch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selectkit.models.safetensors import safetensors_header

CPU_ACTIVATION_BUDGET = 256 << 20  # activations of one batch on CPU: larger batches spill the caches
MAX_BATCH_TOKENS_CPU = 16384
MAX_BATCH_TOKENS_CUDA = 1 << 17
CUDA_FREE_SHARE = 0.8  # of the device's free memory one batch may take
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ModelFacts:
    """What the planner needs to know about a model, read from config.json (and weight headers)."""

    architecture: str
    model_type: str
    params: int  # exact when safetensors headers are readable, else estimated from the config
    params_exact: bool
    layers: int
    hidden: int
    intermediate: int
    heads: int
    vocab: int
    max_positions: int | None
    tied_embeddings: bool


def _first(config: dict, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    return default


# the config.json keys facts_from_config reads as whole numbers (widths, counts, positions)
CONFIG_WHOLE = ("hidden_size", "n_embd", "d_model", "dim", "num_hidden_layers", "n_layer", "num_layers", "n_layers",
                "intermediate_size", "n_inner", "ffn_dim", "d_ff", "hidden_dim", "num_attention_heads", "n_head",
                "num_heads", "num_key_value_heads", "vocab_size", "max_position_embeddings", "n_positions",
                "max_seq_len", "seq_length")


def config_problem(config: dict) -> str | None:
    """Why a config.json's values cannot be used in estimates and batch sizing, if they cannot: each
    key facts_from_config reads (in the config or its text_config) is a whole number from 0 to 2**40,
    never a string, NaN (Python's json reads NaN and Infinity), an array or an object."""
    text = config.get("text_config")
    if text is not None and not isinstance(text, dict):
        return f"'text_config' is a {type(text).__name__}, not an object"
    for where, part in (("", config), ("text_config.", text or {})):
        for key in CONFIG_WHOLE:
            value = part.get(key)
            if value is None:
                continue
            whole = isinstance(value, int) and not isinstance(value, bool) or \
                isinstance(value, float) and math.isfinite(value) and value.is_integer()
            if not whole:
                return f"{where}{key!r} is {value!r:.40}, not a whole number"
            if not 0 <= value <= 1 << 40:
                return f"{where}{key!r} is {value!r}, outside 0 to 2**40"
    return None


def facts_from_config(config: dict, folder: Path | None = None) -> ModelFacts:
    """ModelFacts from a config dict (and exact parameter counts from safetensors headers)."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    hidden = int(_first(text, "hidden_size", "n_embd", "d_model", "dim", default=0))
    layers = int(_first(text, "num_hidden_layers", "n_layer", "num_layers", "n_layers", default=0))
    inter = int(_first(text, "intermediate_size", "n_inner", "ffn_dim", "d_ff", "hidden_dim", default=0) or 4 * hidden)
    heads = int(_first(text, "num_attention_heads", "n_head", "num_heads", default=max(1, hidden // 64)))
    kv_heads = int(_first(text, "num_key_value_heads", default=heads))
    vocab = int(_first(text, "vocab_size", default=0))
    max_pos = _first(text, "max_position_embeddings", "n_positions", "max_seq_len", "seq_length")
    tied = bool(config.get("tie_word_embeddings", True))
    exact = safetensors_params(folder) if folder is not None else None
    if exact is None:
        head_dim = hidden // max(heads, 1)
        attn = 2 * hidden * hidden + 2 * hidden * kv_heads * head_dim
        gated = str(text.get("hidden_act", "")).lower() in {"silu", "swiglu", "geglu"} or "llama" in str(
            config.get("model_type", ""))
        mlp = (3 if gated else 2) * hidden * inter
        estimate = layers * (attn + mlp + 4 * hidden) + vocab * hidden * (1 if tied else 2)
    archs = config.get("architectures") or [""]
    return ModelFacts(architecture=str(archs[0]), model_type=str(config.get("model_type", "")),
                      params=int(exact if exact is not None else estimate), params_exact=exact is not None,
                      layers=layers, hidden=hidden, intermediate=inter, heads=heads, vocab=vocab,
                      max_positions=int(max_pos) if max_pos else None, tied_embeddings=tied)


def safetensors_params(folder: Path) -> int | None:
    """Exact parameter count from the JSON headers of a folder's *.safetensors files (no torch)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    try:
        for file in files:
            total += sum(math.prod(t["shape"]) for t in safetensors_header(file).values())
    except (OSError, ValueError):
        return None
    return total


def activation_bytes_per_token(facts: Any, dtype: str, *, backward: bool = False, hidden_states: bool = False,
                               max_length: int = 512, logits: bool = True) -> int:
    """Peak activation memory per token of a batch: the live layer's tensors (or every layer's
    saved tensors with backward), float32 logits and their reduction (LM heads only), attention scores."""
    b = DTYPE_BYTES.get(dtype, 4)
    per_layer = (4 * facts.hidden + 2 * facts.intermediate) * b
    stored = facts.layers * 17 * facts.hidden * b if backward else per_layer  # Korthikanti et al. 34·h bytes/2
    head = facts.vocab * (b + 4 + 4) if logits else 0  # model-dtype logits, float32 upcast, one temporary
    states = (facts.layers + 1) * facts.hidden * b if hidden_states else 0
    scores = facts.heads * max_length * 4  # an unfused attention's score row per token
    return int(stored + head + states + scores)


def batch_tokens_that_fit(facts: Any, free_bytes: int, dtype: str, *, weights_loaded: bool = False,
                          backward: bool = False, hidden_states: bool = False, max_length: int = 512,
                          logits: bool = True) -> int:
    """Padded tokens per batch that fit in `free_bytes` (0 when even the weights do not fit)."""
    weights = 0 if weights_loaded else facts.params * DTYPE_BYTES.get(dtype, 4) * (4 if backward else 1)
    usable = free_bytes - weights
    per_token = activation_bytes_per_token(facts, dtype, backward=backward, hidden_states=hidden_states,
                                           max_length=max_length, logits=logits)
    return max(0, int(usable // max(per_token, 1)))


def activation_budget(device: str) -> tuple[int, int]:
    """(bytes, most padded tokens) one batch may take on `device`: 256 MiB of activations and 16k
    tokens on CPU, 80% of the free memory and 128k tokens on CUDA."""
    if str(device).startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free * CUDA_FREE_SHARE), MAX_BATCH_TOKENS_CUDA
    return CPU_ACTIVATION_BUDGET, MAX_BATCH_TOKENS_CPU
