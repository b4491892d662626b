"""Decoded video frames for the learned stages: exact frame count, streamed in order at a
working resolution, so that nothing holds more than a few frames in RAM."""

from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import av
import cv2
import framepump
import numpy as np

from services.common.errors import InvalidInput, PreconditionFailed

# Gray level above which a pixel belongs to a light figure of the generated test videos.
LIGHT_THRESHOLD = 100
# Normalization of torchvision's ImageNet-trained backbones (RGB in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# A wanted frame more than this many frames ahead is reached by seeking to the keyframe before
# it rather than by decoding through the gap (framepump's measured crossover).
SEEK_MIN_GAP = 64


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


    def frames_at(self, indices: Sequence[int], shape: tuple[int, int]) -> Iterator[np.ndarray]:
        """The frames at `indices` (ascending, unique, in range), resized to `shape`, in order.

        Frames in between are decoded (the codec needs them) but never converted to RGB; a gap
        of more than SEEK_MIN_GAP frames is skipped by seeking to the keyframe before the next
        wanted frame. After a seek, frames are identified by their timestamps on the constant
        frame rate that ingest guarantees; a video whose timestamps do not follow it is
        decoded from the start, counting frames.
        """
        wanted = [int(i) for i in indices]
        if any(b <= a for a, b in zip(wanted, wanted[1:], strict=False)) or (
            wanted and not 0 <= wanted[0] <= wanted[-1] < self.num_frames
        ):
            raise ValueError(f"indices must be ascending, unique and below {self.num_frames}")
        with av.open(str(self.path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            decoder = _FrameDecoder(container, stream)
            for target in wanted:
                frame = decoder.advance_to(target)
                if frame is None:
                    raise PreconditionFailed(
                        f"the video ended before frame {target} (its index lists "
                        f"{self.num_frames} frames); re-run ingest to normalize it"
                    )
                yield resize(frame.to_ndarray(format="rgb24"), shape)


class _FrameDecoder:
    """Decodes one stream forward to wanted frame indices, seeking over long gaps.

    Timestamps identify frames once they are known to follow the constant frame rate (frame i
    at first_pts + i * step); until then, and for good when they do not, frames are counted.
    """

    def __init__(self, container, stream):
        self.container = container
        self.stream = stream
        rate, base = stream.average_rate, stream.time_base
        step = 1 / (Fraction(rate) * Fraction(base)) if rate and base else None
        self.step = int(step) if step is not None and step.denominator == 1 else None
        self.first_pts: int | None = None  # timestamp of frame 0, once decoded
        self.regular = self.step is not None  # every timestamp so far fits the rate
        self.position = 0  # index of the frame the decoder gives next
        self.frames = container.decode(stream)

    def _index(self, pts: int | None) -> int | None:
        if pts is None or self.first_pts is None or (pts - self.first_pts) % self.step:
            return None
        return (pts - self.first_pts) // self.step

    def _seek(self, target: int) -> None:
        self.container.seek(self.first_pts + target * self.step, stream=self.stream,
                            backward=True)
        self.frames = self.container.decode(self.stream)
        self.position = None  # known from the next frame's timestamp

    def advance_to(self, target: int):
        """The decoded frame `target` (None when the stream ends first)."""
        seekable = self.regular and self.first_pts is not None
        if seekable and target - self.position > SEEK_MIN_GAP:
            self._seek(target)
        for frame in self.frames:
            if self.position is None:  # right after a seek
                index = self._index(frame.pts)
                if index is None or index > target:
                    raise PreconditionFailed(
                        f"seeking to frame {target} landed on an unknown frame (timestamp "
                        f"{frame.pts}); re-run ingest to normalize the video"
                    )
            else:
                index = self.position
                if index == 0:
                    self.first_pts = frame.pts
                if self.regular and self._index(frame.pts) != index:
                    self.regular = False
            self.position = index + 1
            if index == target:
                return frame
        return None


def light_mask(image: np.ndarray) -> np.ndarray:
    """Bool [H, W]: pixels brighter than the dark background, specks opened away.

    The detector of the synthetic test backends (tracking and semseg), which find the light
    figures of the generated test videos (tests/support/videos.py) without any weights.
    """
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    mask = (gray > LIGHT_THRESHOLD).astype(np.uint8)
    return cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)).astype(bool)
