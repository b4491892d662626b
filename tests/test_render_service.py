"""The render service as a real process over gRPC, with a real S3 server: outputs and cache
hit, cancellation, bad input refused with nothing published."""

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from nlfpipe.render.v1 import render_pb2, render_pb2_grpc
from services.common.client import call_stage, health_status, open_channel
from services.common.formats.cameras import CameraTrack
from services.common.server import artifact_to_proto
from services.common.store import S3Store
from tests.support.render_inputs import write_render_inputs, write_video
from tests.support.s3 import bucket_store, s3_env
from tests.support.services import start_service

BUCKET = "render-service-test"
NUM_FRAMES, WIDTH, HEIGHT = 16, 160, 96


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory) -> Path:
    from services.fitting.synthetic_body_model import write_synthetic_smpl

    return write_synthetic_smpl(tmp_path_factory.mktemp("models"), genders=("neutral",))


@pytest.fixture(scope="module")
def s3(s3_endpoint: str) -> S3Store:
    return bucket_store(s3_endpoint, BUCKET)


@pytest.fixture(scope="module")
def address(s3_endpoint, s3, model_cache) -> Iterator[str]:
    env = {**s3_env(s3_endpoint, BUCKET), "NLFPIPE_MODEL_CACHE": str(model_cache)}
    with start_service("render", env) as (_, address):
        yield address


@pytest.fixture(scope="module")
def stub(address) -> Iterator[render_pb2_grpc.RenderServiceStub]:
    channel = open_channel(address)
    yield render_pb2_grpc.RenderServiceStub(channel)
    channel.close()


def _upload(s3: S3Store, folder: Path, prefix: str, files) -> dict:
    refs = {}
    for name in ("video", "fits", "ground", "display_cameras", "viewer_cameras"):
        path = getattr(files, name)
        refs[name] = artifact_to_proto(
            s3.put_file(f"inputs/{prefix}/{path.name}", path, "application/octet-stream")
        )
    return refs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, model_cache, s3) -> dict:
    from smplfitter.pt import BodyModel

    body = BodyModel("smpl", "neutral", model_root=str(model_cache / "smpl"))
    root = tmp_path_factory.mktemp("inputs")
    good = write_render_inputs(
        root / "good", body, num_frames=NUM_FRAMES, width=WIDTH, height=HEIGHT, audio=True
    )
    long = write_render_inputs(root / "long", body, num_frames=120, width=WIDTH, height=HEIGHT)
    refs = {"good": _upload(s3, root, "good", good), "long": _upload(s3, root, "long", long)}
    other = write_video(root / "other.mp4", NUM_FRAMES - 4, WIDTH, HEIGHT, 30.0)
    refs["other_video"] = artifact_to_proto(s3.put_file("inputs/other.mp4", other, "video/mp4"))
    cams = CameraTrack.load(good.display_cameras)
    short = CameraTrack(cams.intrinsics[:-4], cams.rotation[:-4], cams.optical_center[:-4],
                        cams.distortion[:-4], cams.world_up, cams.image_size)  # fmt: skip
    short.save(root / "short.npz")
    refs["short_cameras"] = artifact_to_proto(
        s3.put_file("inputs/short.npz", root / "short.npz", "application/octet-stream")
    )
    return refs


