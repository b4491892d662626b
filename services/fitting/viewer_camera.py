"""The viewer ("bird view") camera path: one camera per output frame.

It starts exactly at the original camera, and from `start_s` on eases (smootherstep over
`ease_s`) into a smooth side view: seeded 2 m left of, 0.8 m above and 1.8 m in front of the
original camera (upright), aimed at the people's centre, pulled back along its axis until the
people fill about `fill` of the frame, then smoothed with a ~2.4 s trapezoid kernel. A final
zoom correction, itself smoothed so that it never falls short of what any frame needs, keeps
every visible person's centre inside the central `margin` of the frame once eased in.
"""

from __future__ import annotations

import numpy as np
from deltacamera.trajectory import moving_average_1d, smootherstep, trapezoidal_kernel
from scipy.ndimage import minimum_filter1d, uniform_filter1d
from scipy.spatial.transform import Rotation

from services.common.formats.cameras import CameraTrack

SEED_OFFSET_MM = np.array([-2000.0, -800.0, 1800.0])  # in the upright original camera frame
BODY_RADIUS_MM = 400.0


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def look_at(position: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """World->camera rotations (T, 3, 3) looking from `position` at `target` with zero roll
    (x right, y down, z forward)."""
    z = _unit(target - position)
    x = _unit(np.cross(z, up))
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)


def _slerp(ra: np.ndarray, rb: np.ndarray, w: np.ndarray) -> np.ndarray:
    rel = Rotation.from_matrix(rb @ np.swapaxes(ra, 1, 2)).as_rotvec()
    return Rotation.from_rotvec(rel * w[:, None]).as_matrix() @ ra


def _fill_time(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    t = np.arange(len(values))
    return np.stack(
        [np.interp(t, t[known], values[known, c]) for c in range(values.shape[1])], axis=1
    )


def viewer_trajectory(
    display: CameraTrack,
    people_mm: np.ndarray,
    fps: float,
    up: np.ndarray,
    start_s: float = 4.0,
    ease_s: float = 4.0,
    fill: float = 0.6,
    margin: float = 0.8,
) -> CameraTrack:
    """display: the original cameras at the output frame rate; people_mm: (T, K, 3) centres of
    the people per frame (NaN where a person is not visible); up: world up (unit)."""
    n = len(display)
    width, height = display.image_size
    up = np.asarray(up, np.float64)
    visible = np.all(np.isfinite(people_mm), axis=-1)
    anyone = visible.any(axis=1)
    if not anyone.any():
        return display
    scale = 1 if fps < 40 else 2
    kernel = trapezoidal_kernel(round(15 * scale), 1 + 2 * round(20 * scale))

    count = np.maximum(visible.sum(1), 1)[:, None]
    centre = np.where(visible[..., None], people_mm, 0).sum(1) / count
    centre = _fill_time(centre, anyone)

    rot, pos = display.rotation, display.optical_center
    forward = rot[:, 2]
    ahead = _unit(forward - (forward @ up)[:, None] * up)
    down = np.broadcast_to(-up, ahead.shape)
    right = np.cross(down, ahead)
    seed = pos + SEED_OFFSET_MM @ np.stack([right, down, ahead], axis=1)
    axis = _unit(centre - seed)

    focal = float(np.median(display.intrinsics[:, [0, 1], [0, 1]]))
    half = fill * min(width, height) / 2
    rel = people_mm - centre[:, None]
    depth = np.einsum("tkc,tc->tk", rel, axis)
    lateral = np.linalg.norm(rel - depth[..., None] * axis[:, None], axis=-1) + BODY_RADIUS_MM
    needed = np.where(visible, depth + focal * lateral / half, -np.inf).max(axis=1)
    distance = np.interp(np.arange(n), np.flatnonzero(anyone), needed[anyone])
    distance = np.clip(distance, 2000.0, 15000.0)
    view_pos = moving_average_1d(centre - distance[:, None] * axis, kernel)
    view_target = moving_average_1d(centre, kernel)
    view_rot = look_at(view_pos, view_target, up)

    smooth_pos = moving_average_1d(pos, kernel)
    smooth_rot = look_at(smooth_pos, moving_average_1d(pos + 1000 * forward, kernel), up)

    w = smootherstep((np.arange(n) - start_s * fps) / max(ease_s * fps, 1))
    base_rot = _slerp(rot, smooth_rot, w)
    base_pos = pos + w[:, None] * (smooth_pos - pos)
    out_rot = _slerp(base_rot, view_rot, w)
    out_pos = base_pos + w[:, None] * (view_pos - base_pos)

    k_disp = display.intrinsics
    k_out = k_disp.copy()
    for i in (0, 1):
        k_out[:, i, i] = np.exp((1 - w) * np.log(k_disp[:, i, i]) + w * np.log(focal))
    centre_px = np.array([(width - 1) / 2, (height - 1) / 2])
    k_out[:, :2, 2] = (1 - w)[:, None] * k_disp[:, :2, 2] + w[:, None] * centre_px

    # Zoom out where a visible centre would leave the central `margin` of the frame.
    cam = np.einsum("tij,tkj->tki", out_rot, people_mm - out_pos[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        offset_x = np.abs(cam[..., 0] / cam[..., 2]) * k_out[:, None, 0, 0]
        offset_y = np.abs(cam[..., 1] / cam[..., 2]) * k_out[:, None, 1, 1]
        limit = np.minimum(
            0.95 * margin * width / 2 / offset_x, 0.95 * margin * height / 2 / offset_y
        )
    limit = np.where(visible & (cam[..., 2] > 0) & (w[:, None] > 0), limit, np.inf)
    zoom = np.minimum(1.0, limit.min(axis=1))
    # Min-filter then average over the same width: never above what any frame needs.
    width_k = len(kernel)
    zoom = minimum_filter1d(zoom, width_k, mode="nearest")
    zoom = uniform_filter1d(zoom, width_k, mode="nearest")
    zoom = 1 - w * (1 - zoom)
    k_out[:, 0, 0] *= zoom
    k_out[:, 1, 1] *= zoom

    return CameraTrack(
        intrinsics=k_out,
        rotation=out_rot,
        optical_center=out_pos,
        distortion=(1 - w)[:, None] * display.distortion,
        world_up=up,
        image_size=display.image_size,
    )
