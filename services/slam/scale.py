"""Metric scale of an up-to-scale trajectory: from people, and from a metric depth model.

People-anchored: NLF predicts people in metres in camera coordinates (x_c). With the SLAM
rotations R_t and centres C_t (SLAM units), a person's world position at scale s is
X_t(s) = R_t^T x_c + s C_t, linear in s. The right s makes every person's world trajectory
plausible: (1) smooth, i.e. small second differences at lags of 0.4-1.6 s (the camera's
accelerations leak into X_t(s) unless s is right), on the keyframes only (interpolated poses
miss the camera's fast accelerations: with them the scale was 13% off on the generated walk,
with keyframes only 3%), and (2) the lowest joint (the feet) at one
height above a common ground plane. Both are least-squares terms linear in s; s is their
joint minimiser (closed form), iterated with Huber weights and with the ground normal re-fit
at each s. Its standard error tells whether the video constrains it (a camera moving at
constant velocity, or not at all, does not).

Depth model: on each keyframe, metric depth predicted at the background pixels where SLAM has
depth; per keyframe the robust ratio (median, then Geman-McClure reweighting), then the median
over keyframes.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.slam.backend import DepthSamples


@dataclass
class ScaleEstimate:
    """Metres per SLAM unit, with how sure it is."""

    scale: float
    relative_error: float  # standard error / scale
    samples: int
    source: str

    @property
    def observable(self) -> bool:
        return np.isfinite(self.scale) and self.scale > 0 and self.relative_error < 0.1

    def to_dict(self) -> dict:
        return {
            "scale": self.scale,
            "relative_error": self.relative_error,
            "samples": self.samples,
            "observable": bool(self.observable),
        }


@dataclass
class PersonTrack:
    """One person's metric camera-space observations: frames (n,), centres (n, 3) m, feet
    (n, 3) m (the lowest joint), all in camera coordinates."""

    frames: np.ndarray
    centres: np.ndarray
    feet: np.ndarray


def people_scale(
    tracks: Sequence[PersonTrack],
    rotations: np.ndarray,
    centres: np.ndarray,
    fps: float,
    up: np.ndarray = np.array([0.0, -1.0, 0.0]),  # noqa: B008 - read only
    iterations: int = 6,
    frames: Sequence[int] | None = None,
) -> ScaleEstimate:
    """The scale making people's world trajectories smooth and their feet level (see module).

    `frames` limits the fit to frames whose poses were estimated rather than interpolated
    (the keyframes): interpolation flattens the camera's fast accelerations, which the
    people's camera-space positions still carry, and would bias the scale."""
    if frames is not None:
        keep = np.zeros(len(centres), bool)
        keep[np.asarray(frames, int)] = True
        tracks = [PersonTrack(t.frames[keep[t.frames]], t.centres[keep[t.frames]],
                              t.feet[keep[t.frames]]) for t in tracks]  # fmt: skip
    lags = [fps * s for s in (0.4, 0.8, 1.6)]
    smooth_a, smooth_b = [], []
    for track in tracks:
        a = np.einsum("nji,nj->ni", rotations[track.frames], track.centres)  # R^T x_c
        b = centres[track.frames]
        for lag in lags:
            triplets = _triplets(track.frames, lag)
            if len(triplets):
                smooth_a.append(_second_difference(a, track.frames, triplets) * lag**2)
                smooth_b.append(_second_difference(b, track.frames, triplets) * lag**2)
    if not smooth_a:
        return ScaleEstimate(float("nan"), float("inf"), 0, "people")
    sa, sb = np.concatenate(smooth_a), np.concatenate(smooth_b)
    feet_a = [np.einsum("nji,nj->ni", rotations[t.frames], t.feet) for t in tracks]
    feet_b = [centres[t.frames] for t in tracks]
    sa, sb = sa.ravel(), sb.ravel()
    s = _least_squares(sa, sb, np.ones(sa.size))
    normal = np.asarray(up, np.float64)
    for _ in range(iterations):
        if not np.isfinite(s):  # the camera did not move: nothing constrains the scale
            return ScaleEstimate(float("nan"), float("inf"), int(sa.size), "people")
        normal = _ground_normal(feet_a, feet_b, s, normal)
        ga, gb = _heights(feet_a, feet_b, normal)
        # each term in units of its own residual spread at the current s
        smooth_sigma, ground_sigma = _noise(sa + s * sb), _noise(ga + s * gb)
        a_all = np.concatenate([sa / smooth_sigma, ga / ground_sigma])
        b_all = np.concatenate([sb / smooth_sigma, gb / ground_sigma])
        weights = _huber_weights(a_all + s * b_all)
        s = _least_squares(a_all, b_all, weights)
    residual = a_all + s * b_all
    information = float((weights * b_all**2).sum())
    sigma = float(np.sqrt((weights * residual**2).sum() / max(len(residual) - 1, 1)))
    error = sigma / np.sqrt(information) if information > 0 else float("inf")
    return ScaleEstimate(float(s), float(error / abs(s)) if s else float("inf"),
                         len(residual), "people")  # fmt: skip


