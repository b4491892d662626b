"""Video frames at the working resolution: streamed in order, or from an on-disk spool in any
order. Nothing holds more than a few frames in RAM, whatever the video's length."""

import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import framepump
import numpy as np

from services.common.errors import InvalidInput, PreconditionFailed


def working_shape(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) with the short side scaled to `short_side`, aspect ratio kept."""
    if width > height:
        return short_side, int(round(width * short_side / height))
    return int(round(height * short_side / width)), short_side


def resize(frame: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resizes an RGB frame to (height, width) (area interpolation when shrinking)."""
    if frame.shape[:2] == shape:
        return frame
    shrink = shape[0] < frame.shape[0]
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(frame, (shape[1], shape[0]), interpolation=interpolation)


class Video:
    """A decoded video: exact frame count, fps and size, sequential or single-frame access."""

    def __init__(self, path: Path):
        try:
            self._frames = framepump.VideoFrames(str(path))
            self.num_frames = len(self._frames)
        except (framepump.FramePumpError, OSError) as e:
            raise InvalidInput(f"the video cannot be decoded: {e}") from None
        if self.num_frames == 0:
            raise InvalidInput("the video has no frames")
        self.path = Path(path)
        self.fps = float(self._frames.fps)
        self.height, self.width = self._frames.imshape

    def frame(self, index: int) -> np.ndarray:
        """One full-resolution RGB frame."""
        return self._frames[index]

    def frames(self, shape: tuple[int, int]) -> Iterator[np.ndarray]:
        """All frames in order, resized to `shape`; checks that the count matches."""
        count = 0
        for frame in self._frames:
            count += 1
            yield resize(frame, shape)
        if count != self.num_frames:
            raise PreconditionFailed(
                f"the video decoded to {count} frames but its index lists {self.num_frames}; "
                "re-run ingest to normalize it"
            )


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
