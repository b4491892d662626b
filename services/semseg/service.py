"""The semseg gRPC servicer: validates, translates messages and calls `compute_semseg`."""

from functools import partial

import grpc

from nlfpipe.semseg.v1 import semseg_pb2, semseg_pb2_grpc
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
from services.semseg.backends import Segmenters, backend_name
from services.semseg.pipeline import STAGE, VERSION, SemsegParams, compute_semseg

MODEL_NAMES = {
    semseg_pb2.SEMSEG_MODEL_UNSPECIFIED: None,
    semseg_pb2.SEMSEG_MODEL_DEEPLABV3_RESNET101: "deeplabv3",
    semseg_pb2.SEMSEG_MODEL_DEEPLABV3_MOBILENETV3_LARGE: "deeplabv3-mobilenet",
}


def params_from_request(request: semseg_pb2.RunRequest) -> SemsegParams:
    """The run parameters of a request (zero fields take their defaults)."""
    return SemsegParams(
        threshold=request.threshold or 0.2,
        batch_size=request.batch_size or 8,
        short_side=request.short_side or 520,
        frame_indices=tuple(request.frame_indices),
    )


def model_from_request(request: semseg_pb2.RunRequest) -> str | None:
    """The registry name of the requested network (None: the service's default)."""
    if request.model not in MODEL_NAMES:
        raise InvalidInput(
            f"model={request.model} is not a SemsegModel; use one of "
            f"{', '.join(semseg_pb2.SemsegModel.keys())}"
        )
    return MODEL_NAMES[request.model]


def result_to_proto(result: StageResult) -> semseg_pb2.RunResult:
    """The RunResult message of a (computed or cached) semseg run."""
    return semseg_pb2.RunResult(
        masks=artifact_to_proto(result.outputs["masks"]),
        frames_with_persons=int(result.counts["frames_with_persons"]),
        mean_person_fraction=result.extra["mean_person_fraction"],
        summary=summary_to_proto(result),
        frames_segmented=int(result.counts["frames_segmented"]),
        model=result.extra["model"],
    )


class SemsegServicer(semseg_pb2_grpc.SemsegServiceServicer):
    """nlfpipe.semseg.v1.SemsegService."""

    def __init__(self, store: ArtifactStore, segmenters: Segmenters):
        self.store = store
        self.segmenters = segmenters

    def Run(self, request: semseg_pb2.RunRequest, context: grpc.ServicerContext):  # noqa: N802
        params = params_from_request(request)
        loaded = self.segmenters.get(model_from_request(request))
        cache_params = {
            **params.to_dict(),
            "backend": self.segmenters.backend,
            "model": loaded.model,
        }

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
                compute_semseg,
                params=params,
                segmenter=loaded.segmenter,
                backend=self.segmenters.backend,
                model=loaded.model,
            ),
            force=request.force,
        )


def build(settings: Settings, store: ArtifactStore) -> StageService:
    """The semseg service; `load` reads the default network from the model cache (the other
    one is loaded on the first request that asks for it)."""
    segmenters = Segmenters(settings, backend_name())
    return StageService(
        stage=STAGE,
        servicer=SemsegServicer(store, segmenters),
        add_to_server=semseg_pb2_grpc.add_SemsegServiceServicer_to_server,
        load=lambda: segmenters.get(),
    )
