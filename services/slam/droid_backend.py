"""The `droid` backend: masked DROID-SLAM (the reference's engine) behind our interface.

The engine is the upstream `droid_slam` package built in the slam image (CUDA extensions
`droid_backends` and `lietorch`); this module only uses its public surface, so tests drive it
with a stand-in of the same interface:
`Droid(argparse.Namespace)`, `track(t, image[1, 3, h, w] uint8, intrinsics=[fx, fy, cx, cy],
mask=uint8[h/8, w/8])`, `terminate(stream of (t, image, intrinsics)) -> (T, 7)` camera-to-world
poses `[tx, ty, tz, qx, qy, qz, qw]`, `compute_error()`, and the state `video.counter.value`,
`video.tstamp`, `video.disps_up`.

Masks: images are blacked out at person pixels and the mask (255 = person) goes to DROID at
1/8 resolution, where the masked variant zeroes the flow confidence weights of those pixels.
Intrinsics: a given FOV is used as is; otherwise the reference's search (55 degrees first,
then 50..70 in 5 degree steps, then +-2 degrees in 1 degree steps around the best; score:
`compute_error()` after the engine's global bundle adjustment) on every 5th frame (at most
200). Static: that calibration run at 55 degrees accepting at most 1 keyframe. Long videos:
chunks of at most `buffer` frames (so the 512-keyframe buffer can never overflow), each a new
engine, joined by a similarity transform on `overlap` shared frames.
"""

import argparse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from services.common.errors import PreconditionFailed
from services.slam.backend import (
    ADVICE,
    CameraPrior,
    DepthSamples,
    FrameSource,
    Trajectory,
    static_trajectory,
)
from services.slam.chunks import join_chunks, plan_chunks
from services.slam.geometry import focal_from_fov, fov_from_focal


@dataclass(frozen=True)
class DroidSettings:
    """The reference's DROID-SLAM parameters (main run; calibration overrides the frontend)."""

    buffer: int = 512
    filter_thresh: float = 2.4
    keyframe_thresh: float = 4.0
    frontend_window: int = 25
    frontend_thresh: float = 16.0
    frontend_radius: int = 2
    frontend_nms: int = 1
    backend_thresh: float = 22.0
    backend_radius: int = 2
    backend_nms: int = 3
    beta: float = 0.3
    warmup: int = 8
    calibration_window: int = 10
    calibration_thresh: float = 10.0
    calibration_stride: int = 5
    calibration_max_frames: int = 200
    default_fov_deg: float = 55.0
    coarse_fovs: tuple[float, ...] = (50.0, 55.0, 60.0, 65.0, 70.0)
    refine_radius_deg: int = 2
    static_max_keyframes: int = 1
    overlap: int = 16
    depth_samples_per_keyframe: int = 2000

    def namespace(self, weights: str, shape: tuple[int, int], calibration: bool):
        """The argparse.Namespace DROID's constructor reads."""
        return argparse.Namespace(
            weights=weights, buffer=self.buffer, image_size=list(shape), stereo=False,
            disable_vis=True, upsample=True, beta=self.beta, filter_thresh=self.filter_thresh,
            warmup=self.warmup, keyframe_thresh=self.keyframe_thresh,
            frontend_thresh=self.calibration_thresh if calibration else self.frontend_thresh,
            frontend_window=self.calibration_window if calibration else self.frontend_window,
            frontend_radius=self.frontend_radius, frontend_nms=self.frontend_nms,
            backend_thresh=self.backend_thresh, backend_radius=self.backend_radius,
            backend_nms=self.backend_nms, t0=0, stride=1,
        )  # fmt: skip


@dataclass
class _Run:
    """One engine run's outcome."""

    frames: list[int]
    poses: np.ndarray  # (T, 7) camera-to-world
    keyframes: list[int]  # video frame indices
    error: float
    depth: list[DepthSamples] = field(default_factory=list)


