"""Generated test videos: light person-like figures moving over a dark textured background, and
frame-index videos whose frame i shows i in binary (for frame-exact checks)."""

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np


@dataclass
class FigureTruth:
    """Ground truth of one figure: per-frame box (x, y, w, h) in pixels."""

    boxes: np.ndarray


def _figure_box(index: int, frame: int, n_frames: int, width: int, height: int, figures: int):
    fig_h = 0.6 * height
    fig_w = 0.22 * fig_h
    lane = (index + 0.5) / figures
    phase = frame / max(n_frames - 1, 1)
    direction = 1 if index % 2 == 0 else -1
    cx = width * (lane + direction * 0.15 * np.sin(2 * np.pi * phase))
    cy = height * 0.55 + 0.03 * height * np.sin(4 * np.pi * phase + index)
    return cx - fig_w / 2, cy - fig_h / 2, fig_w, fig_h


def _draw_figure(img: np.ndarray, box, color) -> None:
    x, y, w, h = box
    head_r = w * 0.35
    cx = x + w / 2
    cv2.circle(img, (int(cx), int(y + head_r)), int(head_r), color, -1, cv2.LINE_AA)
    body = np.array(
        [
            [x, y + 2.2 * head_r],
            [x + w, y + 2.2 * head_r],
            [x + 0.8 * w, y + h],
            [x + 0.2 * w, y + h],
        ],
        np.int32,
    )
    cv2.fillConvexPoly(img, body, color, cv2.LINE_AA)


def make_test_video(
    path: Path,
    seconds: float = 2.0,
    width: int = 320,
    height: int = 240,
    fps: int = 30,
    figures: int = 2,
    seed: int = 0,
) -> list[FigureTruth]:
    """Writes an H.264 yuv420p mp4; returns each figure's true boxes per frame."""
    rng = np.random.default_rng(seed)
    n_frames = int(round(seconds * fps))
    background = (rng.integers(10, 50, (height // 8 + 1, width // 8 + 1, 3))).astype(np.uint8)
    background = cv2.resize(background, (width, height), interpolation=cv2.INTER_NEAREST)
    colors = [(230, 200, 170), (170, 220, 240), (210, 240, 190), (240, 180, 220)]
    truths = [FigureTruth(np.zeros((n_frames, 4))) for _ in range(figures)]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "20"}
        for t in range(n_frames):
            img = background.copy()
            for i in range(figures):
                box = _figure_box(i, t, n_frames, width, height, figures)
                truths[i].boxes[t] = box
                _draw_figure(img, box, colors[i % len(colors)])
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return truths


_BITS = 10  # frame i shows the low 10 bits of i
INDEX_WIDTH, INDEX_HEIGHT = 160, 96


def write_indexed_video(
    path: Path,
    frames: int,
    fps: Fraction = Fraction(30),
    pts_of: list[int] | None = None,
    rotation: int = 0,
    audio: bool = False,
    codec: str = "libx264",
) -> Path:
    """A video whose frame i shows i in binary (10 big blocks), with B-frames and 1 s GOPs."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = INDEX_WIDTH, INDEX_HEIGHT, "yuv420p"
        stream.codec_context.gop_size = int(fps)
        if codec == "libx264":
            stream.options = {"crf": "12", "preset": "faster", "bf": "2"}
        if rotation:
            stream.set_display_rotation(rotation)
        if pts_of is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if audio:
            sound = container.add_stream("aac", rate=48000)
        # With explicit timestamps each packet lasts until the next frame (the last as long
        # as the step before it), as a camera's variable-rate file records them.
        durations = {}
        if pts_of is not None:
            steps = np.diff(pts_of).tolist()
            durations = dict(zip(pts_of, [*steps, steps[-1]], strict=True))

        def mux(packets) -> None:
            for packet in packets:
                if packet.pts in durations:
                    packet.duration = durations[packet.pts]
                container.mux(packet)

        for i in range(frames):
            img = np.full((INDEX_HEIGHT, INDEX_WIDTH, 3), 30, np.uint8)
            for b in range(_BITS):
                if i >> b & 1:
                    y, x = divmod(b, 5)
                    img[8 + y * 44 : 44 + y * 44, 6 + x * 31 : 30 + x * 31] = 225
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if pts_of is not None:
                frame.pts, frame.time_base = pts_of[i], Fraction(1, 1000)
            mux(stream.encode(frame))
        mux(stream.encode())
        if audio:
            samples = np.zeros((1, int(48000 * frames / fps)), np.float32)
            chunk = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            chunk.sample_rate = 48000
            container.mux(sound.encode(chunk))
            container.mux(sound.encode())
    return path


def read_indices(path: Path, quarter_turns: int = 0) -> list[int]:
    """The frame indices shown by a video written by write_indexed_video, after turning each
    frame counter-clockwise by quarter_turns * 90 degrees."""
    indices = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            img = np.rot90(frame.to_ndarray(format="gray"), quarter_turns)
            value = 0
            for b in range(_BITS):
                y, x = divmod(b, 5)
                if img[26 + y * 44, 18 + x * 31] > 128:
                    value |= 1 << b
            indices.append(value)
    return indices
