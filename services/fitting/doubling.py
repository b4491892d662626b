"""Frame doubling (fps factor 2) of smoothed points and of cameras.

The layout is the one of the interpolated video (`services.common.frame_doubling`): output
frame 2t is input frame t; output frame 2t+1 lies between input frames t and t+1. It is their
mean where both are valid and in the same segment, and invalid otherwise (the reference
averaged a valid frame with a missing one into a half-weight frame). The last output frame
repeats the last input frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.common.formats.cameras import CameraTrack
from services.common.frame_doubling import interleave


def double_frames(
    values: np.ndarray,
    valid: np.ndarray,
    segments: Sequence[tuple[int, int]],
    repeat_last: bool = True,
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """(T, ...) values -> (2T, ...): interleaved middle frames, their validity and the
    segments in output frames. Invalid frames come back NaN."""
    t_len = len(values)
    values = np.where(_expand(valid, values), values, np.nan)
    segment_id = np.full(t_len, -1)
    for k, (start, end) in enumerate(segments):
        segment_id[start:end] = k
    mid_ok = valid[:-1] & valid[1:] & (segment_id[:-1] == segment_id[1:]) & (segment_id[:-1] >= 0)
    mid = np.where(_expand(mid_ok, values[:-1]), 0.5 * (values[:-1] + values[1:]), np.nan)
    out = interleave(values, mid.astype(values.dtype))
    out_valid = interleave(valid, mid_ok)
    if not repeat_last and t_len:
        out[-1] = np.nan
        out_valid[-1] = False
    out_segments = []
    for start, end in segments:
        stop = 2 * end if (end == t_len and repeat_last) else 2 * end - 1
        out_segments.append((2 * start, stop))
    return out, out_valid, out_segments


def _expand(mask: np.ndarray, like: np.ndarray) -> np.ndarray:
    return mask.reshape(mask.shape + (1,) * (like.ndim - 1))


def _project_to_so3(m: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(u @ vt))
    u[..., :, -1] *= d[..., None]
    return u @ vt


def double_cameras(cameras: CameraTrack) -> CameraTrack:
    """Cameras at twice the frame rate: focal lengths and principal point log-linear,
    position and distortion linear, rotation the projection of the mean matrix onto SO(3);
    the last camera repeated."""

    k = cameras.intrinsics
    k_mid = 0.5 * (k[:-1] + k[1:])
    for r, c in ((0, 0), (1, 1), (0, 2), (1, 2)):
        k_mid[:, r, c] = np.sqrt(np.abs(k[:-1, r, c] * k[1:, r, c])) * np.sign(k[1:, r, c])
    return CameraTrack(
        intrinsics=interleave(k, k_mid),
        rotation=interleave(
            cameras.rotation, _project_to_so3(cameras.rotation[:-1] + cameras.rotation[1:])
        ),
        optical_center=interleave(
            cameras.optical_center,
            0.5 * (cameras.optical_center[:-1] + cameras.optical_center[1:]),
        ),
        distortion=interleave(
            cameras.distortion, 0.5 * (cameras.distortion[:-1] + cameras.distortion[1:])
        ),
        world_up=cameras.world_up,
        image_size=cameras.image_size,
    )
