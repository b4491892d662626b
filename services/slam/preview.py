"""The trajectory preview: a top view (x right, z up the image, world up out of the page) of
the camera path in metres, keyframes marked, with a labelled metric grid."""

from pathlib import Path

import cv2
import numpy as np

SIZE = 640
MARGIN = 56


def write_preview(
    path: Path, centres_m: np.ndarray, keyframes: list[int], title: str, metric: bool = True
) -> None:
    """Draws the path (T, 3) in metres onto a SIZE x SIZE PNG."""
    image = np.full((SIZE, SIZE, 3), 255, np.uint8)
    xz = centres_m[:, [0, 2]]
    lo, hi = xz.min(0), xz.max(0)
    span = float(max(hi - lo).max()) if len(xz) else 0.0
    span = max(span, 0.5)
    middle = (lo + hi) / 2
    pixels_per_m = (SIZE - 2 * MARGIN) / span

    def to_px(points: np.ndarray) -> np.ndarray:
        rel = (points - middle) * pixels_per_m
        return np.stack([SIZE / 2 + rel[:, 0], SIZE / 2 - rel[:, 1]], 1).round().astype(np.int32)

    step = _grid_step(span)
    unit = "m" if metric else "SLAM units"
    for axis in (0, 1):
        first = np.floor((middle[axis] - span) / step) * step
        for value in np.arange(first, middle[axis] + span, step):
            point = middle.copy()
            point[axis] = value
            p = to_px(point[None])[0]
            if not MARGIN <= p[axis if axis == 0 else 1] <= SIZE - MARGIN:
                continue
            if axis == 0:
                cv2.line(image, (p[0], MARGIN), (p[0], SIZE - MARGIN), (225, 225, 225), 1)
                cv2.putText(image, f"{value:g}", (p[0] - 12, SIZE - MARGIN + 18),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.4, (90, 90, 90), 1, cv2.LINE_AA)
            else:
                cv2.line(image, (MARGIN, p[1]), (SIZE - MARGIN, p[1]), (225, 225, 225), 1)
                cv2.putText(image, f"{value:g}", (6, p[1] + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                            (90, 90, 90), 1, cv2.LINE_AA)  # fmt: skip
    cv2.putText(image, f"x ({unit})", (SIZE // 2 - 20, SIZE - 14), cv2.FONT_HERSHEY_SIMPLEX,
                0.45, (0, 0, 0), 1, cv2.LINE_AA)  # fmt: skip
    cv2.putText(image, f"z ({unit})", (6, MARGIN - 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                (0, 0, 0), 1, cv2.LINE_AA)  # fmt: skip
    track = to_px(xz)
    cv2.polylines(image, [track.reshape(-1, 1, 2)], False, (200, 90, 30), 2, cv2.LINE_AA)
    for k in keyframes:
        cv2.circle(image, tuple(int(v) for v in track[k]), 3, (30, 30, 220), -1, cv2.LINE_AA)
    cv2.circle(image, tuple(int(v) for v in track[0]), 6, (40, 160, 40), 2, cv2.LINE_AA)
    cv2.putText(image, title, (MARGIN, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                cv2.LINE_AA)  # fmt: skip
    cv2.putText(image, "start (green), keyframes (red)", (MARGIN, 42), cv2.FONT_HERSHEY_SIMPLEX,
                0.4, (60, 60, 60), 1, cv2.LINE_AA)  # fmt: skip
    cv2.imwrite(str(path), image)


def _grid_step(span: float) -> float:
    """A 1-2-5 step giving about 4 to 10 grid lines over `span`."""
    raw = span / 6
    magnitude = 10 ** np.floor(np.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * magnitude:
            return float(factor * magnitude)
    return float(10 * magnitude)
