"""The fitting service as a real process over gRPC, with a real S3 server."""

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from nlfpipe.fitting.v1 import fitting_pb2, fitting_pb2_grpc
from services.common.client import call_stage, open_channel
from services.common.errors import InvalidInput, ModelNotReady
from services.common.formats.cameras import CameraTrack
from services.common.formats.fits import load_fits
from services.common.formats.ground import load_ground
from services.common.server import artifact_to_proto
from services.common.settings import load_settings
from services.common.store import S3Store
from services.fitting.service import BodyModels
from services.fitting.synthetic_body_model import write_synthetic_smpl
from tests.support.s3 import bucket_store, s3_env
from tests.support.scenes import make_scene, predictions_for, write_predictions
from tests.support.services import start_service

BUCKET = "fitting-service-test"
NUM_FRAMES = 60


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory) -> Path:
    return write_synthetic_smpl(tmp_path_factory.mktemp("models"), genders=("neutral",))


@pytest.fixture(scope="module")
def s3(s3_endpoint: str) -> S3Store:
    return bucket_store(s3_endpoint, BUCKET)


@pytest.fixture(scope="module")
def stub(s3_endpoint, s3, model_cache) -> Iterator[fitting_pb2_grpc.FittingServiceStub]:
    env = {**s3_env(s3_endpoint, BUCKET), "NLFPIPE_MODEL_CACHE": str(model_cache)}
    with start_service("fitting", env) as (_, address):
        channel = open_channel(address)
        yield fitting_pb2_grpc.FittingServiceStub(channel)
        channel.close()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, model_cache, s3):
    from smplfitter.pt import BodyModel

    folder = tmp_path_factory.mktemp("inputs")
    body = BodyModel("smpl", "neutral", model_root=str(model_cache / "smpl"))
    scene = make_scene(body, num_frames=NUM_FRAMES, num_people=2, seed=4)
    preds = {p.track_id: predictions_for(body, scene, p) for p in scene.people}
    refs = {}
    write_predictions(folder / "good.bcz", scene.cameras, preds, NUM_FRAMES)
    write_predictions(folder / "empty.bcz", scene.cameras, {}, NUM_FRAMES)
    one = {k: v[:1] for k, v in preds[1].items()}
    write_predictions(folder / "one.bcz", scene.cameras, {**preds, 3: one}, NUM_FRAMES)
    scene.cameras.save(folder / "cameras.npz")
    short = CameraTrack(scene.cameras.intrinsics[:-5], scene.cameras.rotation[:-5],
                        scene.cameras.optical_center[:-5], scene.cameras.distortion[:-5],
                        scene.cameras.world_up, scene.cameras.image_size)
    short.save(folder / "short_cameras.npz")
    for name in ("good.bcz", "empty.bcz", "one.bcz", "cameras.npz", "short_cameras.npz"):
        refs[name] = artifact_to_proto(
            s3.put_file(f"inputs/{name}", folder / name, "application/octet-stream")
        )
    return refs


def run(stub, **fields):
    return call_stage(stub.Run, fitting_pb2.RunRequest(**fields), timeout_s=300)