def test_run_writes_videos_previews_exports_then_hits_the_cache(stub, s3, inputs, tmp_path):
    progress = []
    request = render_pb2.RunRequest(**inputs["good"], width=WIDTH // 2)
    result = call_stage(stub.Run, request, timeout_s=300, on_progress=progress.append)
    assert not result.summary.cache_hit
    assert (result.width, result.height) == (WIDTH // 2, HEIGHT // 2)
    assert result.frame_count == NUM_FRAMES and result.fps == pytest.approx(30.0)
    assert [p.done for p in progress if p.step == "render"][-1] == NUM_FRAMES
    for name, magic in [("camera_view_video", b"ftyp"), ("world_view_video", b"ftyp"),
                        ("camera_view_stills", b"PNG"), ("world_view_stills", b"PNG"),
                        ("camera_view_clip", b"GIF8"), ("world_view_clip", b"GIF8"),
                        ("top_view", b"PNG")]:  # fmt: skip
        ref = getattr(result, name)
        head = s3.get_bytes(s3.key_from_uri(ref.uri))[:16]
        assert magic in head, name
    names = set(result.exports)
    assert names == {"scene.glb", "world.npz", "track_1.bvh", "track_2.bvh"}
    glb = s3.get_bytes(s3.key_from_uri(result.exports["scene.glb"].uri))
    assert glb[:4] == b"glTF" and result.exports["scene.glb"].media_type == "model/gltf-binary"
    manifest = json.loads(s3.get_bytes(s3.key_from_uri(result.summary.manifest.uri)))
    identity = manifest["params"]["identity"]
    files = {m["file"]: m["sha256"] for m in identity["models"]}
    assert set(files) == {"basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl", "kid_template.npy"}
    assert all(len(v) == 64 for v in files.values())
    assert "llvmpipe" in identity["device"] or "NVIDIA" in identity["device"]
    again = call_stage(stub.Run, request, timeout_s=300)
    assert again.summary.cache_hit
    assert again.camera_view_video.sha256 == result.camera_view_video.sha256
    assert again.frame_count == NUM_FRAMES and again.width == WIDTH // 2


def test_cancelling_stops_the_render_and_publishes_nothing(stub, s3, inputs, address):
    before = s3.list("stages/render/")
    call = stub.Run(render_pb2.RunRequest(**inputs["long"], skip_exports=True), timeout=300)
    with pytest.raises(grpc.RpcError) as caught:
        for response in call:
            if response.HasField("progress") and response.progress.step == "render":
                assert response.progress.done < 120
                call.cancel()
    assert caught.value.code() == grpc.StatusCode.CANCELLED
    assert s3.list("stages/render/") == before
    assert health_status(address, "nlfpipe.render.v1.RenderService") == "SERVING"


def _swap(refs: dict, **changes) -> dict:
    return {**refs, **changes}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda i: _swap(i["good"], video=i["other_video"]),
         "fits: 16 frames, but the video has 12 frames"),
        (lambda i: _swap(i["good"], display_cameras=i["short_cameras"]),
         "display_cameras: 12 cameras for 16 output frames"),
        (lambda i: _swap(i["good"], viewer_cameras=i["short_cameras"]),
         "viewer_cameras: 12 cameras for 16 output frames"),
        (lambda i: {k: v for k, v in i["good"].items() if k != "fits"},
         "fits: the reference is required"),
        (lambda i: {**i["good"], "views": [7]}, "views: 7"),
        (lambda i: {**i["good"], "width": 101}, "width=101"),
        (lambda i: {**i["good"], "mesh_opacity": 1.5}, "mesh_opacity=1.5"),
        (lambda i: {**i["good"], "video_frame_repeat": 3}, "video_frame_repeat=3"),
    ],
)  # fmt: skip
def test_bad_input_is_invalid_argument_and_publishes_nothing(stub, s3, inputs, change, message):
    before = s3.list("stages/render/")
    with pytest.raises(grpc.RpcError) as caught:
        call_stage(stub.Run, render_pb2.RunRequest(**change(inputs)), timeout_s=120)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details()
    assert s3.list("stages/render/") == before


def test_another_body_model_file_changes_the_cache_key(tmp_path, monkeypatch, model_cache):
    from services.common.body_models import BodyModels
    from services.common.settings import load_settings
    from services.render.service import RenderServicer, load_body_meshes

    folder = tmp_path / "models"
    (folder / "smpl").mkdir(parents=True)
    for f in (model_cache / "smpl").iterdir():
        (folder / "smpl" / f.name).write_bytes(f.read_bytes())
    monkeypatch.setenv("SMPLFITTER_BODY_MODELS", str(folder))
    servicer = RenderServicer(None, BodyModels(load_settings({}), load_body_meshes))
    first = servicer.identity()
    np.save(folder / "smpl" / "kid_template.npy", np.ones((6890, 3), np.float32))
    second = servicer.identity()
    assert first.device == second.device and first.files != second.files
    kid = [{f.file: f.sha256 for f in i.files}["kid_template.npy"] for i in (first, second)]
    assert kid[0] != kid[1]
