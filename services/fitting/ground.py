"""Ground plane from the foot joints of every fitted person.

RANSAC picks the plane that the most foot joints touch (a track that floats or sinks cannot
outvote the others), the normal is refined by SVD of the inliers, oriented along the camera's
world up, and the foot-joint height is the mode of the inliers' heights along that normal. The
foot joints sit above the soles, so the floor (the ground proper) lies the body model's sole
offset (`smpl_fit.sole_offset_m`) below that plane.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GroundPlane:
    up: np.ndarray  # (3,) unit normal pointing up (world frame)
    height_mm: float  # the floor: {X : <X, up> = height_mm}, X in mm; NaN when not found
    foot_joint_height_mm: float  # the plane of the foot joints in contact (height_mm + offset)
    sole_offset_mm: float  # foot joints above the soles, of the body model
    inliers: int
    points: int
    found: bool


def fit_ground(
    foot_points_mm: np.ndarray,
    prior_up: np.ndarray,
    threshold_mm: float = 25.0,
    iterations: int = 5000,
    max_tilt_degrees: float = 60.0,
    min_spread_mm: float = 150.0,
    seed: int = 0,
    sole_offset_mm: float = 0.0,
) -> GroundPlane:
    """Fit the ground to (N, 3) foot-joint positions in mm; falls back to the prior up vector
    when there are too few points or the fitted normal is more than `max_tilt_degrees` off.
    The floor is `sole_offset_mm` below the plane of the foot joints."""
    prior_up = np.asarray(prior_up, np.float64) / np.linalg.norm(prior_up)
    pts = np.asarray(foot_points_mm, np.float64).reshape(-1, 3)
    pts = pts[np.all(np.isfinite(pts), axis=1)]

    def not_found(inliers: int) -> GroundPlane:
        nan = float("nan")
        return GroundPlane(prior_up, nan, nan, sole_offset_mm, inliers, len(pts), False)

    if len(pts) < 3:
        return not_found(0)

    rng = np.random.default_rng(seed)
    best = None
    best_count = -1
    for chunk in np.array_split(np.arange(iterations), max(1, iterations // 500)):
        tri = pts[rng.integers(0, len(pts), (len(chunk), 3))]
        normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        norm = np.linalg.norm(normals, axis=1)
        ok = norm > 1e-6
        if not ok.any():
            continue
        normals = normals[ok] / norm[ok, None]
        offsets = np.einsum("kc,kc->k", normals, tri[ok, 0])
        counts = (np.abs(pts @ normals.T - offsets) < threshold_mm).sum(0)
        k = int(counts.argmax())
        if counts[k] > best_count:
            best_count, best = int(counts[k]), (normals[k], offsets[k])
    if best is None or best_count < 3:
        return not_found(max(best_count, 0))

    normal, offset = best
    inliers = pts[np.abs(pts @ normal - offset) < threshold_mm]
    centred = inliers - inliers.mean(0)
    _, sing, vt = np.linalg.svd(centred, full_matrices=False)
    normal = vt[2]
    # A strip of footprints (one person walking straight) does not fix the tilt across it:
    # then keep the prior's tilt about the strip's direction.
    if sing[1] / np.sqrt(len(inliers)) < min_spread_mm:
        direction = vt[0]
        normal = prior_up - (prior_up @ direction) * direction
        normal /= np.linalg.norm(normal)
    if normal @ prior_up < 0:
        normal = -normal
    if np.degrees(np.arccos(np.clip(normal @ prior_up, -1, 1))) > max_tilt_degrees:
        normal = prior_up
    heights = inliers @ normal
    median = np.median(heights)
    hist, edges = np.histogram(heights, bins=100, range=(median - 200, median + 200))
    k = int(hist.argmax())
    near = np.abs(heights - 0.5 * (edges[k] + edges[k + 1])) <= 2 * (edges[1] - edges[0])
    foot_height = float(np.mean(heights[near]))
    return GroundPlane(
        normal, foot_height - sole_offset_mm, foot_height, sole_offset_mm, len(inliers),
        len(pts), True,
    )  # fmt: skip
