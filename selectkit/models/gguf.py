"""GGUF model files (llama.cpp's format): what the planner needs, read torch-free.

* `read_header(file)` parses the header (metadata and tensor table) with the standard library:
  string arrays such as the 49k-token vocabulary are skipped, not decoded, so a check takes
  milliseconds (the `gguf` package's reader decodes every entry: ~4 s for SmolLM2-135M).
  A model file is hostile input: every length, count and offset is checked against the file's
  size before it is used (strings, arrays, the tensor table, each tensor's data range, alignment,
  overlaps, element types), so a damaged or crafted file is a GGUFFormatError naming what is
  wrong, never a crash, a huge allocation or an endless loop in the code that reads it next.
* `config_of(header)` is the config.json the file stands for, limited to what selectkit reads
  (architecture, model type, layers, widths, heads, vocabulary, positions, tied embeddings),
  with the names transformers gives them when it loads the file. Every value it reads is checked
  for type and range first (a width is a whole number in range, never a string, NaN, infinity or
  an array; an epsilon is finite and positive): a bad value is a GGUFFormatError naming its key.

Loading a GGUF model (and its converted copy in the cache) is the loader's: selectkit.models.loader.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

MAGIC = b"GGUF"
# GGUF value types (gguf.GGUFValueType) -> struct format of one scalar
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_KEEP_ARRAY = 64  # string arrays up to this long are kept whole; longer ones by their length only
_KEEP_NUMBERS = 1024  # number arrays up to this long are kept whole (per-layer widths); longer: their length
_MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_KEY = 65_535  # longest metadata key or tensor name accepted (the format asks for < 65,535 bytes)
# ggml tensor types (gguf.GGMLQuantizationType) -> (elements per block, bytes per block), as in
# gguf.GGML_QUANT_SIZES (tests check the two agree): a tensor's data size follows from its shape.
TENSOR_TYPES: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 40),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
    16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110), 22: (256, 82),
    23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2),
    34: (256, 54), 35: (256, 66), 39: (32, 17), 40: (64, 36), 41: (128, 18)}
# GGUF `general.architecture` -> (transformers model_type, causal-LM class): the families
# transformers loads from GGUF that selectkit maps; others are refused at validate time.
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "llama": ("llama", "LlamaForCausalLM"),
    "mistral": ("mistral", "MistralForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen2moe": ("qwen2_moe", "Qwen2MoeForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
    "qwen3moe": ("qwen3_moe", "Qwen3MoeForCausalLM"),
    "phi3": ("phi3", "Phi3ForCausalLM"),
    "gemma2": ("gemma2", "Gemma2ForCausalLM"),
    "gemma3": ("gemma3_text", "Gemma3ForCausalLM"),
    "stablelm": ("stablelm", "StableLmForCausalLM"),
    "starcoder2": ("starcoder2", "Starcoder2ForCausalLM"),
    "falcon": ("falcon", "FalconForCausalLM"),
    "bloom": ("bloom", "BloomForCausalLM"),
    "gpt2": ("gpt2", "GPT2LMHeadModel"),
    "nemotron": ("nemotron", "NemotronForCausalLM"),
}


class GGUFFormatError(ValueError):
    """The file is not a GGUF file selectkit can read (bad magic, version or a truncated header)."""


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    type: int  # gguf.GGMLQuantizationType
    offset: int = 0  # of its data, from the start of the file
    nbytes: int = 0


@dataclass(frozen=True)
class Header:
    """A GGUF file's metadata (long arrays as `ArrayInfo`) and its tensor table."""

    version: int
    metadata: dict[str, Any]
    tensors: tuple[Tensor, ...] = field(repr=False)

    @property
    def parameters(self) -> int:
        total = 0
        for t in self.tensors:
            n = 1
            for d in t.shape:
                n *= d
            total += n
        return total


@dataclass(frozen=True)
class ArrayInfo:
    """A metadata array too long to keep (a vocabulary, merges): its element type and length."""

    type: int
    length: int


