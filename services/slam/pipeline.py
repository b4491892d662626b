"""The slam stage's computation.

Pass 1 (`compute_slam`): video + semseg masks + track masks -> per-frame cameras, a report and
a trajectory preview. The backend gives poses up to scale; the stage re-bases them on the
first camera (world = first camera frame, world up (0, -1, 0)), scales them to metres and
optionally smooths them on SE(3).

Where the metric scale comes from (`scale_source`):
- `depth`: a metric depth model on the keyframes' background (pass 1 applies it);
- `people`: the people-anchored scale, from the pose stage's predictions; these are made with
  pass 1's cameras, so pass 2 (`compute_people_scale`) takes them and publishes the metric
  cameras; the fitting stage expresses the predictions through the cameras it is given;
- `auto`: both when the depth model's weights are present (both reported with their
  agreement); the people-anchored scale is applied when the video constrains it (relative
  error below 10%), else the depth model's, else the people-anchored one flagged
  `scale.uncertain` in the report; FAILED_PRECONDITION when there is none at all;
- `none`: not metric; the provisional unit (median scene depth = PROVISIONAL_DEPTH_M) stays.

Until a metric scale is applied, cameras carry the provisional unit (SLAM units normalised so
that the median depth of the reconstructed background is PROVISIONAL_DEPTH_M).
"""

import json
import time
from dataclasses import asdict, dataclass

import numpy as np

from services.common.errors import InvalidInput, PreconditionFailed
from services.common.formats import cameras as cameras_format
from services.common.formats.cameras import CameraTrack, intrinsics_from_fov
from services.common.formats.masks import read_track_masks
from services.common.formats.predictions import PredictionsReader
from services.common.frames import Video
from services.common.slam_frames import slam_frames
from services.common.stagerun import OutputFile, StageOutputs, StageRun
from services.slam.backend import CameraPrior, FrameSource, SlamBackend, Trajectory, slam_shape
from services.slam.depth_model import MetricDepthModel
from services.slam.geometry import fov_from_focal, relative_to_first, smooth
from services.slam.masks import SlamMasks, check_masks_match
from services.slam.preview import write_preview
from services.slam.scale import (
    PersonTrack,
    ScaleEstimate,
    agreement,
    depth_model_scale,
    inside_image,
    people_scale,
)

STAGE = "slam"
VERSION = "2"  # 2: deterministic colmap, cubic pose interpolation, spline people scale
REPORT_FORMAT = "nlfpipe.slam-report/1"
PROVISIONAL_DEPTH_M = 4.0
SCALE_SOURCES = ("auto", "people", "depth", "none")
CAMERA_MOTIONS = ("auto", "static", "moving")


@dataclass(frozen=True)
class SlamParams:
    """Parameters of one slam run."""

    backend: str = "colmap"
    camera_motion: str = "auto"
    fov_deg: float = 0.0  # 0: unknown, estimated
    intrinsics: tuple[float, ...] = ()  # fx, fy, cx, cy in video pixels; empty: unknown
    scale_source: str = "auto"
    smoothing_sigma_s: float = 0.0  # 0: no smoothing
    target_pixels: int = 384 * 512
    chunk_keyframes: int = 0  # 0: the backend's default

    def __post_init__(self):
        if self.camera_motion not in CAMERA_MOTIONS:
            raise InvalidInput(f"camera_motion {self.camera_motion!r} is not one of "
                               f"{', '.join(CAMERA_MOTIONS)}")  # fmt: skip
        if self.scale_source not in SCALE_SOURCES:
            raise InvalidInput(f"scale_source {self.scale_source!r} is not one of "
                               f"{', '.join(SCALE_SOURCES)}")  # fmt: skip
        if self.fov_deg and not 1 < self.fov_deg < 179:
            raise InvalidInput(f"fov_deg={self.fov_deg} must be between 1 and 179 degrees")
        if self.intrinsics and (len(self.intrinsics) != 4 or min(self.intrinsics[:2]) <= 0):
            raise InvalidInput("intrinsics must be 4 numbers fx, fy, cx, cy with fx, fy > 0")
        if self.fov_deg and self.intrinsics:
            raise InvalidInput("give either fov_deg or intrinsics, not both")
        if not 0 <= self.smoothing_sigma_s <= 5:
            raise InvalidInput(f"smoothing_sigma_s={self.smoothing_sigma_s} must be in 0..5 s")
        if not 16 * 16 <= self.target_pixels <= 4096 * 4096:
            raise InvalidInput(f"target_pixels={self.target_pixels} is out of range")
        if self.chunk_keyframes and self.chunk_keyframes < 8:
            raise InvalidInput(f"chunk_keyframes={self.chunk_keyframes} must be at least 8")

    def to_dict(self) -> dict:
        return {**asdict(self), "intrinsics": list(self.intrinsics)}


