"""The slam service over gRPC with moto's S3 server: a colmap run, its cache hit, the scale
pass, and bad input answered with INVALID_ARGUMENT without publishing anything."""

import json

import grpc
import numpy as np
import pytest

from nlfpipe.slam.v1 import slam_pb2, slam_pb2_grpc
from services.common.client import call_stage, open_channel
from services.common.formats.cameras import CameraTrack
from services.common.server import artifact_to_proto, build_server
from services.common.settings import load_settings
from services.slam import service as slam_service
from tests.support.slam_runs import make_scene, trajectory_error
from tests.support.world import write_truth_masks

FOV = 60.0


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_scene(tmp_path_factory.mktemp("scene"), seconds=2.0, width=256, height=144,
                      fps=10, figures=2, motion="forward", fov_deg=FOV)  # fmt: skip


@pytest.fixture
def slam(s3_store, tmp_path):
    settings = load_settings({"NLFPIPE_MODEL_CACHE": str(tmp_path / "models"),
                              "NLFPIPE_DEVICE": "cpu"})  # fmt: skip
    server = build_server(slam_service.build(settings, s3_store), port=0, settings=settings)
    assert server.wait_ready(30)
    channel = open_channel(f"127.0.0.1:{server.port}")
    yield slam_pb2_grpc.SlamServiceStub(channel), s3_store
    channel.close()
    server.stop(0)


def _put(store, path, name, media="application/octet-stream"):
    return artifact_to_proto(store.put_file(f"inputs/{name}", path, media))


def test_colmap_run_then_cache_hit(slam, scene, tmp_path):
    stub, store = slam
    request = slam_pb2.RunRequest(
        video=_put(store, scene.video, "v.mp4", "video/mp4"),
        track_masks=_put(store, scene.track_masks, "m.jsonl.zst"),
        fov_deg=FOV, backend=slam_pb2.BACKEND_COLMAP, scale_source=slam_pb2.SCALE_SOURCE_NONE,
    )  # fmt: skip
    progress = []
    first = call_stage(stub.Run, request, timeout_s=300, on_progress=progress.append)
    assert not first.summary.cache_hit and not first.static_camera_detected
    assert first.keyframe_count >= 5 and first.fov_deg == pytest.approx(FOV)
    assert "keyframes" in {p.step for p in progress}  # later steps may fall in one interval
    cameras = CameraTrack.load(store.get_file(store.key_from_uri(first.cameras.uri),
                                              tmp_path / "c.npz"))  # fmt: skip
    assert trajectory_error(cameras, scene.truth.cameras).ate_pct_of_path <= 1.0
    report = json.loads(store.get_bytes(store.key_from_uri(first.report.uri)))
    assert report["backend"] == "colmap" and report["scale"]["source"] == "provisional"
    second = call_stage(stub.Run, request, timeout_s=60)
    assert second.summary.cache_hit and second.cameras.sha256 == first.cameras.sha256


@pytest.mark.parametrize("case", ["masks_of_another_video", "zero_frames", "prediction_frames"])
def test_bad_input_is_invalid_argument_and_publishes_nothing(slam, scene, tmp_path, case):
    stub, store = slam
    if case == "masks_of_another_video":
        other = make_scene(tmp_path / "other", seconds=1.0, width=256, height=144, fps=10,
                           figures=1, motion="forward")  # fmt: skip
        request = slam_pb2.RunRequest(video=_put(store, scene.video, "v.mp4", "video/mp4"),
                                      track_masks=_put(store, other.track_masks, "o.zst"))
        expected = "frames of masks"
    elif case == "zero_frames":
        empty = tmp_path / "empty.mp4"
        empty.write_bytes(b"")  # no frames at all
        request = slam_pb2.RunRequest(video=_put(store, empty, "e.mp4", "video/mp4"),
                                      track_masks=_put(store, scene.track_masks, "m.zst"))
        expected = "video"
    else:
        cameras = tmp_path / "c.npz"
        CameraTrack.static(7, 256, 144).save(cameras)
        report = tmp_path / "r.json"
        report.write_text(json.dumps({"format": "nlfpipe.slam-report/1"}))
        predictions = _tiny_predictions(tmp_path / "p.bcz", frames=5)
        request = slam_pb2.RunRequest(
            predictions=_put(store, predictions, "p.bcz"),
            provisional_cameras=_put(store, cameras, "c.npz"),
            provisional_report=_put(store, report, "r.json"), fps=10,
        )  # fmt: skip
        expected = "predictions: 5 frames for 7 cameras"
    before = store.list("stages/")
    with pytest.raises(grpc.RpcError) as info:
        call_stage(stub.Run, request, timeout_s=120)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert expected in info.value.details()
    assert store.list("stages/") == before


def _tiny_predictions(path, frames):
    from tests.support.scenes import write_predictions

    cameras = CameraTrack.static(frames, 256, 144)
    track = {"frame_indices": np.arange(frames),
             "vertices": np.zeros((frames, 6890, 3), np.float32) + 3000,
             "joints": np.zeros((frames, 24, 3), np.float32) + 3000,
             "vertex_uncertainties": np.full((frames, 6890), 0.05, np.float32),
             "joint_uncertainties": np.full((frames, 24), 0.05, np.float32)}  # fmt: skip
    write_predictions(path, cameras, {0: track}, frames)
    return path


def test_masks_written_from_truth_have_the_video_size(scene, tmp_path):
    path = tmp_path / "m.zst"
    write_truth_masks(path, scene.truth, short_side=72, union=True)
    from services.common.formats.masks import read_track_masks

    masks = read_track_masks(path)
    assert (masks.height, masks.width) == (72, 128) and masks.track_ids == [0]