class _Cursor:
    def __init__(self, buffer: Any):
        self.buffer, self.pos = buffer, 0

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buffer):
            raise GGUFFormatError("the header ends before its last field (a truncated file?)")
        (value,) = struct.unpack_from(fmt, self.buffer, self.pos)
        self.pos += size
        return value

    def advance(self, n: int, what: str) -> None:
        if n > len(self.buffer) - self.pos:
            raise GGUFFormatError(f"{what} of {n:,} bytes at byte {self.pos:,} runs past the end of the "
                                  f"{len(self.buffer):,}-byte file (a truncated or damaged file?)")
        self.pos += n

    def string(self, limit: int | None = None, what: str = "a string") -> str:
        n = self.take("<Q")
        if limit is not None and n > limit:
            raise GGUFFormatError(f"{what} claims {n:,} bytes (at most {limit:,}): a damaged file?")
        start = self.pos
        self.advance(n, what)
        return bytes(self.buffer[start:self.pos]).decode("utf-8", errors="replace")

    def value(self, kind: int, key: str) -> Any:
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            return self.string(what=f"the string value of {key!r}")
        if kind == _ARRAY:
            item, length = self.take("<I"), self.take("<Q")
            if item == _ARRAY:  # arrays of arrays do not occur in model files (and would nest without bound)
                raise GGUFFormatError(f"{key!r} is an array of arrays, which model files do not hold")
            if item not in _SCALARS and item != _STRING:
                raise GGUFFormatError(f"{key!r}: unknown array element type {item}")
            keep = _KEEP_NUMBERS if item in _SCALARS else _KEEP_ARRAY
            if item in _SCALARS:  # its size is known before reading a single element
                self.advance(length * struct.calcsize(_SCALARS[item]) if length > keep else 0,
                             f"the array {key!r} ({length:,} elements)")
            elif length > len(self.buffer):  # each string takes at least its 8-byte length
                raise GGUFFormatError(f"the array {key!r} claims {length:,} strings, more than the file can hold")
            if length <= keep:
                return [self.value(item, key) for _ in range(length)]
            if item == _STRING:
                for _ in range(length):
                    self.advance(self.take("<Q"), f"a string of the array {key!r}")
            return ArrayInfo(item, length)
        raise GGUFFormatError(f"{key!r}: unknown metadata value type {kind}")


def read_header(file: str | Path) -> Header:
    """The header of a GGUF file (v2 or v3, little-endian), without reading the tensor data."""
    path = Path(file)
    stat = path.stat()
    return _read_header(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=16)
