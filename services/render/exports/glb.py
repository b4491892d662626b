"""A minimal glTF 2.0 binary (.glb) writer: a JSON document and one binary buffer.

Every accessor gets its own tightly packed buffer view (no byteStride), 4-byte aligned, which
the validator accepts for vertex attributes, indices, inverse bind matrices and animation data
alike.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

ARRAY_BUFFER = 34962
ELEMENT_ARRAY_BUFFER = 34963
_COMPONENTS = {
    np.dtype(np.int8): 5120,
    np.dtype(np.uint8): 5121,
    np.dtype(np.int16): 5122,
    np.dtype(np.uint16): 5123,
    np.dtype(np.uint32): 5125,
    np.dtype(np.float32): 5126,
}
_TYPES = {1: "SCALAR", 2: "VEC2", 3: "VEC3", 4: "VEC4", 16: "MAT4"}
_MAGIC, _VERSION, _JSON, _BIN = 0x46546C67, 2, 0x4E4F534A, 0x004E4942


class GlbBuilder:
    """Collects glTF objects (lists under `doc`) and the binary data their accessors point to."""

    def __init__(self, asset: dict):
        self.doc: dict = {"asset": asset}
        self._chunks: list[bytes] = []
        self._size = 0

    def add(self, kind: str, obj: dict) -> int:
        """Append `obj` to the document's list `kind` ("nodes", "meshes", ...); its index."""
        items = self.doc.setdefault(kind, [])
        items.append(obj)
        return len(items) - 1

    def accessor(
        self,
        array: np.ndarray,
        *,
        target: int | None = None,
        bounds: bool = False,
        matrix: bool = False,
    ) -> int:
        """An accessor over `array` ((n,) or (n, k); (n, 4, 4) with matrix=True, column-major as
        glTF wants); `bounds` stores min/max (required for POSITION and animation inputs)."""
        array = np.ascontiguousarray(array)
        if matrix:
            flat = np.ascontiguousarray(array.transpose(0, 2, 1)).reshape(len(array), 16)
        else:
            flat = array.reshape(len(array), -1)
        view = {"buffer": 0, "byteOffset": self._size, "byteLength": flat.nbytes}
        if target is not None:
            view["target"] = target
        self._chunks.append(flat.tobytes())
        self._size += flat.nbytes
        pad = -self._size % 4
        self._chunks.append(b"\0" * pad)
        self._size += pad
        acc = {
            "bufferView": self.add("bufferViews", view),
            "componentType": _COMPONENTS[flat.dtype],
            "count": len(flat),
            "type": _TYPES[flat.shape[1]],
        }
        if bounds:
            acc["min"] = [v.item() for v in flat.min(0)]
            acc["max"] = [v.item() for v in flat.max(0)]
        return self.add("accessors", acc)

    def write(self, path: Path) -> None:
        """The .glb file: header, JSON chunk (space-padded), BIN chunk (zero-padded)."""
        binary = b"".join(self._chunks)
        doc = dict(self.doc)
        if binary:
            doc["buffers"] = [{"byteLength": len(binary)}]
        text = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
        text += b" " * (-len(text) % 4)
        chunks = struct.pack("<II", len(text), _JSON) + text
        if binary:
            chunks += struct.pack("<II", len(binary), _BIN) + binary
        with open(path, "wb") as f:
            f.write(struct.pack("<III", _MAGIC, _VERSION, 12 + len(chunks)))
            f.write(chunks)
