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

A "feet on one ground" term adds nothing here: all people share the camera's C_t, so their
height differences do not depend on s, and each person's own constant height is part of the
smooth path. (An earlier version fitted the ground normal at every s: on a 2 s walk it tilted
with the noise and pulled s 10-30% low; the second differences at fixed lags it used were
biased 8% by the people's own accelerations.)

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
    up: np.ndarray | None = np.array([0.0, -1.0, 0.0]),  # noqa: B008 - read only
    height_degree: int = 1,
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
        highpassed = [seg.high_pass(w, up, height_degree)
                      for seg, w in zip(segments, weights, strict=True)]  # fmt: skip
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

    def high_pass(self, weights: np.ndarray, up: np.ndarray | None,
                  height_degree: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """a and b minus what a plausible path explains: their weighted least-squares cubic
        splines, and along `up` (when given) a polynomial of `height_degree` in time."""
        both = np.concatenate([self.a, self.b], axis=1)
        spline = make_lsq_spline(self.times, both, self.knots, k=3, w=weights)
        rest = both - spline(self.times)
        if up is not None:
            heights = np.stack([self.a @ up, self.b @ up], axis=1)
            basis = np.vander(self.times - self.times.mean(), height_degree + 1)
            sw = np.sqrt(weights)[:, None]
            coefficients = np.linalg.lstsq(basis * sw, heights * sw, rcond=None)[0]
            height_rest = heights - basis @ coefficients
            for i in range(2):
                part = rest[:, 3 * i : 3 * i + 3]
                part += np.outer(height_rest[:, i] - part @ up, up)
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
