"""Weight files read without torch: a safetensors file's JSON header, checked against the file,
so `validate` can refuse a truncated or garbage file that a download or a stranger left behind."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "I16": 2,
                "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}  # bytes per element; others unchecked
_MAX_SAFETENSORS_HEADER = 100 << 20  # the safetensors library's own cap


def safetensors_header(file: Path) -> dict[str, dict]:
    """The tensor entries of a safetensors file's JSON header, checked against the file without
    torch: the header length fits, the header is a JSON object, and every tensor's data_offsets lie
    inside the data and match its dtype and shape. Raises ValueError saying what is wrong."""
    size = file.stat().st_size
    with open(file, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError(f"only {size} bytes: shorter than the 8-byte header length (truncated?)")
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, _MAX_SAFETENSORS_HEADER):
            raise ValueError(f"header length {length:,} runs past the end of the file ({size:,} bytes; truncated?)"
                             if length > size - 8 else f"header length {length:,} is implausibly large")
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"the header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    data = size - 8 - length
    tensors = {k: t for k, t in header.items() if k != "__metadata__"}
    for name, t in tensors.items():
        ok = isinstance(t, dict) and isinstance(t.get("shape"), list) and isinstance(t.get("data_offsets"), list)
        offsets = t.get("data_offsets") if ok else None
        if not ok or len(offsets) != 2 or not all(isinstance(x, int) and x >= 0 for x in offsets + t["shape"]):
            raise ValueError(f"tensor {name!r}: malformed entry (needs dtype, shape and data_offsets)")
        begin, end = offsets
        if not begin <= end <= data:
            raise ValueError(f"tensor {name!r}: data_offsets [{begin}, {end}] run past the end of the data "
                             f"({data:,} bytes; truncated?)")
        width = _DTYPE_BYTES.get(str(t.get("dtype")))
        if width is not None and end - begin != width * math.prod(t["shape"]):
            raise ValueError(f"tensor {name!r}: {end - begin} bytes of data for a {t['dtype']} tensor of shape "
                             f"{t['shape']}")
    return tensors
