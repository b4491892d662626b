"""From nlfpipe cameras (pinhole K, R, optical centre in mm, OpenCV distortion) to what the
shaders need, and the output size of a render.

Pixel convention (as `intrinsics_from_fov`): pixel i covers [i - 0.5, i + 0.5], so a pixel
centre u maps to the OpenGL window coordinate u + 0.5. The shaders project a camera-frame point
(x right, y down, z forward) to pixels with K (after distortion), then to normalized device
coordinates (2 (u + 0.5) / W - 1, 2 (v + 0.5) / H - 1); image row 0 lands on the first row
that glReadPixels returns, so read-back frames are top row first, as video frames are.
"""

from dataclasses import dataclass

import numpy as np

from services.common.errors import InvalidInput

NEAR_MM = 50.0
FAR_MM = 500_000.0


@dataclass(frozen=True)
class ShaderCamera:
    """One camera in the form of the shader uniforms (float32, mm)."""

    view: np.ndarray  # (4, 4) world -> camera, row-major
    intrinsics: np.ndarray  # (3, 3) in pixels of the render target
    distortion: np.ndarray  # (5,) OpenCV k1 k2 p1 p2 k3

    def uniforms(self) -> dict[str, object]:
        k = self.intrinsics
        return {
            "u_view": self.view.T.astype(np.float32).tobytes(),  # GLSL is column-major
            "u_focal": (float(k[0, 0]), float(k[1, 1])),
            "u_centre": (float(k[0, 2]), float(k[1, 2])),
            "u_skew": float(k[0, 1]),
            "u_radial": (
                float(self.distortion[0]),
                float(self.distortion[1]),
                float(self.distortion[4]),
            ),
            "u_tangential": (float(self.distortion[2]), float(self.distortion[3])),
        }


def view_matrix(rotation: np.ndarray, optical_center: np.ndarray) -> np.ndarray:
    """4x4 world -> camera: R (X - C)."""
    m = np.eye(4)
    m[:3, :3] = rotation
    m[:3, 3] = -rotation @ optical_center
    return m


def output_size(video_width: int, video_height: int, width: int, height: int) -> tuple[int, int]:
    """(width, height) of the videos: as given, or the missing side from the video's aspect
    ratio (rounded to even), or the video's size; refuses odd or tiny sizes."""
    if not width and not height:
        width, height = video_width, video_height
    elif not width:
        width = 2 * max(1, round(height * video_width / video_height / 2))
    elif not height:
        height = 2 * max(1, round(width * video_height / video_width / 2))
    for name, value in (("width", width), ("height", height)):
        if value % 2:
            raise InvalidInput(f"{name}={value}: H.264 (yuv420p) needs an even {name}")
        if not 16 <= value <= 8192:
            raise InvalidInput(f"{name}={value} must be between 16 and 8192 pixels")
    return int(width), int(height)
