"""The interpolation service over gRPC: as a real process with a real S3 server (cache hit,
cancellation, bad requests), and in process with a RIFE checkpoint of random weights or none."""

import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest
import torch

from nlfpipe.interpolation.v1 import interpolation_pb2, interpolation_pb2_grpc
from services.common.client import call_stage, health_status, open_channel
from services.common.models import sha256_of
from services.common.server import artifact_to_proto, build_server
from services.common.settings import load_settings
from services.common.store import LocalFolderStore, S3Store
from services.interpolation.ifnet import IFNet
from services.interpolation.service import build
from tests.support.s3 import bucket_store, s3_env
from tests.support.services import start_service
from tests.support.videos import make_test_video, read_indices, write_indexed_video

BUCKET = "interpolation-service-test"
SERVICE = "nlfpipe.interpolation.v1.InterpolationService"


@pytest.fixture(scope="module")
def s3(s3_endpoint: str) -> S3Store:
    return bucket_store(s3_endpoint, BUCKET)


@pytest.fixture(scope="module")
def service(s3_endpoint, s3, tmp_path_factory) -> Iterator[dict]:
    env = {
        **s3_env(s3_endpoint, BUCKET),
        "NLFPIPE_MODEL_CACHE": str(tmp_path_factory.mktemp("models")),
        "NLFPIPE_INTERPOLATION_BACKEND": "flow",
    }
    with start_service("interpolation", env) as (process, address):
        channel = open_channel(address)
        yield {"stub": interpolation_pb2_grpc.InterpolationServiceStub(channel), "pid": process.pid}
        channel.close()


def upload(store, path: Path):
    return artifact_to_proto(store.put_file(f"inputs/{path.name}", path, "video/mp4"))


def test_a_run_doubles_the_video_then_hits_the_cache(service, s3, tmp_path):
    video = upload(s3, write_indexed_video(tmp_path / "indexed.mp4", 20, audio=True))
    request = interpolation_pb2.RunRequest(video=video)
    progress = []
    result = call_stage(service["stub"].Run, request, timeout_s=120, on_progress=progress.append)
    assert (result.frame_count, result.source_frame_count, result.fps) == (40, 20, 60.0)
    assert result.backend == "flow-dis-fast-1" and not result.summary.cache_hit
    assert progress and progress[-1].done == progress[-1].total == 40
    out = s3.get_file(s3.key_from_uri(result.video.uri), tmp_path / "out.mp4")
    assert read_indices(out)[0::2] == list(range(20))
    manifest = json.loads(s3.get_bytes(s3.key_from_uri(result.summary.manifest.uri)))
    assert manifest["params"]["backend"] == "flow-dis-fast-1"
    assert manifest["params"]["identity"] == {"models": []}  # no weights; always the CPU
    assert {"fps_factor", "flow_scale", "crf"} <= set(manifest["params"])

    again = call_stage(service["stub"].Run, request, timeout_s=60)
    assert again.summary.cache_hit and again.video.sha256 == result.video.sha256
    assert again.summary.cache_key == result.summary.cache_key and again.frame_count == 40


@pytest.mark.parametrize(
    ("fields", "words"),
    [({"fps_factor": 3}, "only 2"), ({"flow_scale": 0.7}, "flow_scale"), ({}, "has 1 frame")],
)
def test_bad_requests_are_invalid_argument(service, s3, tmp_path, fields, words):
    video = upload(s3, write_indexed_video(tmp_path / "one.mp4", 1))
    request = interpolation_pb2.RunRequest(video=video, **fields)
    with pytest.raises(grpc.RpcError) as caught:
        call_stage(service["stub"].Run, request, timeout_s=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in caught.value.details()


def test_cancelling_stops_the_work_and_publishes_nothing(service, s3, tmp_path):
    path = tmp_path / "long.mp4"
    make_test_video(path, seconds=12.0, width=320, height=240, fps=30)
    before = set(s3.list("stages/interpolation/"))
    call = service["stub"].Run(interpolation_pb2.RunRequest(video=upload(s3, path)), timeout=120)
    for response in call:
        if response.WhichOneof("event") == "progress" and response.progress.done > 0:
            break
    encoders = psutil.Process(service["pid"]).children(recursive=True)
    assert encoders, "the encoder (ffmpeg) should be running"
    call.cancel()
    gone, alive = psutil.wait_procs(encoders, timeout=10)
    assert not alive, "the work went on after the call was cancelled"
    time.sleep(0.5)
    assert not [k for k in set(s3.list("stages/interpolation/")) - before
                if k.endswith("manifest.json")]  # fmt: skip


# --- in process, with the RIFE backend -------------------------------------------------------


def serve_rife(monkeypatch, model_cache: Path, store):
    monkeypatch.setenv("NLFPIPE_INTERPOLATION_BACKEND", "rife")
    settings = load_settings({"NLFPIPE_MODEL_CACHE": str(model_cache), "NLFPIPE_DEVICE": "cpu"})
    return build_server(build(settings, store), port=0, settings=settings)


def test_without_the_checkpoint_the_service_is_not_serving_and_says_how_to_fetch_it(
    monkeypatch, tmp_path
):
    running = serve_rife(monkeypatch, tmp_path / "empty", LocalFolderStore(tmp_path / "store"))
    try:
        time.sleep(0.3)
        address = f"127.0.0.1:{running.port}"
        assert health_status(address, SERVICE) == "NOT_SERVING"
        stub = interpolation_pb2_grpc.InterpolationServiceStub(open_channel(address))
        with pytest.raises(grpc.RpcError) as caught:
            call_stage(stub.Run, interpolation_pb2.RunRequest(), timeout_s=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert str(tmp_path / "empty" / "rife" / "flownet.pkl") in caught.value.details()
        assert "nlfpipe models fetch rife" in caught.value.details()
    finally:
        running.stop(0)


def test_the_rife_backend_runs_from_the_model_cache_and_keys_the_cache_by_its_sha256(
    monkeypatch, tmp_path
):
    checkpoint = tmp_path / "models" / "rife" / "flownet.pkl"
    checkpoint.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save({f"module.{k}": v for k, v in IFNet().state_dict().items()}, checkpoint)
    store = LocalFolderStore(tmp_path / "store")
    running = serve_rife(monkeypatch, tmp_path / "models", store)
    try:
        assert running.wait_ready(60)
        stub = interpolation_pb2_grpc.InterpolationServiceStub(
            open_channel(f"127.0.0.1:{running.port}")
        )
        video = upload(store, write_indexed_video(tmp_path / "indexed.mp4", 3))
        result = call_stage(stub.Run, interpolation_pb2.RunRequest(video=video), timeout_s=120)
        assert (result.frame_count, result.backend) == (6, "rife-4.18")
        out = store.local_path(store.key_from_uri(result.video.uri))
        assert read_indices(out)[0::2] == [0, 1, 2]
        params = json.loads(store.get_bytes(store.key_from_uri(result.summary.manifest.uri)))[
            "params"
        ]
        assert params["backend"] == "rife-4.18"
        assert params["identity"] == {
            "models": [{"name": "rife", "file": "flownet.pkl", "sha256": sha256_of(checkpoint)}],
            "device": "cpu", "precision": "float32",
        }  # fmt: skip
    finally:
        running.stop(0)
