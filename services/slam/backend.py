"""What every SLAM backend gets and gives back: frames at the working resolution with their
person masks, a camera prior, and a trajectory (poses up to scale) with the facts for the report."""

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from services.common.frames import Video
from services.slam.masks import SlamMasks

Frames = Iterator[tuple[int, np.ndarray, np.ndarray]]
#: The end of every FAILED_PRECONDITION message of a backend: what the user can do.
ADVICE = "if the camera does not move, pass --static-camera; a known field of view (--fov) helps"


def slam_shape(height: int, width: int, target_pixels: int, multiple: int = 8) -> tuple[int, int]:
    """Working (height, width): about `target_pixels` pixels, never larger than the video,
    each side floored to a multiple of `multiple` (DROID needs 8; COLMAP takes any size)."""
    scale = min(1.0, float(np.sqrt(target_pixels / (height * width))))
    return (max(multiple, int(height * scale) // multiple * multiple),
            max(multiple, int(width * scale) // multiple * multiple))  # fmt: skip


@dataclass
class FrameSource:
    """The video at the working resolution; every `stream` call is a fresh decoding pass, so
    nothing holds more than one frame."""

    video: Video
    masks: SlamMasks
    shape: tuple[int, int]
    candidates: list[int]  # the frames a keyframe may be chosen from (semseg's frames)

    @property
    def num_frames(self) -> int:
        return self.video.num_frames

    def stream(self, wanted: set[int] | None = None) -> Frames:
        """(frame index, RGB uint8 at `shape`, bool person mask) for `wanted` (None: all)."""
        last = max(wanted) if wanted else self.num_frames - 1
        for index, frame in enumerate(self.video.frames(self.shape)):
            if index > last:
                break
            if wanted is None or index in wanted:
                yield index, frame, self.masks.mask(index)


@dataclass(frozen=True)
class CameraPrior:
    """The focal length to start from, in pixels at the working resolution."""

    focal: float
    known: bool  # True: given by the caller (FOV or K), used as is


@dataclass
class DepthSamples:
    """SLAM depths (SLAM units) at pixels (x, y at the working resolution) of one keyframe."""

    frame: int
    xy: np.ndarray  # (N, 2)
    depth: np.ndarray  # (N,)


@dataclass
class Trajectory:
    """Per-frame poses of every frame in the backend's world (arbitrary scale)."""

    rotations: np.ndarray  # (T, 3, 3) world->camera
    centres: np.ndarray  # (T, 3)
    keyframes: list[int]
    focal: float  # pixels at the working resolution
    focal_source: str  # "given", "refined by bundle adjustment", "fov search", ...
    static: bool
    reprojection_error_px: float = float("nan")
    depth_samples: list[DepthSamples] = field(default_factory=list)
    details: dict = field(default_factory=dict)


class SlamBackend(Protocol):
    """A camera tracker."""

    name: str
    size_multiple: int  # the working resolution's sides are multiples of this

    def estimate(self, source: FrameSource, prior: CameraPrior, run) -> Trajectory:
        """Poses of every frame of `source`; raises PreconditionFailed when it cannot."""


def static_trajectory(num_frames: int, focal: float, source: str, details: dict) -> Trajectory:
    """Every frame at the origin looking along +z."""
    return Trajectory(
        rotations=np.repeat(np.eye(3)[None], num_frames, 0),
        centres=np.zeros((num_frames, 3)),
        keyframes=[0],
        focal=focal,
        focal_source=source,
        static=True,
        details=details,
    )
