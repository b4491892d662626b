"""The pose stage's gRPC servicer: validates a request, runs NLF through run_stage."""

import logging
import os
import threading
from dataclasses import dataclass, fields
from functools import partial

import numpy as np

from nlfpipe.pose.v1 import pose_pb2, pose_pb2_grpc
from services.common import models
from services.common.errors import InvalidInput
from services.common.formats.predictions import MEDIA_TYPE
from services.common.identity import ModelIdentity, registry_files, with_identity
from services.common.server import (
    StageService,
    artifact_to_proto,
    stream_cached_run,
    summary_to_proto,
)
from services.common.settings import Settings, resolve_device
from services.common.stagerun import OutputFile, StageOutputs, StageResult, StageRun
from services.common.store import ArtifactStore
from services.pose.inference import PoseJob, estimate_video
from services.pose.nlf import InferenceOptions, NlfModel, load_canonical_points, load_torchscript

VERSION = "1"
MODEL_NAMES = ("nlf-l", "nlf-s")
DEFAULTS = {
    "fov_degrees": 55.0,
    "num_aug": 5,
    "antialias_factor": 2,
    "internal_batch_size": 8,
    "batch_size": 8,
    "detector_threshold": 0.15,
    "detector_nms_iou_threshold": 0.8,
}
log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    nlf: NlfModel
    info: dict  # name, file, sha256
    identity: ModelIdentity  # the NLF file, its canonical points, device and precision
    lock: threading.Lock


class PoseModels:
    """NLF models loaded from the model cache, by registry name (never downloads)."""

    def __init__(self, settings: Settings, fp16: bool = True):
        self.settings = settings
        self.device = resolve_device(settings)
        self.fp16 = fp16
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> LoadedModel:
        with self._lock:
            if name not in self._loaded:
                self._loaded[name] = self._load(name)
            return self._loaded[name]

    def _load(self, name: str) -> LoadedModel:
        path, data_dir = models.require_models([name, "nlf-data"], self.settings)
        canonical, num_vertices = load_canonical_points(data_dir)
        module = load_torchscript(path, self.device)
        nlf = NlfModel(module, canonical, num_vertices, self.device, fp16=self.fp16)
        info = {"name": name, "file": path.name, "sha256": models.sha256_of(path)}
        identity = ModelIdentity.of(
            registry_files(name, self.settings) + registry_files("nlf-data", self.settings),
            device=self.device,
            precision="float16" if nlf.half else "float32",
        )
        log.info("loaded %s (%s) on %s", name, path, self.device)
        return LoadedModel(nlf, info, identity, threading.Lock())


def _positive(request, name: str, limit: int | None = None) -> int:
    value = getattr(request, name) or DEFAULTS[name]
    if limit is not None and value > limit:
        raise InvalidInput(f"{name}={value} is too large (at most {limit})")
    return int(value)


def _fraction(request, name: str) -> float:
    value = getattr(request, name) or DEFAULTS[name]
    if not 0 < value <= 1:
        raise InvalidInput(f"{name}={value} must be in (0, 1]")
    return float(value)


def validate(request: pose_pb2.RunRequest, default_model: str) -> dict:
    """The canonical parameters of a request; InvalidInput names the bad field."""
    if not request.HasField("video") or not request.video.uri:
        raise InvalidInput("video: the input video reference is required")
    model = request.model or default_model
    if model not in MODEL_NAMES:
        raise InvalidInput(f"model={model!r} is not one of {', '.join(MODEL_NAMES)}")
    fov = request.fov_degrees or DEFAULTS["fov_degrees"]
    if not 1 <= fov < 179:
        raise InvalidInput(f"fov_degrees={fov} must be between 1 and 179 degrees")
    params = {
        "model": model,
        "num_aug": _positive(request, "num_aug", 64),
        "antialias_factor": _positive(request, "antialias_factor", 4),
        "internal_batch_size": _positive(request, "internal_batch_size", 4096),
        "batch_size": _positive(request, "batch_size", 512),
        "mode": "masks" if request.HasField("masks") else "detector",
    }
    if not request.HasField("cameras"):  # a static camera: from the intrinsics, else the FOV
        if request.HasField("intrinsics"):
            k = request.intrinsics
            values = (k.focal_x, k.focal_y, k.principal_x, k.principal_y)
            if not all(np.isfinite(values)) or k.focal_x <= 0 or k.focal_y <= 0:
                raise InvalidInput(f"intrinsics: focal lengths must be positive, got {values}")
            params["intrinsics"] = [float(v) for v in values]
        else:
            params["fov_degrees"] = float(fov)
    if not request.HasField("masks"):
        params.update(
            suppress_implausible_poses=(
                request.suppress_implausible_poses
                if request.HasField("suppress_implausible_poses")
                else True
            ),
            detector_threshold=_fraction(request, "detector_threshold"),
            detector_nms_iou_threshold=_fraction(request, "detector_nms_iou_threshold"),
            max_detections=int(request.max_detections) or -1,
            detector_flip_aug=(
                request.detector_flip_aug if request.HasField("detector_flip_aug") else True
            ),
        )
    return params


