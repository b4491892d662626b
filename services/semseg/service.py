"""The semseg gRPC servicer: validates, translates messages and calls `compute_semseg`."""

from functools import partial

import grpc

from nlfpipe.semseg.v1 import semseg_pb2, semseg_pb2_grpc
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
from services.semseg.backends import LoadedSegmenter, backend_name, load_segmenter
from services.semseg.pipeline import STAGE, VERSION, SemsegParams, compute_semseg


def params_from_request(request: semseg_pb2.RunRequest) -> SemsegParams:
    """The run parameters of a request (zero fields take their defaults)."""
    return SemsegParams(
        threshold=request.threshold or 0.2,
        batch_size=request.batch_size or 8,
        short_side=request.short_side or 520,
    )


def result_to_proto(result: StageResult) -> semseg_pb2.RunResult:
    """The RunResult message of a (computed or cached) semseg run."""
    return semseg_pb2.RunResult(
        masks=artifact_to_proto(result.outputs["masks"]),
        frames_with_persons=int(result.counts["frames_with_persons"]),
        mean_person_fraction=result.extra["mean_person_fraction"],
        summary=summary_to_proto(result),
    )


class SemsegServicer(semseg_pb2_grpc.SemsegServiceServicer):
    """nlfpipe.semseg.v1.SemsegService."""

    def __init__(self, store: ArtifactStore, backend_name: str):
        self.store = store
        self.backend_name = backend_name
        self.loaded: LoadedSegmenter | None = None

    def Run(self, request: semseg_pb2.RunRequest, context: grpc.ServicerContext):  # noqa: N802
        params = params_from_request(request)
        loaded = self.loaded  # set by load(); the server refuses calls until then
        cache_params = {**params.to_dict(), "backend": self.backend_name}

        yield from stream_cached_run(
            context,
            semseg_pb2.RunResponse,
            self.store,
            result_to_proto,
            stage=STAGE,
            version=VERSION,
            inputs={"video": request.video},
            params=with_identity(cache_params, loaded.identity),
            compute=partial(
                compute_semseg, params=params, segmenter=loaded.segmenter,
                backend=self.backend_name,
            ),
            force=request.force,
        )


def build(settings: Settings, store: ArtifactStore) -> StageService:
    """The semseg service; `load` reads DeepLabV3 from the model cache."""
    servicer = SemsegServicer(store, backend_name())

    def load() -> None:
        servicer.loaded = load_segmenter(settings, servicer.backend_name)

    return StageService(
        stage=STAGE,
        servicer=servicer,
        add_to_server=semseg_pb2_grpc.add_SemsegServiceServicer_to_server,
        load=load,
    )
