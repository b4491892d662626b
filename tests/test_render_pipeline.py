"""The render on files: both videos decode as promised (PyAV), each track keeps its colour in
every frame, view and preview, and a track draws nothing in its invalid frames."""

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from PIL import Image

from services.common.colors import PALETTE, track_color
from services.common.errors import InvalidInput
from services.render.bodies import BodyMeshes
from services.render.pipeline import RenderSettings, load_inputs, render
from tests.support.render_inputs import write_render_inputs

NUM_FRAMES, WIDTH, HEIGHT, FPS = 24, 256, 144, 30.0
INVALID = {1: slice(10, 15)}  # covers the middle still (frame 12)
TRACKS = (1, 2)


@pytest.fixture(scope="module")
def body(tmp_path_factory) -> BodyMeshes:
    from smplfitter.pt import BodyModel

    from services.fitting.synthetic_body_model import write_synthetic_smpl

    root = write_synthetic_smpl(tmp_path_factory.mktemp("models"), genders=("neutral",))
    return BodyMeshes(BodyModel("smpl", "neutral", model_root=str(root / "smpl")))


@pytest.fixture(scope="module")
def files(tmp_path_factory, body):
    return write_render_inputs(
        tmp_path_factory.mktemp("inputs"),
        body.model,
        num_frames=NUM_FRAMES,
        width=WIDTH,
        height=HEIGHT,
        fps=FPS,
        invalid=INVALID,
        audio=True,
    )


def _inputs(files, repeat: int = 1):
    return load_inputs(
        files.video, files.fits, files.ground, files.display_cameras, files.viewer_cameras, repeat
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, files, body):
    out_dir = tmp_path_factory.mktemp("out")
    progress = []
    out = render(
        _inputs(files),
        body,
        RenderSettings(),
        out_dir,
        lambda done, total, message: progress.append((done, total)),
        lambda: None,
    )
    return out, progress


def _decode(path: Path) -> dict:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        pts = [frame.pts for frame in container.decode(video)]
        return {
            "codec": video.codec_context.name,
            "pix_fmt": video.codec_context.pix_fmt,
            "size": (video.codec_context.width, video.codec_context.height),
            "rate": video.average_rate,
            "deltas": set(np.diff(sorted(pts)).tolist()),
            "frames": len(pts),
            "audio": len(container.streams.audio),
        }


def test_videos_are_h264_yuv420p_cfr_with_every_frame_and_the_audio(rendered):
    out, progress = rendered
    camera, world = _decode(out.videos["camera"]), _decode(out.videos["world"])
    for info in (camera, world):
        assert info["codec"] == "h264" and info["pix_fmt"] == "yuv420p"
        assert info["size"] == (WIDTH, HEIGHT)
        assert info["rate"] == Fraction(30) and len(info["deltas"]) == 1, info
        assert info["frames"] == NUM_FRAMES
    assert camera["audio"] == 1 and world["audio"] == 0
    assert progress[-1] == (NUM_FRAMES, NUM_FRAMES) and len(progress) == NUM_FRAMES


def _owner(image: np.ndarray, tracks=TRACKS) -> np.ndarray:
    """Per pixel: the track whose colour it shows (nearest palette direction in RGB, saturated
    pixels only), else -1."""
    pixels = image.reshape(-1, 3).astype(np.float64)
    norm = np.linalg.norm(pixels, axis=1)
    chroma = pixels.max(1) - pixels.min(1)
    palette = np.array([track_color(t) for t in tracks], np.float64)
    palette /= np.linalg.norm(palette, axis=1, keepdims=True)
    cosine = (pixels / np.maximum(norm, 1)[:, None]) @ palette.T
    best = cosine.argmax(1)
    owner = np.where((cosine.max(1) > 0.985) & (chroma > 60), np.array(tracks)[best], -1)
    return owner.reshape(image.shape[:2])


def _panels(path: Path) -> list[np.ndarray]:
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    separator = np.all(image == 255, axis=(0, 2))
    edges = np.flatnonzero(np.diff(separator.astype(int)))
    bounds = [0, *edges + 1, image.shape[1]]
    return [image[:, a:b] for a, b in zip(bounds[::2], bounds[1::2], strict=True)]


def test_each_track_keeps_its_colour_and_vanishes_where_invalid(rendered):
    out, _ = rendered
    for view in ("camera", "world"):
        panels = _panels(out.stills[view])
        assert len(panels) == 3  # frames 4, 12, 20
        counts = [{t: int((_owner(p) == t).sum()) for t in TRACKS} for p in panels]
        first, middle, last = counts
        assert first[2] > 50 and middle[2] > 50 and last[2] > 50, (view, counts)
        assert first[1] > 50 and last[1] > 50, (view, counts)
        assert middle[1] == 0, f"track 1 is invalid in frame 12 but drawn ({view})"


def test_clip_and_top_view_use_the_track_colours(rendered):
    out, _ = rendered
    for view in ("camera", "world"):
        with Image.open(out.clips[view]) as clip:
            assert clip.n_frames == NUM_FRAMES
            clip.seek(2)
            frame = np.asarray(clip.convert("RGB"))
        owners = _owner(frame)
        assert all((owners == t).sum() > 10 for t in TRACKS), view
    plot = cv2.cvtColor(cv2.imread(str(out.top_view)), cv2.COLOR_BGR2RGB).reshape(-1, 3)
    for track in TRACKS:
        assert (plot == track_color(track)).all(1).sum() > 50, f"track {track} not in the plot"
    others = [c for c in PALETTE if c not in {track_color(t) for t in TRACKS}]
    assert not any((plot == c).all(1).sum() > 50 for c in others)


def test_a_video_of_another_length_is_refused(files, tmp_path):
    with pytest.raises(
        InvalidInput,
        match=r"fits: 24 frames, but the video has 24 frames x "
        r"video_frame_repeat 2",
    ):
        _inputs(files, repeat=2)