class DroidBackend:
    """Masked DROID-SLAM; see the module docstring."""

    name = "droid"
    size_multiple = 8

    def __init__(self, engine: Callable, weights: str, device: str,
                 settings: DroidSettings = DroidSettings()):  # fmt: skip
        self.engine = engine  # the Droid class (or a stand-in)
        self.weights = weights
        self.device = device
        self.settings = settings

    def estimate(self, source: FrameSource, prior: CameraPrior, run) -> Trajectory:
        s = self.settings
        frames = list(range(source.num_frames))
        calibration = frames[:: s.calibration_stride][: s.calibration_max_frames]
        details: dict = {"fov_search": []}
        if len(calibration) < 2:
            raise PreconditionFailed(f"the video has {source.num_frames} frames; too short "
                                     f"to estimate camera motion; {ADVICE}")  # fmt: skip
        first_fov = fov_from_focal(prior.focal, source.shape[1], source.shape[0]) \
            if prior.known else s.default_fov_deg  # fmt: skip
        with run.step("calibrate"):
            probe = self._run(source, calibration, self._focal(first_fov, source), True, run)
        details["fov_search"].append({"fov_deg": first_fov, "error": probe.error,
                                      "keyframes": len(probe.keyframes)})  # fmt: skip
        details["calibration_keyframes"] = len(probe.keyframes)
        if len(probe.keyframes) <= s.static_max_keyframes:
            return static_trajectory(source.num_frames, prior.focal,
                                     "given" if prior.known else "default", details)  # fmt: skip
        focal, focal_source = prior.focal, "given"
        if not prior.known:
            with run.step("calibrate"):
                fov = self._search_fov(source, calibration, details["fov_search"], run)
            focal, focal_source = self._focal(fov, source), "fov search"
        parts, runs = [], []
        chunks = plan_chunks(frames, s.buffer, s.overlap)
        with run.step("track"):
            for c, chunk in enumerate(chunks):
                run.progress(c, len(chunks), f"tracking {len(chunk)} frames", "track")
                result = self._run(source, chunk, focal, False, run)
                rotations, centres = _to_cameras(result.poses)
                parts.append((result.frames, rotations, centres))
                runs.append(result)
        joined, rotations, centres, scales = join_chunks(parts)
        order = np.argsort(joined)
        keyframes = sorted({k for r in runs for k in r.keyframes})
        depth = [d for r, scale in zip(runs, [1.0, *scales], strict=True)
                 for d in _scaled(r.depth, scale)]  # fmt: skip
        details.update(chunks=len(chunks), chunk_scales=scales)
        return Trajectory(
            rotations=rotations[order], centres=centres[order], keyframes=keyframes,
            focal=focal, focal_source=focal_source, static=False,
            reprojection_error_px=float("nan"), depth_samples=depth, details=details,
        )  # fmt: skip

    def _focal(self, fov: float, source: FrameSource) -> float:
        return focal_from_fov(fov, source.shape[1], source.shape[0])

    def _search_fov(self, source, calibration, log: list, run) -> float:
        """Coarse candidates, then 1-degree steps around the best (reference order)."""
        scores = {entry["fov_deg"]: entry["error"] for entry in log}

        def score(fov: float) -> float:
            if fov not in scores:
                result = self._run(source, calibration, self._focal(fov, source), True, run)
                scores[fov] = result.error
                log.append({"fov_deg": fov, "error": result.error,
                            "keyframes": len(result.keyframes)})  # fmt: skip
            return scores[fov]

        best = min(self.settings.coarse_fovs, key=score)
        radius = self.settings.refine_radius_deg
        return min((best + d for d in range(-radius, radius + 1)), key=score)

    def _run(self, source: FrameSource, frames: list[int], focal: float, calibration: bool,
             run) -> _Run:  # fmt: skip
        import torch

        s = self.settings
        droid = self.engine(s.namespace(self.weights, source.shape, calibration))
        height, width = source.shape
        intrinsics = torch.tensor([focal, focal, (width - 1) / 2, (height - 1) / 2])
        wanted = set(frames)

        def images() -> Iterator[tuple[int, object, object, np.ndarray]]:
            # timestamps are video frame indices (gaps in the calibration's strided frames)
            for index, image, mask in source.stream(wanted):
                yield index, _tensor(image, mask, self.device), intrinsics, mask

        for t, image, k, mask in images():
            droid.track(t, image, intrinsics=k, mask=_eighth(mask, self.device))
            if t % 20 == 0:
                run.check_cancelled()
        count = int(droid.video.counter.value)
        keyframes = [int(i) for i in droid.video.tstamp[:count].tolist()]
        poses = np.asarray(droid.terminate((t, im, k) for t, im, k, _ in images()), np.float64)
        error = float(droid.compute_error()) if calibration else float("nan")
        depth = [] if calibration else self._depth_samples(droid, count, keyframes)
        if len(poses) != len(frames):
            raise PreconditionFailed(f"DROID-SLAM returned {len(poses)} poses for "
                                     f"{len(frames)} frames; {ADVICE}")  # fmt: skip
        return _Run(frames, poses, keyframes, error, depth)

    def _depth_samples(self, droid, count: int, keyframes: list[int]) -> list[DepthSamples]:
        """Depth (1 / disparity) at a fixed pixel sample of each keyframe's upsampled map."""
        disps = droid.video.disps_up[:count]
        disps = disps.float().cpu().numpy() if hasattr(disps, "cpu") else np.asarray(disps)
        rng = np.random.default_rng(0)
        height, width = disps.shape[1:]
        n = min(self.settings.depth_samples_per_keyframe, height * width)
        samples = []
        for k, disp in zip(keyframes, disps, strict=True):
            idx = rng.choice(height * width, n, replace=False)
            y, x = np.divmod(idx, width)
            d = disp[y, x]
            ok = d > 1e-6
            samples.append(DepthSamples(k, np.stack([x[ok], y[ok]], 1).astype(float), 1 / d[ok]))
        return samples


def _to_cameras(poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Camera-to-world [t, q(x, y, z, w)] -> world->camera rotations and centres."""
    rotations = Rotation.from_quat(poses[:, 3:7]).as_matrix().transpose(0, 2, 1)
    return rotations, poses[:, :3].copy()


def _scaled(samples: list[DepthSamples], scale: float) -> list[DepthSamples]:
    return [DepthSamples(s.frame, s.xy, s.depth * scale) for s in samples]


def _tensor(image: np.ndarray, mask: np.ndarray, device: str):
    """[1, 3, h, w] uint8 with person pixels blacked out (the masked variant's input)."""
    import torch

    blacked = np.where(mask[..., None], 0, image)
    return torch.from_numpy(np.ascontiguousarray(blacked)).permute(2, 0, 1)[None].to(device)


def _eighth(mask: np.ndarray, device: str):
    """The mask at 1/8 resolution, uint8 255 where any covered pixel is a person."""
    import torch

    height, width = mask.shape
    small = cv2.resize(mask.astype(np.uint8), (width // 8, height // 8),
                       interpolation=cv2.INTER_AREA) > 0  # fmt: skip
    return torch.from_numpy(np.where(small, 255, 0).astype(np.uint8)).to(device)
