"""The doubled layout, independent of any model: the shared layout module, the fitting stage's
pose doubling and the interpolated video all put the same source frames at every output frame;
the video has exactly 2N frames at twice the rate, the source's audio and colour range; bad
input is refused and publishes nothing."""

from fractions import Fraction
from functools import partial
from pathlib import Path

import av
import numpy as np
import pytest
from av.video.reformatter import ColorRange

from services.common import frame_doubling
from services.common.errors import InvalidInput
from services.common.formats.cameras import CameraTrack
from services.common.identity import ModelIdentity, with_identity
from services.common.stagerun import run_stage
from services.common.store import LocalFolderStore
from services.fitting.doubling import double_cameras, double_frames
from services.interpolation.flow import FlowInterpolator
from services.interpolation.pipeline import (
    STAGE,
    VERSION,
    InterpolationParams,
    compute_interpolation,
)
from tests.support.videos import read_indices, write_indexed_video


def test_the_layout_of_a_few_frames():
    first, second = frame_doubling.source_neighbours(3)
    assert first.tolist() == [0, 0, 1, 1, 2, 2]
    assert second.tolist() == [0, 1, 1, 2, 2, 2]
    assert frame_doubling.doubled_count(3) == 6


def _expected(values: np.ndarray) -> np.ndarray:
    first, second = frame_doubling.source_neighbours(len(values))
    return 0.5 * (values[first] + values[second])


@pytest.mark.parametrize("n", [1, 2, 5])
def test_interleave_follows_the_layout(n):
    values = np.random.default_rng(n).normal(size=(n, 3))
    middles = 0.5 * (values[:-1] + values[1:])
    np.testing.assert_allclose(frame_doubling.interleave(values, middles), _expected(values))


@pytest.mark.parametrize("batch_size", [1, 2, 3, 8])
@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_the_stream_follows_the_layout_whatever_the_batch(n, batch_size):
    calls = []

    def middles(firsts, seconds):
        calls.append(len(firsts))
        return [0.5 * (a + b) for a, b in zip(firsts, seconds, strict=True)]

    out = list(frame_doubling.stream_doubled(iter(np.arange(n, dtype=float)), middles, batch_size))
    np.testing.assert_allclose(out, _expected(np.arange(n, dtype=float)))
    assert sum(calls) == n - 1 and max(calls, default=0) <= batch_size


def test_fitting_doubles_poses_and_cameras_in_the_same_layout():
    n = 7
    values = np.random.default_rng(0).normal(size=(n, 4, 3))
    doubled, valid, segments = double_frames(values, np.ones(n, bool), [(0, n)])
    np.testing.assert_allclose(doubled, _expected(values))
    assert valid.all() and segments == [(0, 2 * n)]
    centres = np.random.default_rng(1).normal(size=(n, 3))
    cameras = CameraTrack(
        np.repeat(np.eye(3)[None], n, 0), np.repeat(np.eye(3)[None], n, 0), centres,
        np.zeros((n, 5)), np.array([0.0, -1.0, 0.0]), (64, 48),
    )  # fmt: skip
    np.testing.assert_allclose(double_cameras(cameras).optical_center, _expected(centres))


# --- the video ---------------------------------------------------------------------------------


class Copying:
    """A stand-in model: the 'middle' frame is one of its two neighbours, so that the output
    frames show which source frames the layout put there."""

    batch_size = 3
    identity = ModelIdentity()

    def __init__(self, which: int):
        self.which = which
        self.name = f"copy-{which}"

    def middles(self, firsts, seconds, flow_scale):
        return [f.yuv for f in (firsts, seconds)[self.which]]


def interpolate(store, path: Path, backend, **params):
    info = store.put_file(f"inputs/{path.name}", path, "video/mp4")
    params = InterpolationParams(**params)
    result = run_stage(
        store, stage=STAGE, version=VERSION, inputs={"video": info},
        params=with_identity({**params.to_dict(), "backend": backend.name}, backend.identity),
        compute=partial(compute_interpolation, params=params, backend=backend),
    )  # fmt: skip
    return result, store.local_path(result.outputs["video"].key)


@pytest.fixture
def store(tmp_path) -> LocalFolderStore:
    return LocalFolderStore(tmp_path / "store")


