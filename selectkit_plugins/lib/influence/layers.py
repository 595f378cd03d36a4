"""Which layers gradient work trains and differentiates, per architecture.

Per-example gradients by hooks cover three layer types (`layer_kind`): `nn.Linear`, transformers'
`Conv1D` (GPT-2; weight stored (d_in, d_out)) and `nn.Embedding`. `trainable_modules` picks the
layers a gradient pass trains (LoRA leaves, or every Linear/Conv1D); `default_lora_targets` names
the attention projections a LoRA wraps per `model_type`; `gradient_support` checks a config.json
without torch, so the planner can refuse a model at validate/plan time. Importing this module
never imports torch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from selectkit.plugin import ModelError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

# Attention projections a LoRA wraps (LESS wraps q, k, v, o on Llama). Names are peft targets: a
# module matches when its name equals one or ends with "." + one. GPT-2's "c_proj" is written
# "attn.c_proj" because the MLP has a c_proj too.
_QKVO = ("q_proj", "k_proj", "v_proj", "o_proj")
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    **{t: _QKVO for t in ("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma",
                          "gemma2", "gemma3_text", "olmo", "olmo2", "granite", "cohere", "starcoder2", "stablelm",
                          "smollm3", "deepseek_v2", "exaone4")},
    "phi3": ("qkv_proj", "o_proj"),
    "phi": ("q_proj", "k_proj", "v_proj", "dense"),
    "gpt2": ("c_attn", "attn.c_proj"),
    "gpt_bigcode": ("c_attn", "attn.c_proj"),
    "opt": ("q_proj", "k_proj", "v_proj", "out_proj"),
    "gptj": ("q_proj", "k_proj", "v_proj", "out_proj"),
    "gpt_neo": ("q_proj", "k_proj", "v_proj", "out_proj"),
    "gpt_neox": ("query_key_value", "dense"),
    "falcon": ("query_key_value", "dense"),
    "bloom": ("query_key_value", "dense"),
    **{t: ("query", "key", "value") for t in ("bert", "roberta", "xlm-roberta", "electra", "camembert")},
    "distilbert": ("q_lin", "k_lin", "v_lin", "out_lin"),
}
# Encoders: no causal-LM head, so the gradient scorers' loss (next-token cross-entropy) does not apply.
ENCODERS = frozenset({"bert", "roberta", "xlm-roberta", "electra", "camembert", "distilbert", "albert", "deberta",
                      "deberta-v2", "mpnet", "modernbert"})
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
LAYER_TYPES = "Linear, Conv1D (GPT-2) and Embedding"


class GradientSupportError(ModelError, ValueError):
    """The model has a layer or a layout per-example gradients cannot handle (also a ValueError,
    which is what these checks raised before)."""


# ---------------------------------------------------------------- torch-free checks


def default_lora_targets(model_type: str | None, model: Any = None) -> list[str]:
    """LoRA target modules for a `model_type` (config.json); for an unknown type, every Linear or
    Conv1D inside the attention blocks of `model` (when given), else a ModelError asking for
    `target_modules`."""
    if model_type in LORA_TARGETS:
        return list(LORA_TARGETS[model_type])
    found = attention_layers(model) if model is not None else []
    if found:
        return found
    where = "inside its attention blocks" if model is not None else "known for it"
    raise ModelError(f"no default LoRA target modules for model type {model_type!r} (no Linear or Conv1D layers "
                     f"{where})", hint="set lora.target_modules to the attention projections' names")


def gradient_support(config: dict, params: str = "auto") -> str | None:
    """None when the gradient scorers can take per-example gradients of the model config.json
    describes, else a message saying why not. Reads names only (no torch): a model type not
    listed here passes, and `trainable_modules` / the featurizer check its layers at load time."""
    model_type = config.get("model_type")
    if not model_type:
        return "config.json has no model_type: cannot tell which architecture this is"
    archs = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    causal = any(a.endswith(CAUSAL_SUFFIXES) for a in archs)
    if not causal and (config.get("is_encoder_decoder") or model_type in ENCODERS or archs):
        what = "an encoder-decoder" if config.get("is_encoder_decoder") else "not a causal LM"
        named = f" ({', '.join(archs)})" if archs else ""
        return (f"model type {model_type!r}{named} is {what}: the gradient scorers need a causal LM "
                f"(architectures ending in {' or '.join(CAUSAL_SUFFIXES)})")
    quant = config.get("quantization_config")
    if quant and params == "linear":
        method = quant.get("quant_method", "?") if isinstance(quant, dict) else "?"
        return (f"model type {model_type!r} has quantized weights ({method}): they cannot be differentiated; "
                "use a LoRA adapter (params: lora)")
    return None


def matches(name: str, targets: str | Sequence[str]) -> bool:
    """peft's rule: a string is a regex the whole name must match; a list matches a name equal to
    one of its items or ending with "." + one."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


# ---------------------------------------------------------------- layers (torch imported lazily)


def layer_kind(module: nn.Module) -> str | None:
    """"linear", "conv1d" or "embedding" for the layers per-example gradients by hooks support."""
    from torch import nn

    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if _is_conv1d(module):
        return "conv1d"
    return None


