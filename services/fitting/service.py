"""The fitting stage's gRPC servicer: validates a request, runs the fit through run_stage."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import numpy as np

from nlfpipe.fitting.v1 import fitting_pb2, fitting_pb2_grpc
from services.common import body_models
from services.common.errors import InvalidInput
from services.common.formats import cameras as cameras_format
from services.common.formats import fits as fits_format
from services.common.formats import ground as ground_format
from services.common.formats.cameras import CameraTrack
from services.common.formats.predictions import UNTRACKED, PredictionsReader
from services.common.identity import ModelIdentity, data_identity, with_identity
from services.common.server import (
    StageService,
    artifact_to_proto,
    stream_cached_run,
    summary_to_proto,
)
from services.common.settings import Settings
from services.common.stagerun import OutputFile, StageOutputs, StageResult, StageRun
from services.common.store import ArtifactStore
from services.fitting.pipeline import FittingParams, TrackInput, run_fitting
from services.fitting.preview import write_preview
from services.fitting.smpl_fit import FitSettings, SmplFitter

VERSION = "2"  # 2: noise-unbiased scale, local quadratic points, floor height
BODY_MODELS = ("smpl",)
GENDERS = {0: "neutral", 1: "neutral", 2: "female", 3: "male"}
log = logging.getLogger(__name__)


class BodyModels(body_models.BodyModels[SmplFitter]):
    """SmplFitter instances by (model, gender), loaded from the body model folder."""

    def __init__(self, settings: Settings):
        super().__init__(settings, SmplFitter, body_model_identity)


def body_model_identity(
    folder: Path, body_model: str, gender: str, smpl: SmplFitter
) -> ModelIdentity:
    """The body model files smplfitter read and the vertex subset the fit works on (from a
    subset file or computed from the template); the fit always runs on the CPU in float32."""
    files = body_models.file_identities(folder, body_model, gender)
    subset = np.ascontiguousarray(smpl.vertex_subset, np.int64)
    files.append(data_identity(body_model, f"vertex_subset[{len(subset)}]", subset.tobytes()))
    return ModelIdentity.of(files)


def validate(request: fitting_pb2.RunRequest) -> dict:
    """The canonical parameters of a request; InvalidInput names the bad field."""
    if not request.HasField("predictions") or not request.predictions.uri:
        raise InvalidInput("predictions: the pose predictions reference is required")
    if not np.isfinite(request.fps) or request.fps <= 0:
        raise InvalidInput(f"fps={request.fps} must be a positive frame rate")
    factor = request.fps_factor or 1
    if factor not in (1, 2):
        raise InvalidInput(f"fps_factor={request.fps_factor} must be 1 or 2")
    body_model = request.body_model or "smpl"
    if body_model not in BODY_MODELS:
        raise InvalidInput(f"body_model={body_model!r} is not one of {', '.join(BODY_MODELS)}")
    params = {
        "fps": float(request.fps),
        "fps_factor": int(factor),
        "body_model": body_model,
        "gender": GENDERS.get(request.gender, "neutral"),
        "split_threshold_m": request.split_threshold_m or 1.0,
        "filter_eps_m": request.filter_eps_m or 0.05,
        "filter_iterations": int(request.filter_iterations or 10),
        "outlier_threshold_m": request.outlier_threshold_m or 0.25,
        "uncertainty_exponent": request.uncertainty_exponent or 1.5,
        "fit_iterations": int(request.fit_iterations or 3),
        "beta_regularizer": request.beta_regularizer or 1.0,
        "ground_threshold_mm": request.ground_threshold_mm or 25.0,
        "viewer_start_s": request.viewer_start_s or 4.0,
        "viewer_ease_s": request.viewer_ease_s or 4.0,
        "write_preview": bool(request.write_preview),
    }
    for name, value in params.items():
        if isinstance(value, float) and (not np.isfinite(value) or value <= 0):
            raise InvalidInput(f"{name}={value} must be positive")
    if not request.HasField("cameras"):
        if not request.image_width or not request.image_height:
            raise InvalidInput("image_width and image_height are required without `cameras`")
        params.update(
            fov_degrees=request.fov_degrees or cameras_format.DEFAULT_FOV_DEGREES,
            image_width=int(request.image_width),
            image_height=int(request.image_height),
        )
    return params


def read_tracks(
    path: Path, vertex_subset: np.ndarray, cameras: CameraTrack | None = None
) -> tuple[int, list[TrackInput]]:
    """The predictions file as per-track arrays of the fitted points (subset vertices + joints,
    metres) and their uncertainties; refuses empty files, NaN/inf and one-frame tracks.

    With `cameras`, each frame's points are re-expressed through that frame's camera (camera
    coordinates of the prediction's own camera, then world coordinates of `cameras`): the slam
    stage's metric cameras differ from the provisional ones the pose stage ran with by the
    scale of the camera centres (docs/formats.md, "slam")."""
    reader = PredictionsReader(path, vertex_subset)
    parts: dict[int, dict[str, list]] = {}
    for frame in reader:
        rows = np.flatnonzero(frame.track_ids != UNTRACKED)
        points = np.concatenate([frame.vertices[rows], frame.joints[rows]], axis=1)
        if cameras is not None and frame.frame_index < len(cameras):
            own = frame.camera
            in_camera = (points - own.optical_center) @ own.rot_world_to_cam.T
            world = in_camera @ cameras.rotation[frame.frame_index]
            points = (world + cameras.optical_center[frame.frame_index]).astype(np.float32)
        unc = np.concatenate(
            [frame.vertex_uncertainties[rows], frame.joint_uncertainties[rows]], axis=1
        )
        finite = np.isfinite(points).all(axis=(1, 2)) & np.isfinite(unc).all(axis=1)
        if not finite.all():
            raise InvalidInput(
                f"predictions: frame {frame.frame_index}, track "
                f"{frame.track_ids[rows[~finite][0]]} has NaN or infinite values; re-run the "
                "pose stage"
            )
        for k, track_id in enumerate(frame.track_ids[rows].tolist()):
            part = parts.setdefault(track_id, {"frames": [], "points": [], "unc": []})
            part["frames"].append(frame.frame_index)
            part["points"].append(points[k])
            part["unc"].append(unc[k])
    if not parts:
        raise InvalidInput("predictions: no tracked person in any frame; nothing to fit")
    short = [tid for tid, part in parts.items() if len(part["frames"]) < 2]
    if short:
        raise InvalidInput(
            f"predictions: track(s) {short} appear in a single frame; a track needs at least 2 "
            "frames to be smoothed and fitted (drop them in the tracking stage)"
        )
    tracks = [
        TrackInput(tid, np.asarray(p["frames"]), np.stack(p["points"]) / np.float32(1000),
                   np.stack(p["unc"]))
        for tid, p in sorted(parts.items())
    ]  # fmt: skip
    return reader.num_frames, tracks


def compute_fits(run: StageRun, smpl: SmplFitter) -> StageOutputs:
    """The stage's compute function."""
    p = run.params
    with run.step("read"):
        given = CameraTrack.load(run.inputs["cameras"]) if "cameras" in run.inputs else None
        num_frames, tracks = read_tracks(run.inputs["predictions"], smpl.vertex_subset, given)
        if given is not None:
            cams = given
            if len(cams) != num_frames:
                raise InvalidInput(
                    f"cameras: {len(cams)} cameras for {num_frames} prediction frames; give the "
                    "cameras the pose stage used"
                )
        else:
            cams = CameraTrack.static(
                num_frames, p["image_width"], p["image_height"], p["fov_degrees"]
            )
    params = FittingParams(
        uncertainty_exponent=p["uncertainty_exponent"],
        split_threshold_m=p["split_threshold_m"],
        outlier_threshold_m=p["outlier_threshold_m"],
        filter_eps_m=p["filter_eps_m"],
        filter_iterations=p["filter_iterations"],
        fit=FitSettings(num_iter=p["fit_iterations"], beta_regularizer=p["beta_regularizer"]),
        ground_threshold_mm=p["ground_threshold_mm"],
        viewer_start_s=p["viewer_start_s"],
        viewer_ease_s=p["viewer_ease_s"],
    )
    done = []

    def on_track(track_id: int) -> None:
        done.append(track_id)
        run.progress(len(done), len(tracks), f"fitted track {track_id}", "fit")
        run.check_cancelled()

    with run.step("fit"):
        out = run_fitting(tracks, cams, smpl, p["fps"], p["fps_factor"], params, on_track)
    with run.step("write"):
        files = {}
        fits_path = run.workdir / "fits.npz"
        fits_format.save_fits(
            fits_path,
            [
                fits_format.TrackFits(
                    f.track_id, f.pose_rotvecs, f.trans, f.shape_betas, f.segments, f.scale, f.valid
                )
                for f in out.fits
            ],
            {
                "fps": p["fps"] * p["fps_factor"],
                "fps_factor": p["fps_factor"],
                "num_frames": num_frames * p["fps_factor"],
                "body_model": p["body_model"],
                "gender": p["gender"],
                "units": {"trans": "m", "pose_rotvecs": "rad"},
            },
        )
        files["fits"] = OutputFile(fits_path, fits_format.MEDIA_TYPE)
        g = out.ground
        ground_path = run.workdir / "ground.json"
        ground_format.save_ground(
            ground_path, g.up, g.height_mm, g.inliers, g.points, g.found,
            foot_joint_height_mm=g.foot_joint_height_mm, sole_offset_mm=g.sole_offset_mm,
            body_model=p["body_model"],
        )  # fmt: skip
        files["ground"] = OutputFile(ground_path, ground_format.MEDIA_TYPE)
        for name, track in (("viewer_cameras", out.viewer), ("display_cameras", out.display)):
            path = run.workdir / f"{name}.npz"
            track.save(path)
            files[name] = OutputFile(path, cameras_format.MEDIA_TYPE)
        if p["write_preview"]:
            preview = run.workdir / "preview.png"
            write_preview(
                preview,
                {f.track_id: f.joints[:, 0] * 1000 for f in out.fits},
                out.display.optical_center,
                out.viewer.optical_center,
                g.up,
            )
            files["preview"] = OutputFile(preview, "image/png")
    invalid = sum(int((~f.valid).sum()) for f in out.fits)
    return StageOutputs(
        files=files,
        counts={
            "tracks": len(out.fits),
            "frames": num_frames * p["fps_factor"],
            "segments": sum(len(f.segments) for f in out.fits),
            "invalid_frames": invalid,
            "ground_inliers": g.inliers,
        },
    )


class FittingServicer(fitting_pb2_grpc.FittingServiceServicer):
    """Thin translator between FittingService messages and the fitting pipeline."""

    def __init__(self, store: ArtifactStore, body_models: BodyModels):
        self.store = store
        self.body_models = body_models

    def Run(self, request, context):
        params = validate(request)
        smpl = self.body_models.get(params["body_model"], params["gender"])
        identity = self.body_models.identity(params["body_model"], params["gender"])
        params = with_identity(params, identity)
        inputs = {"predictions": request.predictions}
        if request.HasField("cameras"):
            inputs["cameras"] = request.cameras

        yield from stream_cached_run(
            context,
            fitting_pb2.RunResponse,
            self.store,
            _result_to_proto,
            stage="fitting",
            version=VERSION,
            inputs=inputs,
            params=params,
            compute=partial(compute_fits, smpl=smpl),
            force=request.force,
        )


def _result_to_proto(result: StageResult) -> fitting_pb2.RunResult:
    refs = {name: artifact_to_proto(info) for name, info in result.outputs.items()}
    return fitting_pb2.RunResult(summary=summary_to_proto(result), **refs)


def build(settings: Settings, store: ArtifactStore) -> StageService:
    """The fitting service; `load()` loads the neutral SMPL model (ModelNotReady if missing)."""
    body_models = BodyModels(settings)
    return StageService(
        stage="fitting",
        servicer=FittingServicer(store, body_models),
        add_to_server=fitting_pb2_grpc.add_FittingServiceServicer_to_server,
        load=lambda: body_models.get("smpl", "neutral"),
    )
