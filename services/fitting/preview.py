"""Top-down preview: every track's path, the original and the viewer camera paths (PNG)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from services.common.colors import track_color

SIZE = 800


def write_preview(path: Path, tracks_mm: dict[int, np.ndarray], cameras_mm: np.ndarray,
                  viewer_mm: np.ndarray, up: np.ndarray) -> None:
    """tracks_mm: per track id (T, 3) centres (NaN = invalid); cameras/viewer: (T, 3)."""
    up = np.asarray(up, np.float64)
    a = np.cross(up, [0.0, 0.0, 1.0] if abs(up[2]) < 0.9 else [1.0, 0.0, 0.0])
    a /= np.linalg.norm(a)
    b = np.cross(a, up)
    paths = {f"track {k}": v for k, v in tracks_mm.items()}
    colours = {f"track {k}": track_color(k)[::-1] for k in tracks_mm}  # cv2 draws BGR
    paths["camera"], paths["viewer"] = cameras_mm, viewer_mm
    flat = {k: np.stack([v @ a, v @ b], axis=-1) for k, v in paths.items()}
    every = np.concatenate([v[np.isfinite(v).all(1)] for v in flat.values()])
    lo, hi = every.min(0), every.max(0)
    scale = (SIZE - 80) / max(float((hi - lo).max()), 1.0)
    image = np.full((SIZE, SIZE, 3), 255, np.uint8)
    for name, xy in flat.items():
        colour = (0, 0, 0) if name == "camera" else (128, 128, 128) if name == "viewer" else \
            colours[name]
        px = ((xy - lo) * scale + 40).round()
        for p, q in zip(px[:-1], px[1:], strict=True):
            if np.isfinite(p).all() and np.isfinite(q).all():
                cv2.line(image, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), colour, 2)
        first = px[np.isfinite(px).all(1)]
        if len(first):
            cv2.putText(image, name, (int(first[0][0]) + 4, int(first[0][1]) - 4),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1)
    cv2.imwrite(str(path), image)
