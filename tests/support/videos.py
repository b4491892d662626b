"""Generated test videos: light person-like figures moving over a dark textured background."""

from dataclasses import dataclass
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
