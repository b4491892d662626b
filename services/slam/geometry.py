"""Camera trajectories as arrays: world->camera rotations R (T, 3, 3) and camera centres C (T, 3).

Interpolation, similarity transforms between reconstructions, re-basing on the first camera,
and smoothing on SE(3) (rotations averaged as rotations, never as Euler angles).
"""

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.ndimage import gaussian_filter1d
from scipy.spatial.transform import Rotation, RotationSpline, Slerp


def project_to_so3(m: np.ndarray) -> np.ndarray:
    """The rotation nearest to a 3x3 matrix (SVD, reflection fixed)."""
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


def interpolate(
    key_frames: np.ndarray, rotations: np.ndarray, centres: np.ndarray, frames: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Poses at `frames` from poses at sorted `key_frames`: C2-continuous cubic splines
    (rotations on SO(3), centres per axis; with fewer than four key frames slerp and linear);
    frames before the first or after the last key frame take that key frame's pose.

    Linear interpolation flattens the camera's accelerations between key frames (a 3 cm,
    0.6 Hz bob lost 17% of its amplitude at 0.3 s key frame spacing), which biased the
    people-anchored scale; the cubic spline keeps them."""
    key_frames = np.asarray(key_frames, np.float64)
    frames = np.clip(np.asarray(frames, np.float64), key_frames[0], key_frames[-1])
    if len(key_frames) == 1:
        n = len(frames)
        return np.repeat(rotations[:1], n, 0), np.repeat(centres[:1], n, 0)
    if len(key_frames) < 4:
        r = Slerp(key_frames, Rotation.from_matrix(rotations))(frames).as_matrix()
        c = np.stack([np.interp(frames, key_frames, centres[:, i]) for i in range(3)], axis=1)
        return r, c
    r = RotationSpline(key_frames, Rotation.from_matrix(rotations))(frames).as_matrix()
    return r, CubicSpline(key_frames, centres, axis=0)(frames)


def similarity_between(
    rot_a: np.ndarray, cen_a: np.ndarray, rot_b: np.ndarray, cen_b: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """(s, Q, t) with world_a = s Q world_b + t, from the same cameras in two reconstructions.

    Q averages the per-camera orientation differences (robust where the centres are nearly
    collinear, as on a straight walk); s and t then fit the centres by least squares.
    """
    q = project_to_so3(sum(ra.T @ rb for ra, rb in zip(rot_a, rot_b, strict=True)))
    mean_a, mean_b = cen_a.mean(0), cen_b.mean(0)
    da, db = cen_a - mean_a, (cen_b - mean_b) @ q.T
    denominator = float((db * db).sum())
    s = float((da * db).sum() / denominator) if denominator > 1e-12 else 1.0
    return s, q, mean_a - s * q @ mean_b


def apply_similarity(
    rotations: np.ndarray, centres: np.ndarray, s: float, q: np.ndarray, t: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Cameras of world_b expressed in world_a = s Q world_b + t."""
    return rotations @ q.T, s * centres @ q.T + t


def relative_to_first(rotations: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same cameras in the frame of the first camera (which becomes R = I, C = 0)."""
    r0, c0 = rotations[0], centres[0]
    return rotations @ r0.T, (centres - c0) @ r0.T


def smooth(
    rotations: np.ndarray, centres: np.ndarray, sigma_frames: float
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian smoothing on SE(3): centres averaged, rotations by the normalized weighted mean
    of sign-aligned quaternions (the chordal mean, accurate for the small angles within one
    kernel). `sigma_frames` <= 0 returns the input."""
    if sigma_frames <= 0 or len(rotations) < 3:
        return rotations, centres
    quats = Rotation.from_matrix(rotations).as_quat()
    for i in range(1, len(quats)):
        if quats[i] @ quats[i - 1] < 0:
            quats[i] = -quats[i]
    smoothed_q = gaussian_filter1d(quats, sigma_frames, axis=0, mode="nearest")
    smoothed_q /= np.linalg.norm(smoothed_q, axis=1, keepdims=True)
    smoothed_c = gaussian_filter1d(centres, sigma_frames, axis=0, mode="nearest")
    return Rotation.from_quat(smoothed_q).as_matrix(), smoothed_c


def fov_from_focal(focal: float, width: int, height: int) -> float:
    """Field of view in degrees across the larger image side."""
    return float(np.degrees(2 * np.arctan(max(width, height) / 2 / focal)))


def focal_from_fov(fov_deg: float, width: int, height: int) -> float:
    """Focal length in pixels for a field of view across the larger image side."""
    return float(max(width, height) / 2 / np.tan(np.radians(fov_deg) / 2))
