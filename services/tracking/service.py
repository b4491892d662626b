"""The tracking gRPC servicer: validates, translates messages and calls `compute_tracking`."""

from functools import partial

import grpc

from nlfpipe.tracking.v1 import tracking_pb2, tracking_pb2_grpc
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
from services.tracking.backends import backend_name, load_backend
from services.tracking.pipeline import (
    STAGE,
    VERSION,
    TrackingBackend,
    TrackingParams,
    compute_tracking,
)


def params_from_request(request: tracking_pb2.RunRequest) -> TrackingParams:
    """The run parameters of a request (zero/unset fields take their defaults)."""
    which = request.WhichOneof("init_frame")
    memory = request.memory
    return TrackingParams(
        init_frame_index=request.init_frame_index if which == "init_frame_index" else None,
        init_time_seconds=request.init_time_seconds if which == "init_time_seconds" else None,
        max_persons=request.max_persons,
        candidate_indices=tuple(request.candidate_indices),
        select_points=tuple((p.x, p.y) for p in request.select_points),
        passes=request.passes or 2,
        permute_frames=request.permute_frames if request.HasField("permute_frames") else True,
        morph_cleanup=request.morph_cleanup if request.HasField("morph_cleanup") else True,
        short_side=request.short_side or 320,
        mem_size=memory.mem_size or 128,
        temp_mem_size=memory.temp_mem_size or 2,
        top_k=memory.top_k or 20,
        preview_only=request.preview_only,
        seed=request.seed,
    )


def result_to_proto(result: StageResult) -> tracking_pb2.RunResult:
    """The RunResult message of a (computed or cached) tracking run."""
    outputs = result.outputs
    return tracking_pb2.RunResult(
        masks=artifact_to_proto(outputs["masks"]) if "masks" in outputs else None,
        candidates_preview=artifact_to_proto(outputs["candidates_preview"]),
        candidates=artifact_to_proto(outputs["candidates"]),
        init_frame_index=result.extra["init_frame"],
        candidate_count=int(result.counts["candidates"]),
        tracks=[tracking_pb2.TrackSummary(**t) for t in result.extra.get("tracks", [])],
        summary=summary_to_proto(result),
    )


class TrackingServicer(tracking_pb2_grpc.TrackingServiceServicer):
    """nlfpipe.tracking.v1.TrackingService."""

    def __init__(self, store: ArtifactStore, backend_name: str):
        self.store = store
        self.backend_name = backend_name
        self.backend: TrackingBackend | None = None

    def Run(self, request: tracking_pb2.RunRequest, context: grpc.ServicerContext):  # noqa: N802
        params = params_from_request(request)
        backend = self.backend  # set by load(); the server refuses calls until then

        yield from stream_cached_run(
            context,
            tracking_pb2.RunResponse,
            self.store,
            result_to_proto,
            stage=STAGE,
            version=VERSION,
            inputs={"video": request.video},
            params=with_identity({**params.to_dict(), "backend": backend.name}, backend.identity),
            compute=partial(compute_tracking, params=params, backend=backend),
            force=request.force,
        )


def build(settings: Settings, store: ArtifactStore) -> StageService:
    """The tracking service; `load` reads Mask R-CNN and STCN from the model cache."""
    servicer = TrackingServicer(store, backend_name())

    def load() -> None:
        servicer.backend = load_backend(settings, servicer.backend_name)

    return StageService(
        stage=STAGE,
        servicer=servicer,
        add_to_server=tracking_pb2_grpc.add_TrackingServiceServicer_to_server,
        load=load,
    )