def _read_header(path: str, size: int, mtime_ns: int) -> Header:
    if size < 24:
        raise GGUFFormatError("too short to be a GGUF file")
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
        if buffer[:4] != MAGIC:
            raise GGUFFormatError("not a GGUF file (no GGUF magic)")
        cur = _Cursor(buffer)
        cur.pos = 4
        version = cur.take("<I")
        if version not in (2, 3):
            raise GGUFFormatError(f"GGUF version {version} (big-endian or too old/new; versions 2 and 3 are read)")
        tensor_count, kv_count = cur.take("<Q"), cur.take("<Q")
        # each metadata entry takes at least 12 bytes (key length, type), each tensor entry 24
        if kv_count * 12 > size or tensor_count * 24 > size:
            raise GGUFFormatError(f"the header claims {kv_count:,} metadata entries and {tensor_count:,} tensors, "
                                  f"more than a {size:,}-byte file can hold (a damaged file?)")
        metadata: dict[str, Any] = {}
        for _ in range(kv_count):
            key = cur.string(_MAX_KEY, "a metadata key")
            if key in metadata:
                raise GGUFFormatError(f"the metadata key {key!r} occurs twice")
            metadata[key] = cur.value(cur.take("<I"), key)
        alignment = metadata.get("general.alignment", 32)
        if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0 \
                or alignment & (alignment - 1):
            raise GGUFFormatError(f"general.alignment is {alignment!r}, not a power of two")
        entries = []
        for _ in range(tensor_count):
            name = cur.string(_MAX_KEY, "a tensor name")
            n_dims = cur.take("<I")
            if not 1 <= n_dims <= _MAX_DIMS:
                raise GGUFFormatError(f"tensor {name!r} has {n_dims} dimensions (1 to {_MAX_DIMS} are valid)")
            dims = tuple(cur.take("<Q") for _ in range(n_dims))
            kind, offset = cur.take("<I"), cur.take("<Q")
            entries.append((name, dims, kind, offset))
        data_start = -(-cur.pos // alignment) * alignment
    tensors, seen = [], set()
    for name, dims, kind, offset in entries:
        if name in seen:
            raise GGUFFormatError(f"the tensor {name!r} occurs twice")
        seen.add(name)
        if kind not in TENSOR_TYPES:
            raise GGUFFormatError(f"tensor {name!r} has unknown type {kind}")
        if any(d == 0 for d in dims):
            raise GGUFFormatError(f"tensor {name!r} has an empty dimension {dims}")
        block, block_bytes = TENSOR_TYPES[kind]
        elements = 1
        for d in dims:
            elements *= d
        if dims[0] % block:
            raise GGUFFormatError(f"tensor {name!r}: its rows of {dims[0]} elements are not whole blocks of {block}")
        nbytes = elements // block * block_bytes
        if offset % alignment:
            raise GGUFFormatError(f"tensor {name!r}: data offset {offset:,} is not a multiple of the alignment "
                                  f"{alignment}")
        if data_start + offset + nbytes > size:
            raise GGUFFormatError(f"tensor {name!r}: its data ({nbytes:,} bytes at byte {data_start + offset:,}) "
                                  f"runs past the end of the {size:,}-byte file (a truncated file?)")
        tensors.append(Tensor(name, tuple(reversed(dims)), kind, data_start + offset, nbytes))
    ordered = sorted(tensors, key=lambda t: t.offset)
    for a, b in zip(ordered, ordered[1:]):
        if a.offset + a.nbytes > b.offset:
            raise GGUFFormatError(f"the data of tensors {a.name!r} and {b.name!r} overlap")
    return Header(version, metadata, tuple(tensors))


# the metadata config_of reads (after "<arch>."): whole numbers with their range, and whether a per-layer
# array is allowed (its largest entry counts); floats with their open range
_WHOLE: dict[str, tuple[int, int, bool]] = {
    "block_count": (1, 1 << 14, False), "embedding_length": (1, 1 << 20, False),
    "feed_forward_length": (1, 1 << 22, True), "attention.head_count": (1, 1 << 14, True),
    "attention.head_count_kv": (1, 1 << 14, True), "context_length": (1, 1 << 40, False),
    "vocab_size": (1, 1 << 26, False)}
_REAL: dict[str, tuple[float, float]] = {"attention.layer_norm_rms_epsilon": (0.0, 1.0), "rope.freq_base": (0.0, 1e12)}


def _kind(value: Any) -> str:
    if isinstance(value, ArrayInfo) or isinstance(value, list):
        return "array"
    return {bool: "boolean", str: "string", float: "float", int: "integer"}.get(type(value), type(value).__name__)


def checked_value(meta: dict[str, Any], key: str) -> Any:
    """The metadata value at `key` (None when absent), checked for the type and range selectkit
    needs before it is used in estimates, batch sizing or loading; a GGUFFormatError naming the key."""
    value = meta.get(key)
    if value is None:
        return None
    name = key.split(".", 1)[1] if "." in key else key
    if name in _WHOLE:
        lo, hi, per_layer = _WHOLE[name]
        if isinstance(value, (list, ArrayInfo)):
            if not per_layer or isinstance(value, ArrayInfo) or not value:
                raise GGUFFormatError(f"{key!r} is an array, but it holds one number (a width or a count)"
                                      if not per_layer else f"{key!r} is an array that is empty or too long for "
                                      "one entry per layer")
            items = [_whole(key, v, 0, hi) for v in value]
            if max(items) < lo:
                raise GGUFFormatError(f"{key!r} holds no entry of {lo} or more")
            return max(items)
        return _whole(key, value, lo, hi)
    if name in _REAL:
        lo, hi = _REAL[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise GGUFFormatError(f"{key!r} is a {_kind(value)}, not a number")
        if not math.isfinite(value) or not lo < value < hi:
            raise GGUFFormatError(f"{key!r} is {value!r}, outside ({lo:g}, {hi:g})")
        return float(value)
    return value


def _whole(key: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GGUFFormatError(f"{key!r} is a {_kind(value)} ({value!r:.40}), not a whole number")
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        raise GGUFFormatError(f"{key!r} is {value!r}, not a whole number")
    if not lo <= value <= hi:
        raise GGUFFormatError(f"{key!r} is {int(value):,}, outside {lo:,} to {hi:,}")
    return int(value)


def config_of(header: Header) -> dict[str, Any]:
    """The config.json a GGUF file stands for, as far as selectkit reads one (names as transformers
    gives them). Raises GGUFFormatError for an architecture not in ARCHITECTURES."""
    meta = header.metadata
    arch = str(meta.get("general.architecture", ""))
    name = str(meta.get("general.name", "")).lower()
    if arch not in ARCHITECTURES:
        raise GGUFFormatError(f"GGUF architecture {arch or '(none)'!r} is not one selectkit maps to transformers "
                              f"(known: {', '.join(sorted(ARCHITECTURES))})")
    model_type, cls = ARCHITECTURES["mistral" if arch == "llama" and "mistral" in name else arch]

    def get(key: str) -> Any:
        return checked_value(meta, f"{arch}.{key}")

    vocab = get("vocab_size")
    tokens = meta.get("tokenizer.ggml.tokens")
    if vocab is None and tokens is not None:
        vocab = tokens.length if isinstance(tokens, ArrayInfo) else len(tokens) if isinstance(tokens, list) else None
        if vocab is None:
            raise GGUFFormatError(f"'tokenizer.ggml.tokens' is a {_kind(tokens)}, not an array of tokens")
    tokenizer = meta.get("tokenizer.ggml.model")
    if tokenizer is not None and not isinstance(tokenizer, str):
        raise GGUFFormatError(f"'tokenizer.ggml.model' is a {_kind(tokenizer)}, not a string")
    names = {t.name for t in header.tensors}
    config = {
        "architectures": [cls],
        "model_type": model_type,
        "num_hidden_layers": get("block_count"),
        "hidden_size": get("embedding_length"),
        "intermediate_size": get("feed_forward_length"),
        "num_attention_heads": get("attention.head_count"),
        "num_key_value_heads": get("attention.head_count_kv"),
        "max_position_embeddings": get("context_length"),
        "vocab_size": vocab,
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon"),
        "rope_theta": get("rope.freq_base"),
        "tie_word_embeddings": "output.weight" not in names or arch in ("falcon", "bloom"),
        "hidden_act": "silu" if model_type in ("llama", "mistral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe",
                                                "phi3", "stablelm") else None,
        "gguf_tokenizer": tokenizer,  # selectkit's own note: the tokenizer it embeds
    }
    return {k: v for k, v in config.items() if v is not None}
