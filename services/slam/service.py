"""The slam gRPC servicer: validates, translates messages and calls the pipeline."""

from functools import partial

import grpc

from nlfpipe.slam.v1 import slam_pb2, slam_pb2_grpc
from services.common.errors import InvalidInput
from services.common.server import (
    StageService,
    artifact_to_proto,
    stream_cached_run,
    summary_to_proto,
)
from services.common.settings import Settings
from services.common.stagerun import StageResult
from services.common.store import ArtifactStore
from services.slam.backends import SlamModels, choose_backend, load_models
from services.slam.pipeline import STAGE, VERSION, SlamParams, compute_people_scale, compute_slam

_BACKENDS = {0: "auto", 1: "auto", 2: "colmap", 3: "droid"}
_MOTIONS = {0: "auto", 1: "auto", 2: "static", 3: "moving"}
_SCALES = {0: "auto", 1: "auto", 2: "people", 3: "depth", 4: "none"}


def params_from_request(request: slam_pb2.RunRequest) -> SlamParams:
    """The tracking run's parameters (zero fields take their defaults)."""
    intrinsics = ()
    if request.HasField("intrinsics"):
        k = request.intrinsics
        intrinsics = (k.fx, k.fy, k.cx, k.cy)
    return SlamParams(
        backend=_BACKENDS[request.backend],
        camera_motion=_MOTIONS[request.camera_motion],
        fov_deg=request.fov_deg,
        intrinsics=intrinsics,
        scale_source=_SCALES[request.scale_source],
        smoothing_sigma_s=request.smoothing_sigma_s,
        target_pixels=request.target_pixels or 384 * 512,
        chunk_keyframes=request.chunk_keyframes,
    )


def result_to_proto(result: StageResult) -> slam_pb2.RunResult:
    extra = result.extra
    return slam_pb2.RunResult(
        cameras=artifact_to_proto(result.outputs["cameras"]),
        report=artifact_to_proto(result.outputs["report"]),
        preview=artifact_to_proto(result.outputs["preview"]),
        static_camera_detected=bool(extra["static_camera"]),
        fov_deg=float(extra["fov_deg"]),
        metric_scale=float(extra["metric_scale"]),
        scale_source=str(extra["scale_source"]),
        keyframe_count=int(result.counts["keyframes"]),
        needs_people_scale=bool(extra["needs_people_scale"]),
        summary=summary_to_proto(result),
    )


class SlamServicer(slam_pb2_grpc.SlamServiceServicer):
    """nlfpipe.slam.v1.SlamService."""

    def __init__(self, store: ArtifactStore):
        self.store = store
        self.models: SlamModels | None = None  # set by load(); calls wait for it

    def Run(self, request: slam_pb2.RunRequest, context: grpc.ServicerContext):  # noqa: N802
        if request.HasField("predictions"):
            yield from self._scale_pass(request, context)
            return
        if not request.HasField("video") or not request.video.uri:
            raise InvalidInput("video: the input video reference is required")
        params = params_from_request(request)
        models = self.models
        inputs = {"video": request.video}
        if params.camera_motion != "static":
            for name in ("semseg_masks", "track_masks"):
                if request.HasField(name) and getattr(request, name).uri:
                    inputs[name] = getattr(request, name)
            if len(inputs) == 1:
                raise InvalidInput("semseg_masks, track_masks: a moving camera needs the person "
                                   "masks (or set camera_motion=static)")  # fmt: skip
        backend = None if params.camera_motion == "static" else \
            choose_backend(params.backend, models, params.chunk_keyframes)  # fmt: skip
        use_depth = params.scale_source in ("auto", "depth") and models.depth is not None
        key = {**params.to_dict(), "backend": backend.name if backend else "none",
               "depth_model_sha256": models.depth_sha256 if use_depth else "",
               "droid_sha256": models.droid_sha256 if backend and backend.name == "droid"
               else "", "device": models.device if backend and backend.name == "droid"
               else "cpu"}  # fmt: skip
        yield from stream_cached_run(
            context, slam_pb2.RunResponse, self.store, result_to_proto,
            stage=STAGE, version=VERSION, inputs=inputs, params=key,
            compute=partial(compute_slam, params=params, backend=backend,
                            depth_model=models.depth if use_depth else None),
            force=request.force,
        )  # fmt: skip

    def _scale_pass(self, request, context):
        for name in ("provisional_cameras", "provisional_report"):
            if not request.HasField(name) or not getattr(request, name).uri:
                raise InvalidInput(f"{name}: the scale pass needs the cameras and report of "
                                   "the tracking run")  # fmt: skip
        if not request.fps > 0:
            raise InvalidInput(f"fps={request.fps}: the scale pass needs the video's frame rate")
        inputs = {"predictions": request.predictions, "cameras": request.provisional_cameras,
                  "report": request.provisional_report}  # fmt: skip
        yield from stream_cached_run(
            context, slam_pb2.RunResponse, self.store, result_to_proto,
            stage=STAGE, version=VERSION, inputs=inputs,
            params={"pass": "people-scale", "fps": request.fps},
            compute=partial(compute_people_scale, fps=request.fps), force=request.force,
        )  # fmt: skip


def build(settings: Settings, store: ArtifactStore) -> StageService:
    """The slam service; `load` finds DROID-SLAM (GPU) and the optional depth model."""
    servicer = SlamServicer(store)

    def load() -> None:
        servicer.models = load_models(settings)

    return StageService(
        stage=STAGE,
        servicer=servicer,
        add_to_server=slam_pb2_grpc.add_SlamServiceServicer_to_server,
        load=load,
    )
