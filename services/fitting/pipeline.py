"""The fitting stage on arrays: per-track predictions + cameras -> SMPL fits, ground, viewer path.

Per track (all in metres, world frame; P = the 1024 subset vertices + 24 joints):
 1. weights u^-1.5 normalised to mean 1 (vertices and joints separately);
 2. preliminary fit (shared shape per segment) -> per-frame scale, applied about the camera centre,
    normalised by the segment's median; the track is split where its body centre jumps by more
    than `split_threshold_m` (two-sided robust filter), and each segment gets its own shape and
    scale normalisation;
 3. depth of the body centre smoothed along the camera rays (robust filter, root kernel);
    frames whose centre then still sits `outlier_threshold_m` off its neighbours are dropped;
 4. all points smoothed with the robust filter: robust weights from the point kernel, then a
    robust local quadratic fit over a wider window (exact for constant acceleration); a
    missing frame is filled only when observed frames lie within the point kernel's radius on
    both sides, otherwise it is invalid;
 5. frame doubling (fps factor 2), never across a split or from an invalid neighbour;
 6. final fit per segment (shared shape, final rotation adjustment);
 7. the fitted pelvis smoothed along the camera rays: offset (sigma - 1)(root - c).
Invalid frames are NaN with `valid` False; nothing is extrapolated.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from services.common.formats.cameras import CameraTrack
from services.fitting import robust_filter as rf
from services.fitting.doubling import double_cameras, double_frames
from services.fitting.ground import GroundPlane, fit_ground
from services.fitting.smpl_fit import (
    FOOT_JOINTS,
    NUM_JOINTS,
    FitSettings,
    SmplFitter,
    torch_threads,
)
from services.fitting.viewer_camera import viewer_trajectory


@dataclass(frozen=True)
class FittingParams:
    """Parameters of the stage (units in the names; defaults from the reference)."""

    uncertainty_exponent: float = 1.5
    split_threshold_m: float = 1.0
    gap_speed_mps: float = 2.0  # extra jump allowed per second of gap before a split
    min_segment_frames: int = 3
    outlier_threshold_m: float = 0.25
    filter_eps_m: float = 0.05
    filter_iterations: int = 10
    # The points' estimate: "quadratic" (robust local quadratic, keeps real acceleration) or
    # "mean" (the robust kernel-weighted mean alone, which damps it).
    point_fit: str = "quadratic"
    fit: FitSettings = field(default_factory=FitSettings)
    ground_threshold_mm: float = 25.0
    ground_iterations: int = 5000
    viewer_start_s: float = 4.0
    viewer_ease_s: float = 4.0
    workers: int = 2  # tracks fitted at once, one thread each (torch runs single-threaded)


@dataclass
class TrackInput:
    """One track's predictions on the frames where it was seen (n of them)."""

    track_id: int
    frame_indices: np.ndarray  # (n,) ascending
    points_m: np.ndarray  # (n, P, 3): subset vertices then 24 joints, metres, world frame
    uncertainties_m: np.ndarray  # (n, P)


@dataclass
class TrackFit:
    """One track over the whole output timeline (T_out frames)."""

    track_id: int
    pose_rotvecs: np.ndarray  # (T_out, 72) rad, NaN where invalid
    trans: np.ndarray  # (T_out, 3) m
    shape_betas: np.ndarray  # (S, 10), one per segment
    segments: np.ndarray  # (S, 2) [start, end) output frames
    scale: np.ndarray  # (T_out,) factor applied to the predictions about the camera centre
    valid: np.ndarray  # (T_out,) bool
    joints: np.ndarray  # (T_out, 24, 3) m, fitted


@dataclass
class StageOutput:
    fits: list[TrackFit]
    ground: GroundPlane
    viewer: CameraTrack
    display: CameraTrack  # input cameras at the output frame rate


def _weights(unc: np.ndarray, exponent: float) -> np.ndarray:
    w = np.where(np.isfinite(unc) & (unc > 0), np.abs(unc) ** -exponent, 0.0).astype(np.float32)
    for part in (slice(None, -NUM_JOINTS), slice(-NUM_JOINTS, None)):
        seen = w[:, part][w[:, part] > 0]
        if len(seen):
            w[:, part] /= seen.mean()
    return w


def _scale_about(points: np.ndarray, centres: np.ndarray, s: np.ndarray) -> np.ndarray:
    return centres[:, None] + s[:, None, None] * (points - centres[:, None])