def _stream_facts(path: Path):
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        pts = sorted(p.pts for p in container.demux(video) if p.size)
        steps = set(np.diff(pts).tolist())
        audio = container.streams.audio
        audio_s = float(audio[0].duration * audio[0].time_base) if audio else None
        return {
            "frames": len(pts),
            "frame_s": {float(s * video.time_base) for s in steps},
            "rate": video.average_rate,
            "pix_fmt": video.codec_context.pix_fmt,
            "color_range": int(video.codec_context.color_range),
            "audio_s": audio_s,
            "audio_frame_s": (audio[0].codec_context.frame_size / audio[0].rate) if audio else 0,
        }


@pytest.mark.parametrize("fps", [Fraction(30), Fraction(30000, 1001)])
def test_frame_2i_is_source_frame_i_at_exactly_twice_the_rate(store, tmp_path, fps):
    n = 25
    source = write_indexed_video(tmp_path / "indexed.mp4", n, fps=fps, audio=True)
    first, second = frame_doubling.source_neighbours(n)
    for which, expected in ((0, first), (1, second)):
        result, out = interpolate(store, source, Copying(which))
        assert read_indices(out) == expected.tolist()
    facts, before = _stream_facts(out), _stream_facts(source)
    assert facts["frames"] == 2 * n == result.counts["frames"]
    assert facts["rate"] == 2 * fps and result.extra["fps"] == pytest.approx(float(2 * fps))
    assert len(facts["frame_s"]) == 1
    assert facts["frame_s"].pop() == pytest.approx(float(1 / (2 * fps)), rel=1e-3)  # CFR
    assert facts["pix_fmt"] == "yuv420p"
    assert abs(facts["audio_s"] - before["audio_s"]) <= before["audio_frame_s"]


def test_the_flow_backend_keeps_the_source_frames_at_even_positions(store, tmp_path):
    source = write_indexed_video(tmp_path / "indexed.mp4", 12)
    _, out = interpolate(store, source, FlowInterpolator())
    assert read_indices(out)[0::2] == list(range(12))


def write_full_range_video(path: Path, frames: int) -> Path:
    """Gray frames of rising brightness, full-range BT.709 (decodes as yuvj420p)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.color_range, stream.codec_context.colorspace = 2, 1
        for i in range(frames):
            rgb = np.full((48, 64, 3), 20 + 30 * i, np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, "rgb24").reformat(
                format="yuv420p", dst_colorspace=1, dst_color_range=ColorRange.JPEG
            )
            frame.color_range = 2
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def test_the_colour_range_is_kept(store, tmp_path):
    source = write_full_range_video(tmp_path / "full.mp4", 6)
    _, out = interpolate(store, source, FlowInterpolator())
    facts = _stream_facts(out)
    assert (facts["pix_fmt"], facts["color_range"]) == ("yuvj420p", 2)
    with av.open(str(out)) as container:
        luma = [float(f.to_ndarray()[:48].mean()) for f in container.decode(video=0)]
    np.testing.assert_allclose(luma[0::2], [20 + 30 * i for i in range(6)], atol=1.5)
    np.testing.assert_allclose(luma[1:-1:2], [35 + 30 * i for i in range(5)], atol=1.5)


def _rotated(tmp_path):
    return write_indexed_video(tmp_path / "rotated.mp4", 4, rotation=90)


def _one_frame(tmp_path):
    return write_indexed_video(tmp_path / "one.mp4", 1)


def _variable_rate(tmp_path):
    return write_indexed_video(tmp_path / "vfr.mp4", 6, pts_of=[0, 33, 66, 150, 183, 300])


def _not_a_video(tmp_path):
    path = tmp_path / "noise.mp4"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (_rotated, "rotation of 90 degrees"),
        (_one_frame, "has 1 frame(s)"),
        (_variable_rate, "frame durations vary"),
        (_not_a_video, "not a readable video"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_published(store, tmp_path, make, words):
    with pytest.raises(InvalidInput) as caught:
        interpolate(store, make(tmp_path), FlowInterpolator())
    assert words in str(caught.value)
    assert store.list("stages/") == []


@pytest.mark.parametrize(
    ("params", "words"),
    [({"fps_factor": 3}, "only 2"), ({"flow_scale": 0.3}, "flow_scale=0.3"), ({"crf": 60}, "crf")],
)
def test_bad_parameters_are_refused(params, words):
    with pytest.raises(InvalidInput, match=words):
        InterpolationParams(**params)
