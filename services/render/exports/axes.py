"""The exports' frame: y up, right-handed, metres, the floor at y = 0 (glTF's convention).

X_export = R X_world + t with X_world in metres in the cameras' world frame. R turns the world
up (the ground normal) into +y by the smallest rotation after the half turn about x that maps
the camera-frame convention (x right, y down, z forward) to x right, y up, z backward; so with a
static level camera, x stays the image's right and the camera looks along -z, as a glTF camera
does. t shifts along y only, so that the soles stand on y = 0 (the fitted ground plane, which
passes through the foot joints, lies at y = sole depth). Without a ground plane, t = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HALF_TURN_X = np.diag([1.0, -1.0, -1.0])


def rotation_to_y_up(up: np.ndarray) -> np.ndarray:
    """R (3, 3) with R @ up = (0, 1, 0), the smallest turn after HALF_TURN_X."""
    u = HALF_TURN_X @ (np.asarray(up, np.float64) / np.linalg.norm(up))
    y = np.array([0.0, 1.0, 0.0])
    axis = np.cross(u, y)
    sin, cos = np.linalg.norm(axis), float(u @ y)
    if sin < 1e-12:
        turn = np.eye(3) if cos > 0 else np.diag([1.0, -1.0, -1.0])
    else:
        k = axis / sin
        cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
        turn = np.eye(3) + sin * cross + (1 - cos) * cross @ cross
    return turn @ HALF_TURN_X


@dataclass(frozen=True)
class ExportFrame:
    rotation: np.ndarray  # (3, 3)
    translation: np.ndarray  # (3,) metres

    @classmethod
    def create(cls, up: np.ndarray, ground_height_m: float | None, sole_depth_m: float):
        rotation = rotation_to_y_up(up)
        floor = 0.0 if ground_height_m is None else ground_height_m - sole_depth_m
        return cls(rotation, np.array([0.0, -floor, 0.0]))

    def matrix(self) -> np.ndarray:
        """(4, 4) from world metres to the export frame."""
        m = np.eye(4)
        m[:3, :3] = self.rotation
        m[:3, 3] = self.translation
        return m

    def points(self, world_m: np.ndarray) -> np.ndarray:
        """(..., 3) world points in metres -> export frame."""
        return world_m @ self.rotation.T + self.translation
