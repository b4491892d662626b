"""The pose service over gRPC (in-process server, local store, NLF stand-in in the model cache)."""

import time

import grpc
import numpy as np
import pytest
from rlemasklib import RLEMask

from nlfpipe.common.v1 import common_pb2
from nlfpipe.pose.v1 import pose_pb2, pose_pb2_grpc
from services.common.client import call_stage, health_status, open_channel, wait_serving
from services.common.formats.masks import write_track_masks
from services.common.formats.predictions import PredictionsReader
from services.common.server import build_server
from services.common.settings import load_settings
from services.common.store import LocalFolderStore
from services.pose.service import build, validate
from tests.support.fake_nlf import install_test_models
from tests.support.videos import make_test_video

SERVICE = "nlfpipe.pose.v1.PoseService"
FRAMES = 9


def _ref(store, key, path, media_type):
    info = store.put_file(key, path, media_type)
    return common_pb2.ArtifactRef(uri=info.uri, sha256=info.sha256)


def _masks(path, frames):
    mask = np.zeros((120, 160), np.uint8)
    mask[20:100, 30:60] = 1
    write_track_masks(path, [{2: RLEMask.from_array(mask)}] * frames, 120, 160)


@pytest.fixture
def env(tmp_path):
    cache = tmp_path / "models"
    install_test_models(cache, num_vertices=40)
    settings = load_settings({"NLFPIPE_MODEL_CACHE": str(cache), "NLFPIPE_DEVICE": "cpu",
                              "NLFPIPE_GRACE_SECONDS": "1"})
    store = LocalFolderStore(tmp_path / "store")
    make_test_video(tmp_path / "v.mp4", seconds=FRAMES / 10, fps=10, figures=1)
    _masks(tmp_path / "m.zst", FRAMES)
    _masks(tmp_path / "short.zst", FRAMES - 2)
    running = build_server(build(settings, store), port=0, settings=settings)
    address = f"127.0.0.1:{running.port}"
    wait_serving(address, SERVICE, timeout_s=30)
    refs = {
        "video": _ref(store, "in/v.mp4", tmp_path / "v.mp4", "video/mp4"),
        "masks": _ref(store, "in/m.zst", tmp_path / "m.zst", "application/zstd"),
        "short": _ref(store, "in/short.zst", tmp_path / "short.zst", "application/zstd"),
    }
    yield pose_pb2_grpc.PoseServiceStub(open_channel(address)), store, refs
    running.stop(0)


def test_run_publishes_predictions_then_hits_the_cache(env):
    stub, store, refs = env
    progress = []
    request = pose_pb2.RunRequest(video=refs["video"], masks=refs["masks"], model="nlf-s",
                                  batch_size=4, num_aug=2)
    result = call_stage(stub.Run, request, timeout_s=60, on_progress=progress.append)
    assert result.summary.counts["frames"] == FRAMES
    assert result.summary.counts["person_frames"] == FRAMES
    assert result.summary.counts["model_calls"] == 3
    assert not result.summary.cache_hit and progress[-1].done == FRAMES
    path = store.local_path(store.key_from_uri(result.predictions.uri))
    reader = PredictionsReader(path)
    assert reader.metadata["model"]["name"] == "nlf-s"
    assert len(reader.metadata["model"]["sha256"]) == 64
    assert reader.metadata["params"]["num_aug"] == 2
    frames = list(reader)
    assert [f.track_ids.tolist() for f in frames] == [[2]] * FRAMES
    np.testing.assert_allclose(frames[0].boxes[0], [60, 40, 60, 160])
    again = call_stage(stub.Run, request, timeout_s=60)
    assert again.summary.cache_hit and again.predictions.sha256 == result.predictions.sha256


def test_bad_requests_get_clear_errors_and_publish_nothing(env):
    stub, store, refs = env
    cases = [
        (pose_pb2.RunRequest(video=refs["video"], masks=refs["short"]),
         grpc.StatusCode.FAILED_PRECONDITION, "7 frames of masks for a video of 9"),
        (pose_pb2.RunRequest(video=refs["video"], model="nlf-xl"),
         grpc.StatusCode.INVALID_ARGUMENT, "model='nlf-xl'"),
        (pose_pb2.RunRequest(video=refs["video"], detector_threshold=1.5),
         grpc.StatusCode.INVALID_ARGUMENT, "detector_threshold=1.5"),
        (pose_pb2.RunRequest(masks=refs["masks"]), grpc.StatusCode.INVALID_ARGUMENT, "video"),
    ]
    for request, code, text in cases:
        with pytest.raises(grpc.RpcError) as err:
            call_stage(stub.Run, request, timeout_s=60)
        assert err.value.code() == code and text in err.value.details()
    assert store.list("stages/pose/") == []


def test_missing_model_keeps_health_not_serving_and_names_the_fix(tmp_path):
    settings = load_settings({"NLFPIPE_MODEL_CACHE": str(tmp_path / "empty"),
                              "NLFPIPE_DEVICE": "cpu"})
    running = build_server(build(settings, LocalFolderStore(tmp_path / "store")), port=0,
                           settings=settings)
    try:
        time.sleep(0.3)
        address = f"127.0.0.1:{running.port}"
        assert health_status(address, SERVICE) == "NOT_SERVING"
        stub = pose_pb2_grpc.PoseServiceStub(open_channel(address))
        with pytest.raises(grpc.RpcError) as err:
            call_stage(stub.Run, pose_pb2.RunRequest(), timeout_s=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        details = err.value.details()
        assert str(tmp_path / "empty" / "nlf-l" / "nlf_l_multi_0.3.2.torchscript") in details
        assert "nlfpipe models fetch nlf-l" in details
    finally:
        running.stop(0)


def test_cache_parameters_hold_only_what_the_run_uses():
    video = common_pb2.ArtifactRef(uri="file:///v.mp4")
    masks = common_pb2.ArtifactRef(uri="file:///m.zst")
    in_masks_mode = validate(pose_pb2.RunRequest(video=video, masks=masks, fov_degrees=40),
                             "nlf-l")
    assert in_masks_mode["fov_degrees"] == 40.0
    assert not {"detector_threshold", "max_detections", "detector_flip_aug"} & set(in_masks_mode)
    k = pose_pb2.PinholeIntrinsics(focal_x=500, focal_y=500, principal_x=159.5, principal_y=119.5)
    with_intrinsics = validate(pose_pb2.RunRequest(video=video, intrinsics=k), "nlf-l")
    assert with_intrinsics["intrinsics"] == [500.0, 500.0, 159.5, 119.5]
    assert "fov_degrees" not in with_intrinsics and with_intrinsics["detector_threshold"] == 0.15
    with_cameras = validate(pose_pb2.RunRequest(video=video, cameras=masks), "nlf-l")
    assert "fov_degrees" not in with_cameras and "intrinsics" not in with_cameras