def _options(params: dict) -> InferenceOptions:
    names = [f.name for f in fields(InferenceOptions)]
    return InferenceOptions(**{n: params[n] for n in names if n in params})


def compute_poses(run: StageRun, model: LoadedModel) -> StageOutputs:
    """The stage's compute function: the whole video into one predictions file."""
    params = run.params
    intrinsics = None
    if "intrinsics" in params:
        fx, fy, cx, cy = params["intrinsics"]
        intrinsics = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
    output = run.workdir / "predictions.bcz"
    job = PoseJob(
        video=run.inputs["video"],
        output=output,
        masks=run.inputs.get("masks"),
        cameras=run.inputs.get("cameras"),
        fov_degrees=params.get("fov_degrees", DEFAULTS["fov_degrees"]),
        intrinsics=intrinsics,
        batch_size=params["batch_size"],
        options=_options(params),
        model_info=model.info,
        identity=model.identity.params(),
    )
    with model.lock:
        summary = estimate_video(
            model.nlf, job, progress=lambda done, total: run.progress(done, total, "frames", "pose")
        )
    for step, seconds in summary.timings.items():
        run.timings[step] = run.timings.get(step, 0.0) + seconds
    return StageOutputs(
        files={"predictions": OutputFile(output, MEDIA_TYPE)},
        counts={
            "frames": summary.frames,
            "person_frames": summary.person_frames,
            "tracks": summary.tracks,
            "empty_masks": summary.empty_masks,
            "model_calls": summary.model_calls,
        },
        extra={"model": model.info},
    )


class PoseServicer(pose_pb2_grpc.PoseServiceServicer):
    """Thin translator between PoseService messages and the pose algorithm."""

    def __init__(self, store: ArtifactStore, pose_models: PoseModels, default_model: str):
        self.store = store
        self.models = pose_models
        self.default_model = default_model

    def Run(self, request, context):
        params = validate(request, self.default_model)
        model = self.models.get(params["model"])
        params = with_identity(params, model.identity)
        inputs = {"video": request.video}
        for name in ("masks", "cameras"):
            if request.HasField(name):
                inputs[name] = getattr(request, name)

        yield from stream_cached_run(
            context,
            pose_pb2.RunResponse,
            self.store,
            _result_to_proto,
            stage="pose",
            version=VERSION,
            inputs=inputs,
            params=params,
            compute=partial(compute_poses, model=model),
            force=request.force,
        )


def _result_to_proto(result: StageResult) -> pose_pb2.RunResult:
    return pose_pb2.RunResult(
        predictions=artifact_to_proto(result.outputs["predictions"]),
        summary=summary_to_proto(result),
    )


def build(settings: Settings, store: ArtifactStore) -> StageService:
    """The pose service; ``load()`` loads the default model (NLFPIPE_POSE_MODEL, nlf-l)."""
    default_model = os.environ.get("NLFPIPE_POSE_MODEL", "") or "nlf-l"
    if default_model not in MODEL_NAMES:
        raise InvalidInput(f"NLFPIPE_POSE_MODEL={default_model!r}: use one of {MODEL_NAMES}")
    fp16 = os.environ.get("NLFPIPE_POSE_FP16", "true").strip().lower() not in ("0", "false", "no")
    pose_models = PoseModels(settings, fp16=fp16)
    return StageService(
        stage="pose",
        servicer=PoseServicer(store, pose_models, default_model),
        add_to_server=pose_pb2_grpc.add_PoseServiceServicer_to_server,
        load=lambda: pose_models.get(default_model),
    )