def test_run_writes_fits_ground_and_viewer_cameras_then_hits_the_cache(stub, s3, inputs, tmp_path):
    progress = []
    request = fitting_pb2.RunRequest(predictions=inputs["good.bcz"], cameras=inputs["cameras.npz"],
                                     fps=30, fps_factor=2, write_preview=True)
    result = call_stage(stub.Run, request, timeout_s=300, on_progress=progress.append)
    assert not result.summary.cache_hit
    assert [p.done for p in progress if p.step == "fit"] == [1, 2]
    meta, tracks = load_fits(s3.get_file(s3.key_from_uri(result.fits.uri), tmp_path / "f.npz"))
    assert meta["track_ids"] == [1, 2] and meta["num_frames"] == 2 * NUM_FRAMES
    for track in tracks.values():
        assert track.pose_rotvecs.shape == (2 * NUM_FRAMES, 72)
        assert track.valid.all() and track.segments.tolist() == [[0, 2 * NUM_FRAMES]]
    ground = load_ground(s3.get_file(s3.key_from_uri(result.ground.uri), tmp_path / "g.json"))
    assert ground["found"] and ground["inliers"] > 20
    assert ground["format"] == "nlfpipe.ground/2" and ground["body_model"] == "smpl"
    assert 0 < ground["sole_offset_mm"] < 100
    assert ground["height_mm"] == pytest.approx(
        ground["foot_joint_height_mm"] - ground["sole_offset_mm"]
    )
    viewer = CameraTrack.load(
        s3.get_file(s3.key_from_uri(result.viewer_cameras.uri), tmp_path / "v.npz")
    )
    assert len(viewer) == 2 * NUM_FRAMES
    png = s3.get_bytes(s3.key_from_uri(result.preview.uri))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    again = call_stage(stub.Run, request, timeout_s=300)
    assert again.summary.cache_hit and again.fits.sha256 == result.fits.sha256


@pytest.mark.parametrize(
    ("fields", "code", "message"),
    [
        ({"predictions": "empty.bcz", "cameras": "cameras.npz"},
         grpc.StatusCode.INVALID_ARGUMENT, "no tracked person"),
        ({"predictions": "one.bcz", "cameras": "cameras.npz"},
         grpc.StatusCode.INVALID_ARGUMENT, "single frame"),
        ({"predictions": "good.bcz", "cameras": "short_cameras.npz"},
         grpc.StatusCode.INVALID_ARGUMENT, "55 cameras for 60 prediction frames"),
        ({"predictions": "good.bcz", "cameras": "cameras.npz", "body_model": "smplx"},
         grpc.StatusCode.INVALID_ARGUMENT, "body_model='smplx'"),
        ({"predictions": "good.bcz", "cameras": "cameras.npz", "fps_factor": 3},
         grpc.StatusCode.INVALID_ARGUMENT, "fps_factor=3"),
        ({"predictions": "good.bcz"}, grpc.StatusCode.INVALID_ARGUMENT, "image_width"),
    ],
)
def test_bad_input_is_a_clear_error_and_publishes_nothing(stub, s3, inputs, fields, code, message):
    before = s3.list("stages/fitting/")
    refs = {k: inputs[v] for k, v in fields.items() if k in ("predictions", "cameras")}
    rest = {k: v for k, v in fields.items() if k not in refs}
    with pytest.raises(grpc.RpcError) as caught:
        run(stub, fps=30, **refs, **rest)
    assert caught.value.code() == code
    assert message in caught.value.details()
    assert s3.list("stages/fitting/") == before


def test_missing_body_model_names_the_files_and_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.delenv("SMPLFITTER_BODY_MODELS", raising=False)
    settings = load_settings({"NLFPIPE_MODEL_CACHE": str(tmp_path)})
    with pytest.raises(ModelNotReady) as caught:
        BodyModels(settings).get("smpl", "neutral")
    text = str(caught.value)
    assert "basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl" in text
    assert "https://smpl.is.tue.mpg.de" in text


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_non_finite_predictions_are_refused(inputs, s3, tmp_path, monkeypatch, bad_value):
    import services.fitting.service as fitting_service
    from services.common.formats.predictions import PredictionsReader

    path = s3.get_file(s3.key_from_uri(inputs["good.bcz"].uri), tmp_path / "good.bcz")
    frames = list(PredictionsReader(path))
    frames[7].joints[0, 5, 1] = bad_value  # the pose writer refuses such values; forge them here
    monkeypatch.setattr(fitting_service, "PredictionsReader", lambda *_: iter(frames))
    with pytest.raises(InvalidInput, match="frame 7, track .* NaN or infinite"):
        fitting_service.read_tracks(path, np.arange(16))