def compute_slam(
    run: StageRun, params: SlamParams, backend: SlamBackend | None,
    depth_model: MetricDepthModel | None,
) -> StageOutputs:  # fmt: skip
    """Pass 1: cameras of every frame of `run.inputs["video"]`."""
    started = time.perf_counter()
    video = Video(run.inputs["video"])
    width, height = video.width, video.height
    if params.camera_motion == "static":
        k = _full_intrinsics(params, width, height)
        track = CameraTrack.static(video.num_frames, width, height, intrinsics=k)
        report = _report(
            params,
            "none",
            track,
            True,
            [],
            "given" if _known(params) else "default",
            {"source": "none", "applied": 1.0, "metric": True},
            {},
            started,
        )
        return _outputs(run, track, report, needs_people_scale=False)
    semseg, tracks = _read_masks(run, video)
    shape = slam_shape(height, width, params.target_pixels, backend.size_multiple)
    masks = SlamMasks(semseg, tracks, shape)
    candidates = _candidates(semseg, video, backend.name)
    source = FrameSource(video, masks, shape, candidates)
    prior = _prior(params, shape, width, height)
    if params.scale_source == "depth" and depth_model is None:
        raise PreconditionFailed(
            "scale_source=depth needs the metric depth model: `nlfpipe models fetch "
            "depth-anything-metric`, or use scale_source=people"
        )
    trajectory = backend.estimate(source, prior, run)
    if trajectory.static and params.camera_motion == "moving":
        raise PreconditionFailed(
            "camera_motion=moving, but the background did not move in the image; "
            "the video looks like a static camera: use --static-camera"
        )
    rotations, centres = relative_to_first(trajectory.rotations, trajectory.centres)
    scale, needs_people = _first_scale(run, params, trajectory, rotations, centres, source,
                                       depth_model)  # fmt: skip
    centres = centres * scale["applied"]
    if params.smoothing_sigma_s > 0 and not trajectory.static:
        rotations, centres = smooth(rotations, centres, params.smoothing_sigma_s * video.fps)
    k = _full_intrinsics(params, width, height, trajectory.focal, shape)
    track = CameraTrack(
        intrinsics=np.repeat(k[None], video.num_frames, 0),
        rotation=rotations,
        optical_center=centres * 1000,
        distortion=np.zeros((video.num_frames, 5)),
        world_up=np.array([0.0, -1.0, 0.0]),
        image_size=(width, height),
    )
    report = _report(params, backend.name, track, trajectory.static, trajectory.keyframes,
                     trajectory.focal_source, scale, trajectory.details, started,
                     trajectory.reprojection_error_px, shape)  # fmt: skip
    return _outputs(run, track, report, needs_people_scale=needs_people)


def compute_people_scale(run: StageRun, fps: float) -> StageOutputs:
    """Pass 2: the people-anchored scale from predictions made with pass 1's cameras; writes
    the metric cameras, the final report and preview."""
    started = time.perf_counter()
    track = CameraTrack.load(run.inputs["cameras"])
    report = json.loads(run.inputs["report"].read_text())
    if report.get("format") != REPORT_FORMAT:
        raise InvalidInput(f"report: format {report.get('format')!r}, want {REPORT_FORMAT}")
    people = _people_tracks(run.inputs["predictions"], len(track), track.image_size)
    rotations, centres = track.rotation, track.optical_center / 1000
    estimate = people_scale(people, rotations, centres, fps)
    scale = dict(report["scale"])
    provisional = float(scale["applied"])
    scale["people"] = {**estimate.to_dict(), "scale": estimate.scale * provisional}
    depth = scale.get("depth")
    if depth and estimate.observable:
        scale["agreement"] = agreement(
            ScaleEstimate(depth["scale"], 0, 0, "depth"),
            ScaleEstimate(estimate.scale * provisional, 0, 0, "people"),
        )
    factor = 1.0
    depth_applied = bool(depth and depth["observable"] and scale["source"] == "depth")
    if estimate.observable:
        factor, scale["source"] = estimate.scale, "people"
    elif depth_applied:
        pass
    elif report["params"]["scale_source"] == "auto" and np.isfinite(estimate.scale) \
            and estimate.scale > 0:  # fmt: skip
        # auto: the best estimate there is, flagged; an explicit source must be constrained
        factor, scale["source"], scale["uncertain"] = estimate.scale, "people", True
    else:
        raise PreconditionFailed(
            "the metric scale could not be determined: the people-anchored estimate is not "
            f"constrained by this video (relative error {estimate.relative_error:.0%}; the "
            "camera must accelerate while people are visible) and no depth-model scale is "
            "available; fetch the depth model (`nlfpipe models fetch depth-anything-metric`) "
            "or accept an arbitrary scale with --scale-source none"
        )
    scale["applied"] = provisional * factor
    scale["metric"] = True
    metric = CameraTrack(track.intrinsics, track.rotation, track.optical_center * factor,
                         track.distortion, track.world_up, track.image_size)  # fmt: skip
    report["scale"] = scale
    report["timings_s"]["people_scale"] = round(time.perf_counter() - started, 3)
    return _outputs(run, metric, report, needs_people_scale=False)


