"""The interpolation gRPC servicer: validates, translates messages and calls
`compute_interpolation`."""

from functools import partial

import grpc

from nlfpipe.interpolation.v1 import interpolation_pb2, interpolation_pb2_grpc
from services.common.errors import InvalidInput
from services.common.identity import with_identity
from services.common.server import (
    StageService,
    artifact_to_proto,
    stream_cached_run,
    summary_to_proto,
)
from services.common.settings import Settings
from services.common.stagerun import StageResult
from services.common.store import ArtifactStore
from services.interpolation.backends import backend_name, load_backend
from services.interpolation.pipeline import (
    DEFAULT_CRF,
    STAGE,
    VERSION,
    InterpolationParams,
    Interpolator,
    compute_interpolation,
)


def params_from_request(request: interpolation_pb2.RunRequest) -> InterpolationParams:
    """The run parameters of a request (zero fields take their defaults); InvalidInput names
    the bad field."""
    if not request.HasField("video") or not request.video.uri:
        raise InvalidInput("video: the input video reference is required")
    return InterpolationParams(
        fps_factor=request.fps_factor or 2,
        flow_scale=request.flow_scale,
        crf=request.crf or DEFAULT_CRF,
    )


def result_to_proto(result: StageResult) -> interpolation_pb2.RunResult:
    """The RunResult message of a (computed or cached) interpolation run."""
    return interpolation_pb2.RunResult(
        video=artifact_to_proto(result.outputs["video"]),
        fps=result.extra["fps"],
        frame_count=int(result.counts["frames"]),
        source_frame_count=int(result.counts["source_frames"]),
        backend=result.extra["backend"],
        summary=summary_to_proto(result),
    )


class InterpolationServicer(interpolation_pb2_grpc.InterpolationServiceServicer):
    """nlfpipe.interpolation.v1.InterpolationService."""

    def __init__(self, store: ArtifactStore):
        self.store = store
        self.backend: Interpolator | None = None  # set by load(); calls wait until then

    def Run(self, request, context: grpc.ServicerContext):  # noqa: N802
        params = params_from_request(request)
        backend = self.backend
        yield from stream_cached_run(
            context,
            interpolation_pb2.RunResponse,
            self.store,
            result_to_proto,
            stage=STAGE,
            version=VERSION,
            inputs={"video": request.video},
            params=with_identity({**params.to_dict(), "backend": backend.name}, backend.identity),
            compute=partial(compute_interpolation, params=params, backend=backend),
            force=request.force,
        )


def build(settings: Settings, store: ArtifactStore) -> StageService:
    """The interpolation service; `load` reads the RIFE checkpoint unless the backend is flow."""
    servicer = InterpolationServicer(store)
    name = backend_name(settings)

    def load() -> None:
        servicer.backend = load_backend(settings, name)

    return StageService(
        stage=STAGE,
        servicer=servicer,
        add_to_server=interpolation_pb2_grpc.add_InterpolationServiceServicer_to_server,
        load=load,
    )
