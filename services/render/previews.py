"""Previews for people who would rather look than read: per view three stills side by side
(PNG) and a short low-resolution animation (GIF), and a top-view plot of the world (PNG)."""

from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

from services.common.colors import track_color_float
from services.render.world import Floor, Grid

STILL_WIDTH = 480
CLIP_WIDTH = 320
CLIP_MAX_FRAMES = 60
CLIP_MIN_FRAME_S = 0.1  # played at most 10 frames per second, faster than real time if need be


def _resize_to_width(image: np.ndarray, width: int) -> np.ndarray:
    h, w = image.shape[:2]
    if w <= width:
        return image
    height = max(2, round(h * width / w))
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


class PreviewCollector:
    """Keeps the few frames the previews need while a view is rendered (bounded memory)."""

    def __init__(self, num_frames: int, fps: float):
        self.fps = fps
        self.still_frames = sorted({num_frames // 6, num_frames // 2, (5 * num_frames) // 6})
        step = max(1, int(np.ceil(num_frames / CLIP_MAX_FRAMES)))
        self.clip_step = step
        self.clip_frames = set(range(0, num_frames, step))
        self.stills: list[np.ndarray] = []
        self.clip: list[np.ndarray] = []

    def offer(self, index: int, image: np.ndarray) -> None:
        """Looks at frame `index` of the view (RGB) and keeps it if a preview needs it."""
        if index in self.still_frames:
            self.stills.append(_resize_to_width(image, STILL_WIDTH))
        if index in self.clip_frames:
            self.clip.append(_resize_to_width(image, CLIP_WIDTH))

    def write_stills(self, path: Path) -> None:
        gap = np.full((self.stills[0].shape[0], 8, 3), 255, np.uint8)
        row = [part for still in self.stills for part in (still, gap)][:-1]
        if not cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(row, 1), cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {path}")

    def write_clip(self, path: Path) -> None:
        from PIL import Image

        frame_ms = round(1000 * max(self.clip_step / self.fps, CLIP_MIN_FRAME_S))
        fast = Image.Quantize.FASTOCTREE
        images = [
            Image.fromarray(f).quantize(255, fast, dither=Image.Dither.NONE) for f in self.clip
        ]
        images[0].save(
            path, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms, loop=0
        )


def write_top_view(
    path: Path,
    floor: Floor,
    grid: Grid,
    camera_path_mm: np.ndarray,
    track_paths_mm: Mapping[int, np.ndarray],
) -> None:
    """The world from above in floor metres (x: right of the first recording camera, y: its
    viewing direction): the floor grid's extent, the camera path, and each track's pelvis path
    in its colour; circles mark starts, crosses ends."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 7), dpi=110)
    try:
        h = grid.half_m
        cx, cy = grid.centre_m
        label = "floor (fitted ground plane)" if floor.fitted else "floor (under the lowest feet)"
        ax.add_patch(plt.Rectangle((cx - h, cy - h), 2 * h, 2 * h, color="0.92", label=label))
        cam = floor.to_plane(camera_path_mm)
        ax.plot(cam[:, 0], cam[:, 1], color="black", lw=1.5, label="recording camera")
        ax.plot(*cam[0], marker="^", color="black", ms=9, ls="none")
        ax.plot(*cam[-1], marker="s", color="black", ms=7, ls="none")
        for track_id, path_mm in sorted(track_paths_mm.items()):
            xy = floor.to_plane(path_mm)
            seen = np.flatnonzero(np.isfinite(xy).all(1))
            if not len(seen):
                continue
            colour = track_color_float(track_id)
            ax.plot(xy[:, 0], xy[:, 1], color=colour, lw=2, label=f"track {track_id}")
            ax.plot(*xy[seen[0]], marker="o", color=colour, ms=8, ls="none")
            ax.plot(*xy[seen[-1]], marker="X", color=colour, ms=9, ls="none", mec="white")
        ax.set_aspect("equal")
        ax.set_xlabel("right of the first camera view (m)")
        ax.set_ylabel("forward, along the first camera view (m)")
        ax.set_title("Top view (start: circle / triangle, end: cross / square)")
        ax.grid(True, color="0.8", lw=0.5)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
