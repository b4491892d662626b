"""Per-frame pinhole cameras (format `nlfpipe.cameras/1`, an npz; see docs/formats.md).

Arrays (no pickle): `intrinsics` (T,3,3) in pixels of `image_size`; `rotation` (T,3,3)
world->camera; `optical_center` (T,3) camera position in world coordinates, millimetres;
`distortion` (T,5) OpenCV k1 k2 p1 p2 k3; `world_up` (3,) unit vector (default (0,-1,0): the
camera frame is x right, y down, z forward); `image_size` (2,) = width, height in pixels;
`format` = "nlfpipe.cameras/1". A camera maps a world point X (mm) to camera coordinates
R (X - C) and to pixels K [R (X - C)] / z.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.common.errors import InvalidInput

FORMAT = "nlfpipe.cameras/1"
MEDIA_TYPE = "application/x-nlfpipe-cameras+npz"
DEFAULT_FOV_DEGREES = 55.0


def intrinsics_from_fov(fov_degrees: float, width: int, height: int) -> np.ndarray:
    """K for a field of view along the larger image side and a centred principal point."""
    if not 0 < fov_degrees < 180:
        raise InvalidInput(f"field of view {fov_degrees}° must be between 0 and 180 degrees")
    focal = max(width, height) / 2 / math.tan(math.radians(fov_degrees) / 2)
    return np.array(
        [[focal, 0, (width - 1) / 2], [0, focal, (height - 1) / 2], [0, 0, 1]], np.float64
    )


def scale_intrinsics(k: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Intrinsics (..., 3, 3) for the image resized by (sx, sy), with the pixel-centre
    convention of `intrinsics_from_fov` (pixel i covers [i - 0.5, i + 0.5]): a point at
    continuous position u + 0.5 from the left edge moves to sx (u + 0.5)."""
    out = np.array(k, np.float64, copy=True)
    out[..., 0, 0] *= sx
    out[..., 0, 1] *= sx
    out[..., 0, 2] = (out[..., 0, 2] + 0.5) * sx - 0.5
    out[..., 1, 1] *= sy
    out[..., 1, 2] = (out[..., 1, 2] + 0.5) * sy - 0.5
    return out


@dataclass
class CameraTrack:
    """One camera per frame."""

    intrinsics: np.ndarray
    rotation: np.ndarray
    optical_center: np.ndarray
    distortion: np.ndarray
    world_up: np.ndarray
    image_size: tuple[int, int]

    def __post_init__(self) -> None:
        n = len(self.intrinsics)
        shapes = {
            "intrinsics": (self.intrinsics.shape, (n, 3, 3)),
            "rotation": (self.rotation.shape, (n, 3, 3)),
            "optical_center": (self.optical_center.shape, (n, 3)),
            "distortion": (self.distortion.shape, (n, 5)),
            "world_up": (self.world_up.shape, (3,)),
        }
        for name, (got, want) in shapes.items():
            if got != want:
                raise InvalidInput(f"cameras: {name} has shape {got}, expected {want}")
        arrays = (self.intrinsics, self.rotation, self.optical_center, self.distortion)
        if not all(np.isfinite(a).all() for a in arrays):
            raise InvalidInput("cameras contain NaN or infinite values")

    def __len__(self) -> int:
        return len(self.intrinsics)

    @classmethod
    def static(
        cls,
        num_frames: int,
        width: int,
        height: int,
        fov_degrees: float = DEFAULT_FOV_DEGREES,
        intrinsics: np.ndarray | None = None,
    ) -> "CameraTrack":
        """A camera that does not move: the world frame is the camera frame."""
        k = intrinsics_from_fov(fov_degrees, width, height) if intrinsics is None else intrinsics
        return cls(
            intrinsics=np.repeat(np.asarray(k, np.float64)[None], num_frames, axis=0),
            rotation=np.repeat(np.eye(3)[None], num_frames, axis=0),
            optical_center=np.zeros((num_frames, 3)),
            distortion=np.zeros((num_frames, 5)),
            world_up=np.array([0.0, -1.0, 0.0]),
            image_size=(int(width), int(height)),
        )

    def resized(self, width: int, height: int) -> "CameraTrack":
        """The same cameras for images resized to width x height (`scale_intrinsics`)."""
        sx, sy = width / self.image_size[0], height / self.image_size[1]
        return CameraTrack(
            intrinsics=scale_intrinsics(self.intrinsics, sx, sy),
            rotation=self.rotation,
            optical_center=self.optical_center,
            distortion=self.distortion,
            world_up=self.world_up,
            image_size=(int(width), int(height)),
        )

    def world_to_camera(self, points: np.ndarray, frame: int) -> np.ndarray:
        """(..., 3) world points in mm -> camera coordinates in mm."""
        return (points - self.optical_center[frame]) @ self.rotation[frame].T

    def camera_to_world(self, points: np.ndarray, frame: int) -> np.ndarray:
        """(..., 3) camera coordinates in mm -> world points in mm."""
        return points @ self.rotation[frame] + self.optical_center[frame]

    def project(self, points: np.ndarray, frame: int) -> np.ndarray:
        """(..., 3) world points in mm -> (..., 2) pixels (distortion ignored)."""
        cam = self.world_to_camera(points, frame)
        uvw = cam @ self.intrinsics[frame].T
        return uvw[..., :2] / uvw[..., 2:3]

    def extrinsic_matrix(self, frame: int) -> np.ndarray:
        """4x4 world->camera matrix with translation in mm."""
        m = np.eye(4)
        m[:3, :3] = self.rotation[frame]
        m[:3, 3] = -self.rotation[frame] @ self.optical_center[frame]
        return m

    def to_deltacamera(self, frame: int):
        """The frame's camera as a deltacamera.Camera (same units)."""
        import deltacamera

        return deltacamera.Camera(
            optical_center=self.optical_center[frame],
            rot_world_to_cam=self.rotation[frame],
            intrinsic_matrix=self.intrinsics[frame],
            distortion_coeffs=self.distortion[frame],
            world_up=self.world_up,
        )

    def save(self, path: Path) -> None:
        with open(path, "wb") as f:
            np.savez(
                f,
                format=np.array(FORMAT),
                intrinsics=self.intrinsics,
                rotation=self.rotation,
                optical_center=self.optical_center,
                distortion=self.distortion,
                world_up=self.world_up,
                image_size=np.array(self.image_size, np.int64),
            )

    @classmethod
    def load(cls, path: Path) -> "CameraTrack":
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["format"]) != FORMAT:
                    raise InvalidInput(f"{path.name}: format {data['format']}, want {FORMAT}")
                return cls(
                    intrinsics=data["intrinsics"].astype(np.float64),
                    rotation=data["rotation"].astype(np.float64),
                    optical_center=data["optical_center"].astype(np.float64),
                    distortion=data["distortion"].astype(np.float64),
                    world_up=data["world_up"].astype(np.float64),
                    image_size=tuple(int(v) for v in data["image_size"]),
                )
        except (OSError, KeyError, ValueError) as e:
            raise InvalidInput(f"{path.name} is not an nlfpipe cameras file: {e}") from None
