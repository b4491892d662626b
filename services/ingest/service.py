"""The ingest gRPC servicer: validates, translates messages and calls `stage.run_ingest`."""

import grpc

from nlfpipe.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from services.common.formats.video import ProbeInfo
from services.common.server import StageService, artifact_to_proto, stream_stage, summary_to_proto
from services.common.settings import Settings
from services.common.store import ArtifactStore
from services.ingest.stage import STAGE, IngestResult, make_request, run_ingest


def video_info(probe: ProbeInfo) -> ingest_pb2.VideoInfo:
    """The VideoInfo message of a probe."""
    return ingest_pb2.VideoInfo(
        frame_count=probe.frame_count,
        fps=probe.fps,
        width=probe.width,
        height=probe.height,
        duration_seconds=probe.duration_s,
        rotation_degrees=probe.rotation_deg,
        has_audio=probe.has_audio,
        codec=probe.codec,
        pix_fmt=probe.pix_fmt,
    )


def result_to_proto(result: IngestResult) -> ingest_pb2.RunResult:
    """The RunResult message of an ingest result."""
    return ingest_pb2.RunResult(
        video=artifact_to_proto(result.stage.outputs["video"]),
        probe=artifact_to_proto(result.stage.outputs["probe"]),
        info=video_info(result.probe),
        source_info=video_info(result.source_probe),
        reencoded=result.reencoded,
        reencode_reasons=list(result.reasons),
        summary=summary_to_proto(result.stage),
    )


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    """nlfpipe.ingest.v1.IngestService."""

    def __init__(self, store: ArtifactStore):
        self.store = store

    def Run(self, request: ingest_pb2.RunRequest, context: grpc.ServicerContext):  # noqa: N802
        ingest_request = make_request(
            request.source, request.time_range, request.max_height, request.force
        )

        def work(on_progress, cancel):
            return result_to_proto(run_ingest(self.store, ingest_request, on_progress, cancel))

        yield from stream_stage(context, ingest_pb2.RunResponse, work)


def build(settings: Settings, store: ArtifactStore) -> StageService:
    """The ingest service; it has no model, so loading is immediate."""
    return StageService(
        stage=STAGE,
        servicer=IngestServicer(store),
        add_to_server=ingest_pb2_grpc.add_IngestServiceServicer_to_server,
        load=lambda: None,
    )
