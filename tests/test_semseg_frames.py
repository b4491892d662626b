"""Semseg on chosen frames and with a chosen network: selective decoding (identical pixels,
seeks over long gaps), one masks record per video frame with `computed_frames`, validation of
`frame_indices`, and the network choice per device (issue 10, masks)."""

from pathlib import Path

import av
import grpc
import numpy as np
import pytest
import torch

from nlfpipe.semseg.v1 import semseg_pb2, semseg_pb2_grpc
from services.common import frames as frames_module
from services.common.client import call_stage, open_channel
from services.common.errors import InvalidInput, ModelNotReady
from services.common.formats.masks import read_track_masks
from services.common.frames import Video
from services.common.server import artifact_to_proto, build_server
from services.common.settings import load_settings
from services.common.stagerun import StageRun
from services.common.store import LocalFolderStore
from services.semseg import backends
from services.semseg.backends import Segmenters, default_model
from services.semseg.deeplab import DeepLabPersonSegmenter, build_deeplabv3
from services.semseg.pipeline import SemsegParams, compute_semseg
from services.semseg.service import build
from services.semseg.synthetic import SyntheticPersonSegmenter
from tests.support.videos import make_test_video

FRAMES = 150


def write_short_gop_video(path: Path, frames: int = FRAMES, keyint: int = 10) -> None:
    """A 96x64 H.264 video whose every pixel differs per frame, a keyframe every `keyint`."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (64, 96, 3), np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "18", "g": str(keyint), "bf": "2"}
        for t in range(frames):
            image = np.roll(base, 3 * t, axis=1)
            image[:8, : (t % 96) + 1] = 255  # a bar whose length names the frame
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def gop_video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gop") / "gop.mp4"
    write_short_gop_video(path)
    return path


def test_chosen_frames_decode_to_the_same_pixels_with_seeks_over_long_gaps(
    gop_video, monkeypatch
):
    video = Video(gop_video)
    every = list(video.frames((32, 48)))
    seeks = []
    original_seek = frames_module._FrameDecoder._seek

    def counting_seek(self, target):
        seeks.append(target)
        original_seek(self, target)

    monkeypatch.setattr(frames_module._FrameDecoder, "_seek", counting_seek)
    monkeypatch.setattr(frames_module, "SEEK_MIN_GAP", 20)
    chosen = [0, 1, 7, 25, 26, 60, 61, 99, 149]
    picked = list(video.frames_at(chosen, (32, 48)))
    assert seeks == [60, 99, 149]  # the gaps over 20 frames
    assert len(picked) == len(chosen)
    for index, frame in zip(chosen, picked, strict=True):
        np.testing.assert_array_equal(frame, every[index])
    with pytest.raises(ValueError, match="ascending"):
        list(video.frames_at([5, 5], (32, 48)))


@pytest.fixture(scope="module")
def figures_video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("figures") / "figures.mp4"
    make_test_video(path, seconds=1.2, width=96, height=64, fps=10)
    return path


def segment(video: Path, folder: Path, **params):
    run = StageRun(folder, {"video": video}, {}, None, None)
    outputs = compute_semseg(
        run, SemsegParams(short_side=64, **params), SyntheticPersonSegmenter(), "synthetic",
        "synthetic",
    )
    return outputs, read_track_masks(outputs.files["masks"].path)


def test_only_the_chosen_frames_carry_masks_identical_to_a_full_run(figures_video, tmp_path):
    (tmp_path / "all").mkdir()
    (tmp_path / "some").mkdir()
    _, full = segment(figures_video, tmp_path / "all")
    chosen = [0, 3, 4, 11]
    outputs, some = segment(figures_video, tmp_path / "some", frame_indices=tuple(chosen),
                            batch_size=3)
    assert some.num_frames == full.num_frames == 12
    assert some.meta["computed_frames"] == chosen and "computed_frames" not in full.meta
    for i in range(12):
        if i in chosen:
            assert some.frame(i)[0] == full.frame(i)[0]
        else:
            assert some.frame(i) == {}
    assert outputs.counts == {"frames": 12, "frames_segmented": 4, "frames_with_persons": 4}


@pytest.mark.parametrize(
    ("indices", "message"),
    [((3, 2), r"entry 1 \(2\) follows 3"), ((1, 4, 4), r"entry 2 \(4\) follows 4")],
)
def test_unsorted_or_repeated_frame_indices_are_refused(indices, message):
    with pytest.raises(InvalidInput, match=message):
        SemsegParams(frame_indices=indices)


def test_a_frame_index_outside_the_video_is_refused(figures_video, tmp_path):
    with pytest.raises(InvalidInput, match=r"12 is outside the video \(12 frames, 0 to 11\)"):
        segment(figures_video, tmp_path, frame_indices=(2, 12))


def test_the_default_network_is_the_light_one_on_the_cpu():
    assert default_model("cpu", {}) == "deeplabv3-mobilenet"
    assert default_model("cuda", {}) == "deeplabv3"
    assert default_model("cpu", {"NLFPIPE_SEMSEG_MODEL": "deeplabv3"}) == "deeplabv3"


def test_segmenters_load_the_requested_network_from_the_model_cache(tmp_path, monkeypatch):
    settings = load_settings({"NLFPIPE_MODEL_CACHE": str(tmp_path), "NLFPIPE_DEVICE": "cpu"})
    with pytest.raises(ModelNotReady, match="deeplabv3_resnet101_coco-586e9e4e.pth"):
        Segmenters(settings, "deeplabv3", {}).get("deeplabv3")
    torch.manual_seed(0)
    weights = tmp_path / "mobilenet.pth"
    torch.save(build_deeplabv3("deeplabv3-mobilenet").state_dict(), weights)
    monkeypatch.setattr(backends, "require_model", lambda name, _: weights)
    monkeypatch.setattr(backends, "registry_files", lambda name, _: [])
    loaded = Segmenters(settings, "deeplabv3", {}).get()
    assert loaded.model == "deeplabv3-mobilenet"
    assert isinstance(loaded.segmenter, DeepLabPersonSegmenter)
    assert (loaded.identity.device, loaded.identity.precision) == ("cpu", "float32")
    probability = loaded.segmenter.person_probability(np.zeros((1, 40, 56, 3), np.uint8))
    assert probability.shape == (1, 40, 56) and ((probability >= 0) & (probability <= 1)).all()
    synthetic = Segmenters(settings, "synthetic", {}).get("deeplabv3")
    assert synthetic.model == "synthetic" and synthetic.identity.files == ()


def test_service_segments_requested_frames_and_refuses_bad_ones(
    figures_video, tmp_path, monkeypatch
):
    monkeypatch.setenv("NLFPIPE_SEMSEG_BACKEND", "synthetic")
    settings = load_settings({"NLFPIPE_MODEL_CACHE": str(tmp_path), "NLFPIPE_DEVICE": "cpu"})
    store = LocalFolderStore(tmp_path / "store")
    server = build_server(build(settings, store), port=0, settings=settings)
    assert server.wait_ready(30)
    video = artifact_to_proto(store.put_file("in/v.mp4", figures_video, "video/mp4"))
    try:
        with open_channel(f"127.0.0.1:{server.port}") as channel:
            stub = semseg_pb2_grpc.SemsegServiceStub(channel)
            request = semseg_pb2.RunRequest(
                video=video, short_side=64, frame_indices=[1, 5],
                model=semseg_pb2.SEMSEG_MODEL_DEEPLABV3_RESNET101,
            )
            result = call_stage(stub.Run, request, timeout_s=60)
            assert (result.frames_segmented, result.frames_with_persons) == (2, 2)
            assert result.model == "synthetic" and not result.summary.cache_hit
            assert call_stage(stub.Run, request, timeout_s=60).summary.cache_hit
            other = call_stage(stub.Run, semseg_pb2.RunRequest(
                video=video, short_side=64, frame_indices=[1, 6]), timeout_s=60)
            assert other.summary.cache_key != result.summary.cache_key
            published = set(store.list("stages/semseg/"))
            for indices in ([5, 1], [1, 40]):
                bad = semseg_pb2.RunRequest(video=video, short_side=64, frame_indices=indices)
                with pytest.raises(grpc.RpcError) as caught:
                    call_stage(stub.Run, bad, timeout_s=60)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "frame_indices" in caught.value.details()
            assert set(store.list("stages/semseg/")) == published
    finally:
        server.stop(0)
