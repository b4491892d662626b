"""Metric scale of an up-to-scale trajectory: from people, and from a metric depth model.

People-anchored: NLF predicts people in metres in camera coordinates (x_c). With the SLAM
rotations R_t and centres C_t (SLAM units), a person's world position at scale s is
X_t(s) = a_t + s b_t with a_t = R_t^T x_c and b_t = C_t. People move smoothly; the camera's
faster motion (bob, sway, shake) leaks into X_t(s) unless s is right. So, per person and
gap-free run of frames, a and b are high-passed (minus their least-squares cubic spline, knots
`knot_spacing_s` apart: walking people at up to 1 rad/s stay in the spline, a camera's bob at
4 rad/s does not), and s is the weighted least-squares fit of a + s b = 0 on what remains,
over every person and frame at once (closed form). The noise is anisotropic (a
box-height-like depth error along the ray, small across it): both spreads are estimated from
the residuals and whiten them, and Huber weights on the whitened distance (IRLS) reject
outliers. The standard error from the information left after the spline's degrees of freedom
tells whether the video constrains s: a camera at rest or at constant velocity (everything a
spline explains) does not.

A "feet on one ground" term adds little: all people share the camera's C_t, so their height
differences do not depend on s, and each person's own steady height is part of the smooth
path. A stricter prior (each person's height linear in time along the first camera's up)
was measured: 3x smaller reported errors but +3.8% mean bias on the generated 2 s walks, so
it is not used. (The version before fitted the ground normal at every s: on a 2 s walk it
tilted with the noise and pulled s 10-30% low; its second differences at fixed lags were
biased 8% by the people's own accelerations.)

Only whole people count: a person cut by the image border has a biased depth
(`inside_image`); on the generated walks a quarter of the observations were cut.

Measured (tests/test_slam_units.py, the stand-in pose model on the figures' true boxes, true
cameras at keyframes 0.3 s apart): 4 s walks within 3% (6 seeds), 2 s walks within 5.2%
(8 seeds, mean +2.5%, of which about +1.2% is the stand-in's depth from the box height).

Depth model: on each keyframe, metric depth predicted at the background pixels where SLAM has
depth; per keyframe the robust ratio (median, then Geman-McClure reweighting), then the median
over keyframes.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.interpolate import make_lsq_spline

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
    """One person's metric camera-space observations: frames (n,) increasing, centres
    (n, 3) m in camera coordinates."""

    frames: np.ndarray
    centres: np.ndarray


def people_scale(
    tracks: Sequence[PersonTrack],
    rotations: np.ndarray,
    centres: np.ndarray,
    fps: float,
    knot_spacing_s: float = 1.5,
    iterations: int = 8,
    frames: Sequence[int] | None = None,
) -> ScaleEstimate:
    """The scale making people's world trajectories smooth (see the module).

    `frames` limits the fit to those frames (default: every frame with a prediction)."""
    if frames is not None:
        keep = np.zeros(len(centres), bool)
        keep[np.asarray(frames, int)] = True
        tracks = [PersonTrack(t.frames[keep[t.frames]], t.centres[keep[t.frames]])
                  for t in tracks]  # fmt: skip
    segments = []
    for track in tracks:
        a = np.einsum("nji,nj->ni", rotations[track.frames], track.centres)  # R^T x_c
        for rows in _segments(track.frames, max_gap=max(2, round(0.25 * fps))):
            times = track.frames[rows] / fps
            knots = _knots(times, knot_spacing_s)
            if knots is None:
                continue
            rays = a[rows] / np.linalg.norm(a[rows], axis=1, keepdims=True)
            segments.append(_Segment(times, knots, a[rows], centres[track.frames[rows]], rays))
    if not segments:
        return ScaleEstimate(float("nan"), float("inf"), 0, "people")
    weights = [np.ones(len(seg.times)) for seg in segments]
    sigma_ray = sigma_across = 1.0
    s = float("nan")
    for _ in range(iterations):
        highpassed = [seg.high_pass(w) for seg, w in zip(segments, weights, strict=True)]
        numerator = denominator = 0.0
        for seg, w, (ra, rb) in zip(segments, weights, highpassed, strict=True):
            numerator += (w * _whitened_dot(ra, rb, seg.rays, sigma_ray, sigma_across)).sum()
            denominator += (w * _whitened_dot(rb, rb, seg.rays, sigma_ray, sigma_across)).sum()
        if not denominator > 0:  # the camera did not accelerate
            return ScaleEstimate(float("nan"), float("inf"), 0, "people")
        s = -numerator / denominator
        residuals = [ra + s * rb for ra, rb in highpassed]
        along = np.concatenate([(r * seg.rays).sum(1) for r, seg in zip(residuals, segments,
                                                                         strict=True)])  # fmt: skip
        across = np.concatenate([np.linalg.norm(r - (r * seg.rays).sum(1, keepdims=True)
                                                * seg.rays, axis=1)
                                 for r, seg in zip(residuals, segments, strict=True)])  # fmt: skip
        sigma_ray = _spread(along)
        # |2-D Gaussian| has its median at 1.1774 sigma
        sigma_across = max(float(np.median(across)) / 1.1774, 1e-3 * sigma_ray)
        distance = np.sqrt((along / sigma_ray) ** 2 + (across / sigma_across) ** 2)
        flat = np.where(distance <= _HUBER_K, 1.0, _HUBER_K / np.maximum(distance, 1e-12))
        weights = np.split(flat, np.cumsum([len(seg.times) for seg in segments])[:-1])
    count = int(sum(len(seg.times) for seg in segments))
    parameters = int(sum(len(seg.knots) - 4 for seg in segments))
    # the residuals' spread underestimates the noise by the spline's degrees of freedom
    dof = count / max(count - parameters, 1)
    information = denominator / dof
    error = 1.0 / np.sqrt(information) if information > 0 else float("inf")
    return ScaleEstimate(float(s), float(error / abs(s)) if s else float("inf"), count, "people")


def inside_image(points_2d: np.ndarray, width: int, height: int, margin_px: float = 2.0):
    """(n,) bool: every point of each person's (n, J, 2) projection lies inside the image
    (pixel centres at integers), `margin_px` from the border. A person cut by the border has
    a biased depth (a box-height-like cue shrinks), so the scale uses only whole people."""
    x, y = points_2d[..., 0], points_2d[..., 1]
    inside = (x >= margin_px - 0.5) & (x <= width - 0.5 - margin_px)
    inside &= (y >= margin_px - 0.5) & (y <= height - 0.5 - margin_px)
    return inside.all(axis=-1)


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


_HUBER_K = 2.8  # on the 3-D Mahalanobis distance: 95% of Gaussian noise below


@dataclass
class _Segment:
    """One person's gap-free run of observations: times (s), spline knots, a = R^T x_c and
    b = C (so that the world position is a + s b), unit rays camera -> person (world axes)."""

    times: np.ndarray
    knots: np.ndarray
    a: np.ndarray
    b: np.ndarray
    rays: np.ndarray

    def high_pass(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """a and b minus their weighted least-squares cubic splines (what a smooth path
        cannot explain)."""
        both = np.concatenate([self.a, self.b], axis=1)
        spline = make_lsq_spline(self.times, both, self.knots, k=3, w=weights)
        rest = both - spline(self.times)
        return rest[:, :3], rest[:, 3:]


def _segments(frames: np.ndarray, max_gap: int) -> list[np.ndarray]:
    """Row indices of the runs of `frames` without a gap longer than `max_gap` frames."""
    if not len(frames):
        return []
    breaks = np.flatnonzero(np.diff(frames) > max_gap) + 1
    return np.split(np.arange(len(frames)), breaks)


def _knots(times: np.ndarray, spacing: float) -> np.ndarray | None:
    """Cubic B-spline knots about `spacing` apart over `times`; None when the run is too short
    or too sparse to leave residual degrees of freedom."""
    span = float(times[-1] - times[0])
    intervals = int(round(span / spacing))
    if intervals < 1 or len(times) < 2 * (intervals + 3):
        return None
    inner = np.linspace(times[0], times[-1], intervals + 1)[1:-1]
    knots = np.r_[[times[0]] * 4, inner, [times[-1]] * 4]
    counts = np.histogram(times, np.r_[times[0], inner, times[-1]])[0]
    return knots if counts.min() >= 2 else None


def _whitened_dot(x: np.ndarray, y: np.ndarray, rays: np.ndarray, sigma_ray: float,
                  sigma_across: float) -> np.ndarray:  # fmt: skip
    """Per row x^T W y, W = the inverse noise covariance: sigma_ray along the ray (depth),
    sigma_across perpendicular to it."""
    xr, yr = (x * rays).sum(1), (y * rays).sum(1)
    across = (x * y).sum(1) - xr * yr
    return xr * yr / sigma_ray**2 + across / sigma_across**2


def _spread(values: np.ndarray) -> float:
    """Robust standard deviation about zero (median absolute value)."""
    return max(1.4826 * float(np.median(np.abs(values))), 1e-9)
