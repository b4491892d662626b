"""The tracking and semseg gRPC services in process: the synthetic backends over a local
store, status codes of bad requests, and NOT_SERVING while the weights are missing."""

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from nlfpipe.common.v1 import common_pb2
from nlfpipe.semseg.v1 import semseg_pb2, semseg_pb2_grpc
from nlfpipe.tracking.v1 import tracking_pb2, tracking_pb2_grpc
from services.common.client import call_stage, health_status, open_channel
from services.common.formats.masks import read_track_masks
from services.common.server import artifact_to_proto, build_server
from services.common.settings import load_settings
from services.common.store import LocalFolderStore
from services.semseg import service as semseg_service
from services.tracking import service as tracking_service
from tests.support.videos import make_test_video

BUILDERS = {"tracking": tracking_service.build, "semseg": semseg_service.build}
STUBS = {
    "tracking": tracking_pb2_grpc.TrackingServiceStub,
    "semseg": semseg_pb2_grpc.SemsegServiceStub,
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> LocalFolderStore:
    return LocalFolderStore(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def video_ref(store, tmp_path_factory) -> common_pb2.ArtifactRef:
    path = tmp_path_factory.mktemp("video") / "figures.mp4"
    make_test_video(path, seconds=0.8, width=96, height=64, fps=10)
    return artifact_to_proto(store.put_file("inputs/figures.mp4", path, "video/mp4"))


def serve(stage: str, store, env: dict[str, str], monkeypatch, model_cache: Path):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings({"NLFPIPE_MODEL_CACHE": str(model_cache), "NLFPIPE_DEVICE": "cpu"})
    return build_server(BUILDERS[stage](settings, store), port=0, settings=settings)


@pytest.fixture
def synthetic(store, monkeypatch, tmp_path) -> Iterator[dict]:
    env = {"NLFPIPE_TRACKING_BACKEND": "synthetic", "NLFPIPE_SEMSEG_BACKEND": "synthetic"}
    servers = {s: serve(s, store, env, monkeypatch, tmp_path) for s in BUILDERS}
    for server in servers.values():
        assert server.wait_ready(30)
    channels = {s: open_channel(f"127.0.0.1:{srv.port}") for s, srv in servers.items()}
    yield {s: STUBS[s](channels[s]) for s in BUILDERS}
    for s in BUILDERS:
        channels[s].close()
        servers[s].stop(0)


def test_tracking_run_writes_masks_and_summaries_then_hits_the_cache(
    synthetic, store, video_ref, tmp_path
):
    request = tracking_pb2.RunRequest(
        video=video_ref, init_frame_index=2, max_persons=1, short_side=64, passes=1
    )
    progress = []
    result = call_stage(
        synthetic["tracking"].Run, request, timeout_s=60, on_progress=progress.append
    )
    assert result.init_frame_index == 2 and result.candidate_count == 2
    assert [t.track_id for t in result.tracks] == [0]
    assert result.tracks[0].frames_present == 8 and result.tracks[0].mean_area_px > 100
    masks = read_track_masks(store.get_file(store.key_from_uri(result.masks.uri), tmp_path / "m"))
    assert (masks.num_frames, masks.height, masks.width, masks.track_ids) == (8, 64, 96, [0])
    assert result.candidates_preview.media_type == "image/png"
    assert not result.summary.cache_hit and result.summary.counts["tracks"] == 1
    assert any(p.step == "propagate" for p in progress)
    again = call_stage(synthetic["tracking"].Run, request, timeout_s=60)
    assert again.summary.cache_hit and again.masks.sha256 == result.masks.sha256
    assert list(again.tracks) == list(result.tracks)


def test_tracking_preview_only_writes_no_masks(synthetic, video_ref):
    request = tracking_pb2.RunRequest(video=video_ref, preview_only=True, short_side=64)
    result = call_stage(synthetic["tracking"].Run, request, timeout_s=60)
    assert not result.HasField("masks") and result.candidates.uri and len(result.tracks) == 0
    assert result.init_frame_index == 4


@pytest.mark.parametrize(
    ("fields", "code", "message"),
    [
        ({"candidate_indices": [5]}, grpc.StatusCode.INVALID_ARGUMENT, "has 2 candidates"),
        ({"init_time_seconds": 3.0}, grpc.StatusCode.INVALID_ARGUMENT, "outside the video"),
        (
            {"select_points": [common_pb2.ImagePoint(x=500, y=10)]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "outside the 96x64 frame",
        ),
    ],
)
def test_tracking_bad_requests_get_status_codes(synthetic, video_ref, fields, code, message):
    request = tracking_pb2.RunRequest(video=video_ref, short_side=64, **fields)
    with pytest.raises(grpc.RpcError) as caught:
        call_stage(synthetic["tracking"].Run, request, timeout_s=60)
    assert caught.value.code() == code and message in caught.value.details()


def test_semseg_run_writes_one_all_persons_track(synthetic, store, video_ref, tmp_path):
    request = semseg_pb2.RunRequest(video=video_ref, short_side=64, batch_size=3)
    result = call_stage(synthetic["semseg"].Run, request, timeout_s=60)
    masks = read_track_masks(store.get_file(store.key_from_uri(result.masks.uri), tmp_path / "m"))
    assert (masks.num_frames, masks.height, masks.width, masks.track_ids) == (8, 64, 96, [0])
    assert result.frames_with_persons == 8
    assert 0.05 < result.mean_person_fraction < 0.2  # two figures of about 8% each, less a fill
    bad = semseg_pb2.RunRequest(video=video_ref, threshold=1.5)
    with pytest.raises(grpc.RpcError) as caught:
        call_stage(synthetic["semseg"].Run, bad, timeout_s=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("stage", "model_file"),
    [
        ("tracking", "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"),
        ("semseg", "deeplabv3_mobilenet_v3_large"),  # the default network on the CPU
    ],
)
def test_missing_weights_keep_the_service_not_serving(
    store, video_ref, monkeypatch, tmp_path, stage, model_file
):
    env = {"NLFPIPE_TRACKING_BACKEND": "", "NLFPIPE_SEMSEG_BACKEND": ""}
    server = serve(stage, store, env, monkeypatch, tmp_path / "empty-cache")
    try:
        assert not server.wait_ready(1.0)
        address = f"127.0.0.1:{server.port}"
        service_name = f"nlfpipe.{stage}.v1.{stage.capitalize()}Service"
        assert health_status(address, service_name) == "NOT_SERVING"
        request_cls = {"tracking": tracking_pb2, "semseg": semseg_pb2}[stage].RunRequest
        with open_channel(address) as channel, pytest.raises(grpc.RpcError) as caught:
            call_stage(STUBS[stage](channel).Run, request_cls(video=video_ref), timeout_s=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert model_file in caught.value.details()
        assert "nlfpipe models fetch" in caught.value.details()
    finally:
        server.stop(0)