def _is_conv1d(module: nn.Module) -> bool:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is part of the models extra
        return False
    return isinstance(module, Conv1D)


def layer_dims(module: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of the layer as a linear map (inputs -> outputs); an embedding maps one-hot
    token ids (num_embeddings) to vectors (embedding_dim)."""
    kind = layer_kind(module)
    if kind == "linear":
        return module.in_features, module.out_features
    if kind == "conv1d":
        return module.nx, module.nf
    if kind == "embedding":
        return module.num_embeddings, module.embedding_dim
    raise GradientSupportError(f"{type(module).__name__} is not a layer per-example gradients support "
                               f"({LAYER_TYPES})")


def model_type(model: Any) -> str:
    """config.model_type of a (peft-wrapped) transformers model, else its class name."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None) if config is not None else None
    return str(kind) if kind else type(model).__name__


def attention_layers(model: nn.Module) -> list[str]:
    """peft target names of every Linear/Conv1D inside an attention block (a module whose class
    name contains "Attention"); a name that also occurs outside attention gets its parent's name."""
    inside: dict[str, str] = {}  # full module name -> peft target
    for name, module in model.named_modules():
        if "attention" not in type(module).__name__.lower():
            continue
        parent = name.rsplit(".", 1)[-1]
        for sub, child in module.named_modules():
            if not sub or layer_kind(child) not in ("linear", "conv1d") or "lora_" in sub:
                continue
            sub = sub.removesuffix(".base_layer")  # a peft-wrapped layer: target the wrapper
            full = f"{name}.{sub}" if name else sub
            inside.setdefault(full, f"{parent}.{sub}" if parent else sub)
    outside = {n.removesuffix(".base_layer").rsplit(".", 1)[-1] for n, m in model.named_modules()
               if layer_kind(m) in ("linear", "conv1d") and "lora_" not in n
               and n.removesuffix(".base_layer") not in inside}
    return sorted({full.rsplit(".", 1)[-1] if full.rsplit(".", 1)[-1] not in outside else short
                   for full, short in inside.items()})


def trainable_modules(model: nn.Module, mode: str, target_modules: str | Sequence[str] | None = None,
                      ) -> dict[str, nn.Module]:
    """The modules whose own parameters gradient work trains (pure: changes nothing).

    `lora`: the adapter's modules (peft's lora_A/lora_B leaves); `linear`: every Linear and
    Conv1D, except an output layer tied to the input embeddings. `target_modules` (peft's
    matching rule) restricts either to the named modules (for `lora`, the modules the adapter
    wraps); in `linear` mode it may also name Embedding layers, which are then trained."""
    if mode == "lora":
        found = {n: m for n, m in model.named_modules()
                 if _own_params(m) and any(part.startswith("lora_") for part in n.split("."))}
        if target_modules is not None:
            found = {n: m for n, m in found.items() if matches(_lora_host(n), target_modules)}
        if not found:
            raise GradientSupportError(f"{model_type(model)}: params 'lora' needs a LoRA adapter"
                                       + (f" on {target_modules}" if target_modules is not None else ""),
                                       hint="models.<name>.lora or warmup checkpoints")
        return found
    if mode != "linear":
        raise ValueError(f"unknown gradient params {mode!r} (auto, lora or linear)")
    tied = _tied_output(model)
    found = {}
    for name, module in model.named_modules():
        kind = layer_kind(module)
        if target_modules is None:
            if kind in ("linear", "conv1d") and module is not tied:
                found[name] = module
        elif name and matches(name, target_modules):
            if kind is None:
                if _own_params(module):
                    raise GradientSupportError(f"{model_type(model)}: target module {name} is a "
                                               f"{type(module).__name__}; per-example gradients by hooks support "
                                               f"{LAYER_TYPES} layers")
                continue
            found[name] = module
    if not found:
        what = f"matching {target_modules}" if target_modules is not None else f"of type {LAYER_TYPES}"
        raise GradientSupportError(f"{model_type(model)}: no layers {what} to take gradients of",
                                   hint="set target_modules, or use a LoRA adapter")
    return found


def set_trainable(model: nn.Module, modules: dict[str, nn.Module]) -> None:
    """Freeze every parameter, then unfreeze the modules' own parameters."""
    for p in model.parameters():
        p.requires_grad_(False)
    for module in modules.values():
        for p in module.parameters(recurse=False):
            p.requires_grad_(True)


def _own_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def _lora_host(name: str) -> str:
    """The module a LoRA leaf belongs to: "x.q_proj.lora_A.default" -> "x.q_proj"."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.startswith("lora_"):
            return ".".join(parts[:i])
    return name


def _tied_output(model: nn.Module) -> nn.Module | None:
    """The output embedding layer when its weight is the input embeddings' (GPT-2, OPT)."""
    get_out = getattr(model, "get_output_embeddings", None)
    get_in = getattr(model, "get_input_embeddings", None)
    if get_out is None or get_in is None:
        return None
    try:
        out_emb, in_emb = get_out(), get_in()
    except (AttributeError, NotImplementedError):
        return None
    if out_emb is not None and in_emb is not None and getattr(out_emb, "weight", None) is in_emb.weight:
        return out_emb
    return None
