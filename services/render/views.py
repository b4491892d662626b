"""The two views of a render, frame by frame, from the meshes uploaded to the scene.

Camera view: the meshes through the recording camera, alpha-blended over the video frame
(premultiplied colour and coverage from the supersampled target, times the opacity).
World view: the viewer camera over a plain background with the floor, its grid, the recording
camera's path (travelled part dark) and frustum, and the meshes.
"""

import cv2
import moderngl
import numpy as np

from services.common.formats.cameras import CameraTrack
from services.render.projection import ShaderCamera, view_matrix
from services.render.scene import RenderTarget, Scene
from services.render.world import Floor, Grid, frustum_lines_mm

BACKGROUND = (0.93, 0.94, 0.95)
FLOOR_RGBA = (0.82, 0.83, 0.85, 1.0)
GRID_RGBA = (0.52, 0.55, 0.60, 1.0)
PATH_DONE_RGBA = (0.10, 0.10, 0.12, 1.0)
PATH_AHEAD_RGBA = (0.55, 0.56, 0.60, 1.0)
FRUSTUM_RGBA = (0.10, 0.10, 0.12, 1.0)


def shader_cameras(cameras: CameraTrack, target: RenderTarget) -> list[ShaderCamera]:
    """Every frame's camera, scaled to the supersampled target (half-pixel convention)."""
    scaled = cameras.resized(*target.size)
    return [
        ShaderCamera(
            view_matrix(scaled.rotation[i], scaled.optical_center[i]),
            scaled.intrinsics[i],
            scaled.distortion[i],
        )
        for i in range(len(scaled))
    ]


def blend_over(frame: np.ndarray, overlay: np.ndarray, opacity: float) -> np.ndarray:
    """frame (H, W, 3) with the premultiplied RGBA overlay on top at `opacity`: frame (1 - o a)
    + o rgb, to within 1/255; only the overlay's bounding box is touched."""
    x, y, w, h = cv2.boundingRect(overlay[..., 3])
    out = frame.copy()
    if w == 0 or h == 0:
        return out
    region = (slice(y, y + h), slice(x, x + w))
    keep = cv2.convertScaleAbs(overlay[region][..., 3], alpha=-opacity, beta=255)
    under = cv2.multiply(out[region], cv2.merge([keep, keep, keep]), scale=1 / 255)
    over = cv2.convertScaleAbs(np.ascontiguousarray(overlay[region][..., :3]), alpha=opacity)
    out[region] = cv2.add(under, over)
    return out


class CameraView:
    """The recording camera's view: meshes over the video frame."""

    def __init__(self, scene: Scene, cameras: CameraTrack, width: int, height: int, opacity: float):
        self.scene = scene
        self.target = RenderTarget(scene.ctx, width, height)
        self.cameras = shader_cameras(cameras, self.target)
        self.opacity = opacity

    def overlay(self, frame_index: int) -> np.ndarray:
        """The meshes alone: (H, W, 4) premultiplied colour and coverage."""
        self.target.begin((0.0, 0.0, 0.0, 0.0))
        self.scene.set_camera(self.cameras[frame_index], self.target)
        self.scene.draw_meshes()
        return self.target.read(4)

    def render(self, frame_index: int, background: np.ndarray) -> np.ndarray:
        return blend_over(background, self.overlay(frame_index), self.opacity)


class WorldView:
    """The viewer camera's view of the floor, the recording camera and the meshes."""

    def __init__(
        self,
        scene: Scene,
        viewer: CameraTrack,
        recording: CameraTrack,
        floor: Floor,
        grid: Grid,
        width: int,
        height: int,
    ):
        self.scene = scene
        self.recording = recording
        self.target = RenderTarget(scene.ctx, width, height)
        self.cameras = shader_cameras(viewer, self.target)
        self.floor_quad = scene.flat_geometry(grid.quad_mm(floor))
        self.grid_lines = scene.flat_geometry(grid.lines_mm(floor))
        self.path = scene.flat_geometry(recording.optical_center)
        self.frustum_depth_mm = float(np.clip(grid.half_m * 1000 * 0.06, 250.0, 1000.0))
        self.frustum = scene.flat_geometry(frustum_lines_mm(recording, 0, self.frustum_depth_mm))

    def render(self, frame_index: int) -> np.ndarray:
        scene, ctx = self.scene, self.scene.ctx
        self.target.begin((*BACKGROUND, 1.0))
        scene.set_camera(self.cameras[frame_index], self.target)
        ctx.polygon_offset = (1.0, 1.0)  # the grid lines win over the floor they lie on
        self.floor_quad.draw(moderngl.TRIANGLES, FLOOR_RGBA)
        ctx.polygon_offset = (0.0, 0.0)
        self.grid_lines.draw(moderngl.LINES, GRID_RGBA, line_width=1.0)
        self.path.draw(moderngl.LINE_STRIP, PATH_DONE_RGBA, 2.0, 0, frame_index + 1)
        self.path.draw(moderngl.LINE_STRIP, PATH_AHEAD_RGBA, 1.5, frame_index)
        self.frustum.update(frustum_lines_mm(self.recording, frame_index, self.frustum_depth_mm))
        self.frustum.draw(moderngl.LINES, FRUSTUM_RGBA, 2.0)
        scene.draw_meshes()
        return self.target.read(3)
