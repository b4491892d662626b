"""Decoded video frames for the learned stages: exact frame count, streamed in order at a
working resolution, so that nothing holds more than a few frames in RAM."""

from collections.abc import Iterator
from pathlib import Path

import cv2
import framepump
import numpy as np

from services.common.errors import InvalidInput, PreconditionFailed

# Gray level above which a pixel belongs to a light figure of the generated test videos.
LIGHT_THRESHOLD = 100
# Normalization of torchvision's ImageNet-trained backbones (RGB in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


def light_mask(image: np.ndarray) -> np.ndarray:
    """Bool [H, W]: pixels brighter than the dark background, specks opened away.

    The detector of the synthetic test backends (tracking and semseg), which find the light
    figures of the generated test videos (tests/support/videos.py) without any weights.
    """
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    mask = (gray > LIGHT_THRESHOLD).astype(np.uint8)
    return cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)).astype(bool)
