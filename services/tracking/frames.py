"""An on-disk spool of working-resolution frames, readable in any order (permuted passes)."""

import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np


class FrameSpool:
    """Frames stored as JPEG (quality 95) in one temporary file, readable in any order.

    Used only for the permuted burn-in passes, which need random access; about 30-60 kB per
    working-resolution frame on disk instead of 0.5 MB in RAM.
    """

    def __init__(self, folder: Path, frames: Iterator[np.ndarray], quality: int = 95):
        self._file = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115 - lives as long as self
        self._offsets = [0]
        params = [cv2.IMWRITE_JPEG_QUALITY, quality]
        for frame in frames:
            ok, data = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), params)
            if not ok:
                raise RuntimeError("JPEG encoding of a frame failed")
            self._file.write(data.tobytes())
            self._offsets.append(self._offsets[-1] + len(data))

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> np.ndarray:
        start, end = self._offsets[index], self._offsets[index + 1]
        self._file.seek(start)
        data = np.frombuffer(self._file.read(end - start), np.uint8)
        return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        self._file.close()