# ---------------------------------------------------------------------------------------------


def _known(params: SlamParams) -> bool:
    return bool(params.fov_deg or params.intrinsics)


def _read_masks(run: StageRun, video: Video):
    semseg = tracks = None
    if "semseg_masks" in run.inputs:
        semseg = read_track_masks(run.inputs["semseg_masks"])
        check_masks_match(semseg, "semseg_masks", video.num_frames, video.width, video.height)
    if "track_masks" in run.inputs:
        tracks = read_track_masks(run.inputs["track_masks"])
        check_masks_match(tracks, "track_masks", video.num_frames, video.width, video.height)
    if semseg is None and tracks is None:
        raise InvalidInput(
            "semseg_masks and track_masks are missing; a moving camera needs at least one "
            "(or set camera_motion=static)"
        )
    return semseg, tracks


def _candidates(semseg, video: Video, backend: str) -> list[int]:
    """The frames keyframes may come from: those semseg segmented, else the policy's."""
    policy = slam_frames(video.num_frames, video.fps, backend)
    computed = semseg.meta.get("computed_frames") if semseg is not None else None
    if computed is None:
        return policy
    return sorted({int(f) for f in computed} | ({0, video.num_frames - 1} & set(policy)))


def _prior(params: SlamParams, shape, width: int, height: int) -> CameraPrior:
    sx = shape[1] / width
    if params.intrinsics:
        fx, fy = params.intrinsics[:2]
        return CameraPrior(focal=(fx * sx + fy * shape[0] / height) / 2, known=True)
    fov = params.fov_deg or cameras_format.DEFAULT_FOV_DEGREES
    return CameraPrior(intrinsics_from_fov(fov, shape[1], shape[0])[0, 0],
                       known=bool(params.fov_deg))  # fmt: skip


def _full_intrinsics(params: SlamParams, width: int, height: int, focal: float | None = None,
                     shape: tuple[int, int] | None = None) -> np.ndarray:  # fmt: skip
    """K at video resolution: the given one, or the estimated focal scaled up per axis."""
    if params.intrinsics:
        fx, fy, cx, cy = params.intrinsics
        return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], np.float64)
    k = intrinsics_from_fov(params.fov_deg or cameras_format.DEFAULT_FOV_DEGREES, width, height)
    if focal is not None and shape is not None and not params.fov_deg:
        k[0, 0] = focal * width / shape[1]
        k[1, 1] = focal * height / shape[0]
    return k


def _first_scale(run, params, trajectory: Trajectory, rotations, centres, source, depth_model):
    """Pass 1's scale entry (metres per backend unit) and whether pass 2 must follow."""
    if trajectory.static:
        return {"source": "none", "applied": 1.0, "metric": True}, False
    provisional = _provisional_scale(trajectory)
    scale = {"source": "provisional", "applied": provisional, "metric": False,
             "provisional_depth_m": PROVISIONAL_DEPTH_M}  # fmt: skip
    if params.scale_source == "none":
        return scale, False
    if depth_model is not None and params.scale_source in ("auto", "depth"):
        with run.step("depth scale"):
            estimate = _depth_scale(trajectory, source, depth_model, run)
        scale["depth"] = estimate.to_dict()
        if estimate.observable:
            scale.update(source="depth", applied=estimate.scale, metric=True)
        elif params.scale_source == "depth":
            raise PreconditionFailed(
                f"the depth model gave no consistent scale ({estimate.samples} keyframes, "
                f"relative spread {estimate.relative_error:.0%}); try --scale-source people"
            )
    return scale, params.scale_source in ("auto", "people")


def _provisional_scale(trajectory: Trajectory) -> float:
    depths = [s.depth for s in trajectory.depth_samples if len(s.depth)]
    if not depths:
        return 1.0
    median = float(np.median(np.concatenate(depths)))
    return PROVISIONAL_DEPTH_M / median if median > 0 else 1.0