def _body_centre(points: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    jw = w[:, -NUM_JOINTS:]
    total = jw.sum(1)
    centre = (jw[..., None] * points[:, -NUM_JOINTS:]).sum(1) / np.maximum(total, 1e-12)[:, None]
    return centre, jw.mean(1)


def _ray_scale(filtered: np.ndarray, raw: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """sigma with sigma (raw - c) the projection of (filtered - c) onto the ray through raw."""
    ray = raw - cam
    return np.einsum("tc,tc->t", filtered - cam, ray) / np.maximum(
        np.einsum("tc,tc->t", ray, ray), 1e-12
    )


def along_ray_offset(raw: np.ndarray, filtered: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """(T, 3) offsets that move each raw point along its camera ray to the depth of the
    filtered one: (sigma - 1)(raw - c). The reference used (sigma - 1) raw, which is only
    right for a camera at the origin."""
    return (_ray_scale(filtered, raw, cam) - 1)[:, None] * (raw - cam)


class TrackFitter:
    def __init__(self, smpl: SmplFitter, params: FittingParams, fps: float, fps_factor: int):
        self.smpl = smpl
        self.p = params
        self.fps = fps
        self.factor = fps_factor
        kernels = rf.kernels_for_fps(fps)
        self.root_kernel, self.point_kernel = kernels.root, kernels.point
        self.point_fit_kernel = kernels.point_fit if params.point_fit == "quadratic" else None
        self.post_kernel = rf.kernels_for_fps(fps * fps_factor).post_fit

    def _segments(self, points, w, observed, cam) -> tuple[list, np.ndarray]:
        """Splits and per-frame scale normalisation (steps 2), iterated until stable."""
        p = self.p
        n = len(points)
        segments = rf.segments_from_splits(observed, [], 1)
        splits: list[int] = []
        for _ in range(2):
            scale = np.ones(n)
            for start, end in segments:
                idx = np.flatnonzero(observed[start:end]) + start
                betas = self.smpl.estimate_shape(points[idx], w[idx], p.fit, prelim=True)
                s = self.smpl.frame_scales(points[idx], w[idx], betas)
                scale[idx] = s / np.median(s)
            scaled = _scale_about(points[:, -NUM_JOINTS:], cam, scale.astype(np.float32))
            centre, cw = _body_centre(scaled, w)
            found = rf.detect_splits(
                centre, cw, self.root_kernel, p.split_threshold_m, p.filter_eps_m,
                p.filter_iterations, p.gap_speed_mps / self.fps,
            )  # fmt: skip
            merged = sorted(set(splits) | set(found))
            new_segments = rf.segments_from_splits(observed, merged, p.min_segment_frames)
            if new_segments == segments:
                break
            splits, segments = merged, new_segments
        return segments, scale

    def fit(self, track: TrackInput, cam_all: np.ndarray, num_frames: int) -> TrackFit:
        p = self.p
        first, last = int(track.frame_indices[0]), int(track.frame_indices[-1])
        n = last - first + 1
        local = track.frame_indices - first
        n_pts = track.points_m.shape[1]
        points = np.zeros((n, n_pts, 3), np.float32)
        unc = np.full((n, n_pts), np.nan, np.float32)
        points[local] = track.points_m
        unc[local] = track.uncertainties_m
        w = _weights(unc, p.uncertainty_exponent)
        points[w == 0] = 0
        cam = cam_all[first : last + 1].astype(np.float32)
        observed = w[:, -NUM_JOINTS:].sum(1) > 0

        segments, scale = self._segments(points, w, observed, cam)
        in_segment = np.zeros(n, bool)
        for start, end in segments:
            in_segment[start:end] = True
        observed &= in_segment
        w[~observed] = 0
        points = _scale_about(points, cam, scale.astype(np.float32))

        # Depth of the body centre smoothed along the camera rays.
        centre, cw = _body_centre(points, w)
        smoothed, _ = rf.smooth_segments(
            centre[:, None], cw[:, None], segments, self.root_kernel, p.filter_eps_m,
            p.filter_iterations,
        )  # fmt: skip
        sigma = np.where(observed, _ray_scale(smoothed[:, 0], centre, cam), 1.0)
        sigma = np.nan_to_num(sigma, nan=1.0).astype(np.float32)
        points = _scale_about(points, cam, sigma)
        scale = np.where(observed, scale * sigma, np.nan)

        # Whole-frame outliers: the centre far from what its neighbours say. Where the
        # neighbours lie mostly on one side (a gap or the segment's end), their estimate lags
        # behind a moving body, so the limit grows by how far it may move over that lag.
        centre, cw = _body_centre(points, w)
        loo_kernel = self.root_kernel.copy()
        loo_kernel[len(loo_kernel) // 2] = 0
        neighbours, _ = rf.smooth_segments(
            centre[:, None], cw[:, None], segments, loo_kernel, p.filter_eps_m, p.filter_iterations
        )
        lag = np.zeros(n)
        for start, end in segments:
            lag[start:end] = rf.window_offset(cw[start:end], loo_kernel)
        limit = p.outlier_threshold_m + p.gap_speed_mps * np.abs(lag) / self.fps
        residual = np.linalg.norm(centre - neighbours[:, 0], axis=-1)
        outlier = observed & (residual > limit)
        observed &= ~outlier
        w[~observed] = 0
        scale[outlier] = np.nan

        smoothed, w_out = rf.smooth_segments(
            points, w, segments, self.point_kernel, p.filter_eps_m, p.filter_iterations,
            self.point_fit_kernel,
        )  # fmt: skip
        radius = len(self.point_kernel) // 2
        valid = np.zeros(n, bool)
        for start, end in segments:
            valid[start:end] = rf.two_sided_support(observed[start:end], radius)
        del points

        cam_out = cam
        if self.factor == 2:
            at_end = last == num_frames - 1
            smoothed, valid_d, seg_d = double_frames(smoothed, valid, segments, at_end)
            w_out, _, _ = double_frames(w_out, valid, segments, at_end)
            scale, _, _ = double_frames(scale, valid, segments, at_end)
            cam_out, _, _ = double_frames(cam, np.ones(n, bool), [(0, n)], True)
            valid, segments = valid_d, seg_d
        n_out = len(smoothed)

        pose = np.full((n_out, 72), np.nan, np.float32)
        trans = np.full((n_out, 3), np.nan, np.float32)
        joints = np.full((n_out, NUM_JOINTS, 3), np.nan, np.float32)
        betas_all = []
        for start, end in segments:
            idx = np.flatnonzero(valid[start:end]) + start
            pts, wts = smoothed[idx], np.nan_to_num(w_out[idx])
            betas = self.smpl.estimate_shape(pts, wts, p.fit)
            pose[idx], trans[idx] = self.smpl.fit_poses(pts, wts, betas, p.fit)
            joints[idx] = self.smpl.joints(pose[idx], betas, trans[idx])
            betas_all.append(betas)

        # Post-fit: the fitted pelvis smoothed along the camera rays.
        root = np.nan_to_num(joints[:, 0])
        filtered, _ = rf.smooth_segments(
            root[:, None], valid[:, None].astype(np.float32), segments, self.post_kernel,
            p.filter_eps_m, p.filter_iterations,
        )  # fmt: skip
        offset = np.where(valid[:, None], along_ray_offset(root, filtered[:, 0], cam_out), np.nan)
        trans = trans + offset
        joints = joints + offset[:, None]

        t_out = num_frames * self.factor
        span = slice(first * self.factor, first * self.factor + n_out)

        def place(a: np.ndarray, fill=np.nan) -> np.ndarray:
            full = np.full((t_out, *a.shape[1:]), fill, a.dtype)
            full[span] = a
            return full

        offset_frames = first * self.factor
        return TrackFit(
            track_id=track.track_id,
            pose_rotvecs=place(pose),
            trans=place(trans),
            shape_betas=np.array(betas_all, np.float32).reshape(-1, 10),
            segments=np.array(
                [(a + offset_frames, b + offset_frames) for a, b in segments], np.int64
            ).reshape(-1, 2),
            scale=place(np.where(valid, scale, np.nan).astype(np.float32)),
            valid=place(valid, False),
            joints=place(joints),
        )


def _fit_tracks(
    fitter: TrackFitter,
    tracks: Iterable[TrackInput],
    cam_m: np.ndarray,
    num_frames: int,
    workers: int,
    on_track: Callable[[int], None] | None,
) -> list[TrackFit]:
    """Fits of `tracks` in their order, at most `workers` at a time; `on_track` is called in
    order on the calling thread. If it raises (cancellation), tracks not yet started are
    dropped."""
    fits: list[TrackFit] = []
    pending: deque[Future] = deque()

    def collect() -> None:
        fits.append(pending.popleft().result())
        if on_track:
            on_track(fits[-1].track_id)

    with ThreadPoolExecutor(workers, thread_name_prefix="fitting") as pool:
        try:
            for track in tracks:
                pending.append(pool.submit(fitter.fit, track, cam_m, num_frames))
                if len(pending) >= workers:
                    collect()
            while pending:
                collect()
        finally:
            for future in pending:
                future.cancel()
    return fits


def run_fitting(
    tracks: Iterable[TrackInput],
    cameras: CameraTrack,
    smpl: SmplFitter,
    fps: float,
    fps_factor: int,
    params: FittingParams | None = None,
    on_track: Callable[[int], None] | None = None,
) -> StageOutput:
    """The whole stage on arrays. `tracks` may be a generator (one track in memory at a time)."""
    params = params or FittingParams()
    num_frames = len(cameras)
    cam_m = cameras.optical_center / 1000.0
    fitter = TrackFitter(smpl, params, fps, fps_factor)
    # The fits are many small ops: torch's own threads would mostly wait on each other (and
    # stall when the machine is busy), so torch runs on one thread and tracks run in parallel.
    with torch_threads(1):
        fits = _fit_tracks(fitter, tracks, cam_m, num_frames, params.workers, on_track)

    feet = [f.joints[f.valid][:, FOOT_JOINTS].reshape(-1, 3) * 1000 for f in fits]
    ground = fit_ground(
        np.concatenate(feet) if feet else np.zeros((0, 3)),
        cameras.world_up,
        params.ground_threshold_mm,
        params.ground_iterations,
        sole_offset_mm=smpl.sole_offset_m * 1000,
    )
    display = double_cameras(cameras) if fps_factor == 2 else cameras
    t_out = len(display)
    people = np.full((t_out, max(len(fits), 1), 3), np.nan)
    for k, f in enumerate(fits):
        people[:, k] = f.joints.mean(axis=1) * 1000
    viewer = viewer_trajectory(
        display, people, fps * fps_factor, ground.up, params.viewer_start_s, params.viewer_ease_s
    )
    return StageOutput(fits, ground, viewer, display)