def depth_model_scale(
    samples: Sequence[DepthSamples],
    predicted: Sequence[np.ndarray],
    max_depth_m: float = 10.0,
    sigma_m: float = 0.5,
    iterations: int = 10,
) -> ScaleEstimate:
    """Scale from metric depth maps `predicted` (one per sample's keyframe, working
    resolution) against the SLAM depths of `samples`."""
    per_keyframe = []
    for sample, depth_map in zip(samples, predicted, strict=True):
        x = np.clip(np.round(sample.xy[:, 0]).astype(int), 0, depth_map.shape[1] - 1)
        y = np.clip(np.round(sample.xy[:, 1]).astype(int), 0, depth_map.shape[0] - 1)
        pred = depth_map[y, x]
        ok = (pred > 0) & (pred < max_depth_m) & (sample.depth > 0)
        if ok.sum() < 5:
            continue
        pred, slam = pred[ok], sample.depth[ok]
        s = float(np.median(pred / slam))
        for _ in range(iterations):
            r = s * slam - pred
            w = sigma_m**4 / (sigma_m**2 + r**2) ** 2  # Geman-McClure IRLS weights
            s = float((w * pred * slam).sum() / (w * slam * slam).sum())
        per_keyframe.append(s)
    if not per_keyframe:
        return ScaleEstimate(float("nan"), float("inf"), 0, "depth")
    values = np.asarray(per_keyframe)
    scale = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - scale)))
    error = spread / np.sqrt(len(values)) / scale if len(values) > 1 else 0.05
    return ScaleEstimate(scale, float(error), len(values), "depth")


def agreement(a: ScaleEstimate, b: ScaleEstimate) -> float:
    """Relative difference |a - b| / mean of two scales."""
    return float(abs(a.scale - b.scale) / ((a.scale + b.scale) / 2))


def _triplets(frames: np.ndarray, lag: float) -> np.ndarray:
    """(m, 3) row indices (before, middle, after) with neighbours about `lag` frames away
    (between half and one and a half lags)."""
    if len(frames) < 3:
        return np.zeros((0, 3), int)
    middle = np.arange(len(frames))
    before = np.clip(np.searchsorted(frames, frames - lag), 0, len(frames) - 1)
    after = np.clip(np.searchsorted(frames, frames + lag), 0, len(frames) - 1)
    left, right = frames[middle] - frames[before], frames[after] - frames[middle]
    ok = (left >= 0.5 * lag) & (left <= 1.5 * lag) & (right >= 0.5 * lag) & (right <= 1.5 * lag)
    return np.stack([before[ok], middle[ok], after[ok]], axis=1)


def _second_difference(x: np.ndarray, frames: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Second derivative (per frame squared) from unevenly spaced samples."""
    t0, t1, t2 = (frames[rows[:, i]].astype(float)[:, None] for i in range(3))
    x0, x1, x2 = (x[rows[:, i]] for i in range(3))
    return 2 * ((x2 - x1) / (t2 - t1) - (x1 - x0) / (t1 - t0)) / (t2 - t0)


def _least_squares(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> float:
    """argmin_s sum w (a + s b)^2."""
    denominator = float((w * b * b).sum())
    return float(-(w * a * b).sum() / denominator) if denominator > 0 else float("nan")


def _noise(values: np.ndarray) -> float:
    return max(1.4826 * float(np.median(np.abs(values - np.median(values)))), 1e-6)


def _huber_weights(residual: np.ndarray, k: float = 1.5) -> np.ndarray:
    scale = _noise(residual)
    r = np.abs(residual) / scale
    return np.where(r <= k, 1.0, k / np.maximum(r, 1e-12))


def _ground_normal(feet_a, feet_b, s, previous) -> np.ndarray:
    """Normal of the plane through every foot position at scale s, oriented like `previous`."""
    points = np.concatenate([a + s * b for a, b in zip(feet_a, feet_b, strict=True)])
    if len(points) < 10:
        return previous
    centred = points - points.mean(0)
    normal = np.linalg.svd(centred, full_matrices=False)[2][-1]
    normal = normal if normal @ previous >= 0 else -normal
    return normal if normal @ previous > np.cos(np.radians(30)) else previous


def _heights(feet_a, feet_b, normal) -> tuple[np.ndarray, np.ndarray]:
    """Foot heights along `normal` split into their s-free and s-proportional parts, each
    with its track's mean removed (one ground, people may differ in their lowest joint)."""
    ga, gb = [], []
    for a, b in zip(feet_a, feet_b, strict=True):
        ha, hb = a @ normal, b @ normal
        ga.append(ha - ha.mean())
        gb.append(hb - hb.mean())
    return np.concatenate(ga), np.concatenate(gb)
