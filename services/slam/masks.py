"""The pixels SLAM must not use: the union of the semseg person mask and every track's mask,
at the SLAM working resolution, dilated so that no feature descriptor or flow window reaches
into a person.

Frames that semseg did not segment (its header's `meta.computed_frames`; absent = all) take
the semseg mask of the nearest segmented frame, dilated further by `gap_dilation` per frame
of distance, united with the frame's own track masks.
"""

import bisect

import cv2
import numpy as np

from services.common.errors import InvalidInput
from services.common.formats.masks import TrackMasks


class SlamMasks:
    """Bool person masks per frame at `shape` (height, width)."""

    def __init__(
        self,
        semseg: TrackMasks | None,
        tracks: TrackMasks | None,
        shape: tuple[int, int],
        dilation: float = 0.012,
        gap_dilation: float = 0.004,
    ):
        self.semseg = semseg
        self.tracks = tracks
        self.shape = shape
        self._dilation_px = max(1, int(round(dilation * shape[1])))
        self._gap_px = gap_dilation * shape[1]
        computed = (semseg.meta.get("computed_frames") if semseg else None)
        self.segmented = (
            sorted(int(f) for f in computed) if computed is not None
            else list(range(semseg.num_frames)) if semseg else []
        )  # fmt: skip

    def mask(self, frame: int) -> np.ndarray:
        """True where frame `frame` shows a person (or close to one)."""
        out = np.zeros(self.shape, bool)
        extra = 0
        if self.semseg is not None and self.segmented:
            nearest = self._nearest_segmented(frame)
            extra = int(np.ceil(abs(nearest - frame) * self._gap_px))
            for m in self.semseg.frame(nearest).values():
                out |= _resized(m.to_array(), self.shape)
            if extra:
                out = _dilate(out, extra)
        if self.tracks is not None:
            for m in self.tracks.frame(frame).values():
                out |= _resized(m.to_array(), self.shape)
        return _dilate(out, self._dilation_px)

    def _nearest_segmented(self, frame: int) -> int:
        i = bisect.bisect_left(self.segmented, frame)
        options = self.segmented[max(i - 1, 0): i + 1]
        return min(options, key=lambda f: abs(f - frame))


def check_masks_match(masks: TrackMasks, name: str, num_frames: int, width: int, height: int):
    """InvalidInput unless `masks` were made for a video of this frame count and size."""
    if masks.num_frames != num_frames:
        raise InvalidInput(
            f"{name}: {masks.num_frames} frames of masks for a video of {num_frames} frames; "
            "give the masks made from this video"
        )
    size = (masks.meta.get("video_width"), masks.meta.get("video_height"))
    if None not in size and tuple(size) != (width, height):
        raise InvalidInput(
            f"{name}: made for a {size[0]}x{size[1]} video, this one is {width}x{height}; "
            "give the masks made from this video"
        )
    if abs(masks.width / masks.height - width / height) > 0.02:
        raise InvalidInput(
            f"{name}: masks of {masks.width}x{masks.height} do not have the video's aspect ratio"
        )


def _resized(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape == shape:
        return mask.astype(bool)
    return cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]),
                      interpolation=cv2.INTER_NEAREST).astype(bool)  # fmt: skip


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)
