"""Robust temporal smoothing: a kernel-weighted moving geometric median, with splits.

The estimate at frame t is the Weiszfeld (iteratively reweighted) geometric median of the
points x_s in the kernel window around t, each weighted by kernel tap x prior weight:

    y = M(x, w);  repeat n_iter: w'_s = w_s / (||x_s - r_s|| + eps);  y = M(x, w')

where M is the weighted moving mean, M(x, w)[t] = sum_j k_j w_{t+j-h} x_{t+j-h} / sum_j k_j
w_{t+j-h} (h = len(k) // 2; frame t+j-h is read by tap j, so a kernel with zeros after the
centre reads only frames <= t and one with zeros before the centre reads only frames >= t).
Unlike the reference, the distance of x_s is measured to the leave-one-out estimate r_s (the
estimate at s from the other frames of the window), so that a frame cannot vote for itself:
with the reference's distance to y_s an outlier frame that holds most of the centre tap's
weight keeps its own estimate and is never pulled back.

The points' final estimate may instead be a robust local quadratic (`fit_kernel`): the value at
t of the quadratic in time fitted to the window's frames with weights fit tap x w' (the final
robust weights), which keeps real acceleration that a weighted mean damps.

Frames with zero prior weight are missing: they contribute nothing, and the estimate there is
whatever the rest of the window supports (see `support`). Segments are filtered independently,
so nothing is ever smoothed across a split.

All arrays are float32 NumPy with time as the first axis; points are (T, P, 3), weights (T, P).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Kernels of the reference (B.3), by frame rate.
ROOT_KERNEL_LOW_FPS = (0.01, 0.05, 0.1, 1, 2, 6, 2, 1, 0.1, 0.05, 0.01)
ROOT_KERNEL_HIGH_FPS = (
    0.01, 0.02, 0.05, 0.1, 0.2, 1, 1.3, 2, 3.3, 6, 3.3, 2, 1.3, 1, 0.2, 0.1, 0.05, 0.02, 0.01,
)  # fmt: skip
POINT_KERNEL_LOW_FPS = (1, 4, 6, 4, 1)
POINT_KERNEL_HIGH_FPS = (1, 8, 28, 56, 70, 56, 28, 8, 1)
# Weights of the local quadratic fit of the points (binomial, radius 6 and 12 frames).
POINT_FIT_RADIUS_LOW_FPS = 6
POINT_FIT_RADIUS_HIGH_FPS = 12
POST_FIT_KERNEL_LOW_FPS = (1, 2, 3, 2, 1)
POST_FIT_KERNEL_HIGH_FPS = (1, 1.5, 2, 2.5, 3, 2.5, 2, 1.5, 1)
HIGH_FPS = 40.0


@dataclass(frozen=True)
class Kernels:
    """The filter kernels of one frame rate."""

    root: np.ndarray  # depth of the body centre along the camera rays
    point: np.ndarray  # robust weights of the points
    point_fit: np.ndarray  # local quadratic fit of the points
    post_fit: np.ndarray  # the fitted pelvis along the camera rays


def binomial_kernel(radius: int) -> np.ndarray:
    """The 2 radius + 1 binomial coefficients C(2 radius, j)."""
    return np.array([math.comb(2 * radius, j) for j in range(2 * radius + 1)], np.float32)


def kernels_for_fps(fps: float) -> Kernels:
    """The kernels for a frame rate (the reference's two sets, below and from 40 fps)."""
    high = fps >= HIGH_FPS
    return Kernels(
        root=np.asarray(ROOT_KERNEL_HIGH_FPS if high else ROOT_KERNEL_LOW_FPS, np.float32),
        point=np.asarray(POINT_KERNEL_HIGH_FPS if high else POINT_KERNEL_LOW_FPS, np.float32),
        point_fit=binomial_kernel(POINT_FIT_RADIUS_HIGH_FPS if high else POINT_FIT_RADIUS_LOW_FPS),
        post_fit=np.asarray(
            POST_FIT_KERNEL_HIGH_FPS if high else POST_FIT_KERNEL_LOW_FPS, np.float32
        ),
    )


def half_kernels(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The causal (frames <= t) and anti-causal (frames >= t) halves of an odd kernel, both
    with the full centre tap and the same length as the kernel (so both stay centred)."""
    kernel = np.asarray(kernel, np.float32)
    h = len(kernel) // 2
    left, right = kernel.copy(), kernel.copy()
    left[h + 1 :] = 0
    right[:h] = 0
    return left, right


def moving_sum(a: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """out[t] = sum_j kernel[j] * a[t + j - h] along axis 0, zero outside [0, T)."""
    t_len = a.shape[0]
    h = len(kernel) // 2
    out = np.zeros_like(a)
    for j, k in enumerate(kernel):
        off = j - h
        if k == 0 or abs(off) >= t_len:
            continue
        if off >= 0:
            out[: t_len - off] += k * a[off:]
        else:
            out[-off:] += k * a[: t_len + off]
    return out


def window_offset(weights: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """(T,) mean frame offset (frames after t positive) of the frames a kernel-weighted mean at
    t reads, each weighted by its tap x weight (T,); 0 where the window holds no weight. It is
    0 for a symmetric kernel over symmetric support and is the lag of the estimate otherwise."""
    kernel = np.asarray(kernel, np.float32)
    w = np.asarray(weights, np.float32)
    offsets = np.arange(len(kernel), dtype=np.float32) - len(kernel) // 2
    total = moving_sum(w, kernel)
    moment = moving_sum(w, kernel * offsets)
    return np.where(total > 0, moment / np.where(total > 0, total, 1), 0)


def robust_smooth(
    x: np.ndarray,
    w: np.ndarray,
    kernel: np.ndarray,
    eps: float,
    n_iter: int = 10,
    block: int = 128,
    fit_kernel: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Moving geometric median of one segment.

    x: (T, P, 3) points, w: (T, P) prior weights (0 = missing). Returns (y, w_out): the
    estimates (T, P, 3), NaN where the window holds no data, and the propagated confidence
    w_out = M(w, w') (T, P), 0 where the window holds no data. Points are independent, so
    they are filtered in blocks of `block` points (the working set stays in the cache).

    With a `fit_kernel`, the estimate is instead a robust local quadratic: at each frame, the
    value of the quadratic in time fitted by least squares to the window's frames with
    weights fit_kernel tap x w' (the final robust weights). A kernel-weighted mean is biased
    wherever the motion accelerates (it damps real acceleration); a local quadratic is exact
    for constant acceleration, so a wider window can suppress as much noise without that bias.
    """
    kernel = np.asarray(kernel, np.float32)
    if fit_kernel is not None:
        fit_kernel = np.asarray(fit_kernel, np.float32)
    y = np.empty(x.shape, np.float32)
    w_out = np.empty(w.shape, np.float32)
    for start in range(0, x.shape[1], block):
        part = slice(start, start + block)
        y[:, part], w_out[:, part] = _smooth_block(
            x[:, part], w[:, part], kernel, eps, n_iter, fit_kernel
        )
    return y, w_out


def _smooth_block(
    x: np.ndarray,
    w: np.ndarray,
    kernel: np.ndarray,
    eps: float,
    n_iter: int,
    fit_kernel: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """`robust_smooth` of a block of points."""
    centre = kernel[len(kernel) // 2]
    w = np.where(np.isfinite(w) & (w > 0), w, 0).astype(np.float32, copy=False)
    # Coordinate-major (T, 3, P): every per-point operation runs on contiguous planes.
    xt = np.ascontiguousarray(np.moveaxis(np.where(np.isfinite(x), x, 0), -1, 1), np.float32)
    weighted = np.empty((len(xt), 4, *w.shape[1:]), np.float32)  # w'x, w'y, w'z, w'
    w_cur = w
    for it in range(n_iter + 1):
        np.multiply(w_cur[:, None], xt, out=weighted[:, :3])
        weighted[:, 3] = w_cur
        sums = moving_sum(weighted, kernel)
        num, den = sums[:, :3], sums[:, 3]
        has = den > 0
        if it == n_iter:
            break
        w_cur = w / (_distance_to_leave_one_out(xt, weighted, num, den, centre, has) + eps)
    safe_den = np.where(has, den, 1)
    estimate = num / safe_den[:, None]
    if fit_kernel is not None:
        estimate = _local_quadratic(xt, w_cur, fit_kernel, estimate)
    y = np.moveaxis(estimate, 1, -1)
    y[~has] = np.nan
    w_out = moving_sum(w * w_cur, kernel) / safe_den
    w_out[~has] = 0
    return y, w_out


def _moment_sums(a: np.ndarray, kernel: np.ndarray, orders: int) -> np.ndarray:
    """(orders, *a.shape): moving sums of `a` with the kernels kernel_j * u_j^m, m < orders,
    where u_j = (j - h) / h is the tap's offset scaled to [-1, 1]."""
    t_len = a.shape[0]
    h = len(kernel) // 2
    out = np.zeros((orders, *a.shape), np.float32)
    for j, k in enumerate(kernel):
        off = j - h
        if k == 0 or abs(off) >= t_len:
            continue
        src = a[off:] if off >= 0 else a[: t_len + off]
        dst = slice(0, t_len - off) if off >= 0 else slice(-off, None)
        for m in range(orders):
            out[m, dst] += np.float32(k * (off / h) ** m) * src
    return out


def _local_quadratic(
    xt: np.ndarray, w: np.ndarray, kernel: np.ndarray, fallback: np.ndarray
) -> np.ndarray:
    """(T, 3, P) value at each frame of the quadratic in time fitted by weighted least squares
    to the frames of the window around it (weights: kernel tap x w); `fallback` where the
    weighted frames do not determine a quadratic (fewer than three of them)."""
    s0, s1, s2, s3, s4 = _moment_sums(w, kernel, 5)
    b0, b1, b2 = _moment_sums(w[:, None] * xt, kernel, 3)
    # First row of the inverse of [[s0, s1, s2], [s1, s2, s3], [s2, s3, s4]] (cofactors).
    c0 = s2 * s4 - s3 * s3
    c1 = s2 * s3 - s1 * s4
    c2 = s1 * s3 - s2 * s2
    det = s0 * c0 + s1 * c1 + s2 * c2
    ok = det > 1e-6 * s0 * s2 * s4
    safe = np.where(ok, det, 1)
    value = (c0[:, None] * b0 + c1[:, None] * b1 + c2[:, None] * b2) / safe[:, None]
    return np.where(ok[:, None], value, fallback)


def _distance_to_leave_one_out(
    xt: np.ndarray,
    weighted: np.ndarray,
    num: np.ndarray,
    den: np.ndarray,
    centre: float,
    has: np.ndarray,
) -> np.ndarray:
    """(T, P) distance of each point to the estimate at its frame from the other frames of the
    window (the full estimate where the frame holds all of the window's weight).

    xt: (T, 3, P) points; weighted: (T, 4, P) their weighted coordinates and weights; num, den:
    the moving sums of those. `num` is overwritten.
    """
    loo_den = den - centre * weighted[:, 3]
    loo_ok = loo_den > 1e-6 * np.maximum(den, 1e-30)
    num -= (centre * loo_ok)[:, None] * weighted[:, :3]
    ref = num / np.where(loo_ok, loo_den, np.where(has, den, 1))[:, None]
    ref -= xt
    return np.sqrt(np.einsum("tcp,tcp->tp", ref, ref))


def smooth_segments(
    x: np.ndarray,
    w: np.ndarray,
    segments: Sequence[tuple[int, int]],
    kernel: np.ndarray,
    eps: float,
    n_iter: int = 10,
    fit_kernel: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`robust_smooth` applied to each [start, end) segment independently; frames outside
    every segment come back NaN with weight 0."""
    y = np.full(x.shape, np.nan, np.float32)
    w_out = np.zeros(w.shape, np.float32)
    for start, end in segments:
        y[start:end], w_out[start:end] = robust_smooth(
            x[start:end], w[start:end], kernel, eps, n_iter, fit_kernel=fit_kernel
        )
    return y, w_out


def two_sided_support(observed: np.ndarray, radius: int) -> np.ndarray:
    """True where an observed frame lies within `radius` frames on both sides (or the frame
    itself is observed): the frames a symmetric kernel of that radius can fill without
    extrapolating."""
    observed = np.asarray(observed, bool)
    t_len = len(observed)
    idx = np.arange(t_len)
    last_seen = np.where(observed, idx, -1)
    last_seen = np.maximum.accumulate(last_seen)
    next_seen = np.where(observed, idx, t_len)
    next_seen = np.minimum.accumulate(next_seen[::-1])[::-1]
    both = (last_seen >= 0) & (idx - last_seen <= radius) & (next_seen < t_len)
    both &= next_seen - idx <= radius
    return observed | both


def detect_splits(
    centres: np.ndarray,
    weights: np.ndarray,
    kernel: np.ndarray,
    threshold: float,
    eps: float,
    n_iter: int,
    gap_allowance_per_frame: float,
) -> list[int]:
    """Frames at which a new segment starts, because the track jumps there.

    centres: (T, 3) one point per frame (e.g. the body centre), weights: (T,) (0 = missing).
    For every pair of consecutive observed frames i < j the causal robust estimate at i (from
    frames <= i) is compared with the anti-causal one at j (from frames >= j); the boundary is a
    split where that distance exceeds `threshold` (+ `gap_allowance_per_frame` for each
    missing frame between i and j) and is the largest such distance within the kernel's reach.
    """
    observed = np.flatnonzero(weights > 0)
    if len(observed) < 2:
        return []
    left, right = half_kernels(kernel)
    x = centres[:, None, :]
    w = weights[:, None]
    est_left = robust_smooth(x, w, left, eps, n_iter)[0][:, 0]
    est_right = robust_smooth(x, w, right, eps, n_iter)[0][:, 0]
    i, j = observed[:-1], observed[1:]
    jump = np.linalg.norm(est_left[i] - est_right[j], axis=-1)
    limit = threshold + gap_allowance_per_frame * (j - i - 1)
    reach = len(kernel) // 2
    starts = []
    for k in np.flatnonzero(jump > limit):
        near = np.abs(i - i[k]) <= reach
        rivals = jump[near]
        # Largest jump nearby; ties go to the earliest boundary.
        if jump[k] >= rivals.max() and not any(
            jump[m] == jump[k] and m < k for m in np.flatnonzero(near)
        ):
            starts.append(int(j[k]))
    return starts


def segments_from_splits(
    observed: np.ndarray, split_starts: Sequence[int], min_frames: int = 1
) -> list[tuple[int, int]]:
    """[start, end) frame ranges between splits, each from its first to its last observed
    frame; segments with fewer than `min_frames` observed frames are dropped."""
    obs = np.flatnonzero(observed)
    if len(obs) == 0:
        return []
    bounds = sorted(set(int(s) for s in split_starts) | {int(obs[0])})
    segments = []
    for a, b in zip(bounds, [*bounds[1:], int(obs[-1]) + 1], strict=True):
        inside = obs[(obs >= a) & (obs < b)]
        if len(inside) >= min_frames:
            segments.append((int(inside[0]), int(inside[-1]) + 1))
    return segments