def _depth_scale(trajectory: Trajectory, source: FrameSource, model, run) -> ScaleEstimate:
    samples = {s.frame: s for s in trajectory.depth_samples}
    predicted, used = [], []
    for index, image, _ in source.stream(set(samples)):
        predicted.append(model.predict(image))
        used.append(samples[index])
        run.progress(len(used), len(samples), "metric depth of keyframes", "depth scale")
        run.check_cancelled()
    return depth_model_scale(used, predicted)


def _people_tracks(path, num_frames: int, image_size: tuple[int, int]) -> list[PersonTrack]:
    """Each track's camera-space centre (mean joint) per frame, metres, where the person's
    joints all project inside the image."""
    rows: dict[int, dict[str, list]] = {}
    reader = PredictionsReader(path)
    if reader.num_frames != num_frames:
        raise InvalidInput(
            f"predictions: {reader.num_frames} frames for {num_frames} cameras; give the "
            "predictions made with these cameras"
        )
    for frame in reader:
        if not frame.num_people:
            continue
        r, c = frame.camera.rot_world_to_cam, frame.camera.optical_center
        joints_cam = (frame.joints.astype(np.float64) - c) @ r.T / 1000
        projected = joints_cam @ frame.camera.intrinsic_matrix.T
        whole = inside_image(projected[..., :2] / projected[..., 2:3], *image_size)
        for i, tid in enumerate(frame.track_ids.tolist()):
            if not whole[i]:
                continue
            row = rows.setdefault(tid, {"frames": [], "centres": []})
            row["frames"].append(frame.frame_index)
            row["centres"].append(joints_cam[i].mean(0))
    return [
        PersonTrack(np.asarray(r["frames"]), np.asarray(r["centres"]))
        for _, r in sorted(rows.items())
        if len(r["frames"]) >= 3
    ]


def _report(params, backend, track: CameraTrack, static, keyframes, focal_source, scale,
            details, started, reprojection_error=float("nan"), shape=None) -> dict:  # fmt: skip
    width, height = track.image_size
    k = track.intrinsics[0]
    return {
        "format": REPORT_FORMAT,
        "backend": backend,
        "static_camera": bool(static),
        "frames": len(track),
        "keyframes": [int(f) for f in keyframes],
        "keyframe_count": len(keyframes),
        "intrinsics": {
            "fx": float(k[0, 0]),
            "fy": float(k[1, 1]),
            "cx": float(k[0, 2]),
            "cy": float(k[1, 2]),
            "fov_deg": fov_from_focal(float(k[0, 0]), width, height),
            "source": focal_source,
        },  # fmt: skip
        "scale": scale,
        "reprojection_error_px": None
        if not np.isfinite(reprojection_error)
        else float(reprojection_error),
        "working_resolution": list(shape[::-1]) if shape else None,
        "smoothing_sigma_s": params.smoothing_sigma_s,
        "path_length_m": float(
            np.linalg.norm(np.diff(track.optical_center, axis=0), axis=1).sum() / 1000
        ),  # fmt: skip
        "details": details,
        "timings_s": {"total": round(time.perf_counter() - started, 3)},
        "params": params.to_dict(),
    }


def _outputs(run: StageRun, track: CameraTrack, report: dict, needs_people_scale: bool):
    cameras_path = run.workdir / "cameras.npz"
    track.save(cameras_path)
    report["needs_people_scale"] = needs_people_scale
    report["timings_s"].update({name: round(t, 3) for name, t in run.timings.items()})
    report_path = run.workdir / "report.json"
    report_path.write_text(json.dumps(report, indent=1))
    preview_path = run.workdir / "trajectory.png"
    title = (f"{report['backend']}: {report['keyframe_count']} keyframes, "
             f"scale from {report['scale']['source']}")  # fmt: skip
    write_preview(preview_path, track.optical_center / 1000, report["keyframes"], title,
                  metric=bool(report["scale"].get("metric")))  # fmt: skip
    files = {
        "cameras": OutputFile(cameras_path, cameras_format.MEDIA_TYPE),
        "report": OutputFile(report_path, "application/json"),
        "preview": OutputFile(preview_path, "image/png"),
    }
    counts = {"frames": len(track), "keyframes": report["keyframe_count"]}
    extra = {
        "static_camera": report["static_camera"],
        "fov_deg": report["intrinsics"]["fov_deg"],
        "metric_scale": report["scale"]["applied"],
        "scale_source": report["scale"]["source"],
        "needs_people_scale": needs_people_scale,
    }
    return StageOutputs(files, counts, extra)
