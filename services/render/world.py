"""The world around the people (mm, world frame of the cameras): the floor under their soles,
a grid on it sized to what happens there, the recording camera's path and its frustum, and the
top-view axes (right and forward of the first recording camera, on the floor)."""

from dataclasses import dataclass

import numpy as np

from services.common.formats.cameras import CameraTrack

GRID_STEP_MM = 1000.0
GRID_MARGIN_MM = 2000.0
MIN_GRID_HALF_MM = 4000.0
MAX_GRID_HALF_MM = 50_000.0


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


@dataclass(frozen=True)
class Floor:
    """The plane {X : <X, up> = height_mm} with an in-plane basis; `fitted` is False when the
    fitting stage found no ground and the floor was placed under the lowest feet."""

    up: np.ndarray
    height_mm: float
    right: np.ndarray  # in-plane: the first recording camera's right
    forward: np.ndarray  # in-plane: the first recording camera's viewing direction
    origin: np.ndarray  # the first recording camera's position dropped onto the floor
    fitted: bool

    def to_plane(self, points_mm: np.ndarray) -> np.ndarray:
        """(..., 3) world points -> (..., 2) floor coordinates in metres (right, forward)."""
        rel = points_mm - self.origin
        return np.stack([rel @ self.right, rel @ self.forward], axis=-1) / 1000.0

    def from_plane(self, plane_m: np.ndarray) -> np.ndarray:
        """(..., 2) floor coordinates in metres -> (..., 3) world points on the floor (mm)."""
        plane_mm = np.asarray(plane_m, np.float64) * 1000.0
        return self.origin + plane_mm[..., :1] * self.right + plane_mm[..., 1:] * self.forward


def make_floor(
    ground: dict, cameras: CameraTrack, feet_mm: np.ndarray, sole_depth_mm: float
) -> Floor:
    """The floor from the fitting stage's ground document, lowered from the foot joints to the
    soles; without a fitted ground, under the lowest 5% of the foot joints along world up."""
    up = _unit(np.asarray(ground.get("world_up") or cameras.world_up, np.float64))
    fitted = bool(ground.get("found")) and ground.get("height_mm") is not None
    if fitted:
        joint_height = float(ground["height_mm"])
    else:
        heights = feet_mm.reshape(-1, 3) @ up
        heights = heights[np.isfinite(heights)]
        joint_height = (
            float(np.percentile(heights, 5))
            if len(heights)
            else float(cameras.optical_center[0] @ up - 1600.0)
        )
    height = joint_height - sole_depth_mm
    forward = cameras.rotation[0, 2] - (cameras.rotation[0, 2] @ up) * up
    if np.linalg.norm(forward) < 1e-6:  # looking straight down or up
        forward = cameras.rotation[0, 1] - (cameras.rotation[0, 1] @ up) * up
    forward = _unit(forward)
    right = np.cross(forward, up)
    c0 = cameras.optical_center[0]
    origin = c0 - (c0 @ up - height) * up
    return Floor(up, height, right, forward, origin, fitted)


@dataclass(frozen=True)
class Grid:
    """A square grid on the floor: centre and half-size in floor metres."""

    centre_m: np.ndarray
    half_m: float
    step_m: float

    def lines_mm(self, floor: Floor) -> np.ndarray:
        """(2L, 3) endpoints of the grid lines (GL_LINES), world mm."""
        ticks = np.arange(-self.half_m, self.half_m + 1e-9, self.step_m)
        ends = []
        for t in ticks:
            ends += [(t, -self.half_m), (t, self.half_m), (-self.half_m, t), (self.half_m, t)]
        return floor.from_plane(self.centre_m + np.asarray(ends))

    def quad_mm(self, floor: Floor) -> np.ndarray:
        """(6, 3) two triangles covering the grid, world mm."""
        h = self.half_m
        corners = np.array([(-h, -h), (h, -h), (h, h), (-h, -h), (h, h), (-h, h)])
        return floor.from_plane(self.centre_m + corners)


def make_grid(floor: Floor, points_mm: np.ndarray) -> Grid:
    """A grid centred on the people (or on everything when nobody is valid) that reaches
    GRID_MARGIN_MM beyond every point, in whole GRID_STEP_MM steps."""
    flat = floor.to_plane(points_mm.reshape(-1, 3))
    flat = flat[np.isfinite(flat).all(1)]
    if not len(flat):
        flat = np.zeros((1, 2))
    step = GRID_STEP_MM / 1000.0
    centre = np.round(np.median(flat, axis=0) / step) * step
    reach = float(np.abs(flat - centre).max()) + GRID_MARGIN_MM / 1000.0
    half = np.clip(np.ceil(reach / step) * step, MIN_GRID_HALF_MM / 1000, MAX_GRID_HALF_MM / 1000)
    return Grid(centre, float(half), step)


def frustum_lines_mm(cameras: CameraTrack, frame: int, depth_mm: float) -> np.ndarray:
    """(16, 3) GL_LINES endpoints: the optical centre to the image corners at `depth_mm`, the
    image rectangle there, world mm (distortion ignored)."""
    w, h = cameras.image_size
    corners_px = np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]])
    rays = np.linalg.solve(
        cameras.intrinsics[frame], np.concatenate([corners_px, np.ones((4, 1))], 1).T
    ).T
    corners = cameras.camera_to_world(rays / rays[:, 2:] * depth_mm, frame)
    centre = cameras.optical_center[frame]
    segments = [(centre, c) for c in corners] + [
        (corners[i], corners[(i + 1) % 4]) for i in range(4)
    ]
    return np.asarray([p for segment in segments for p in segment])
