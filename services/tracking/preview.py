"""The candidates preview: the init frame with each candidate's outline and number (PNG)."""

from collections.abc import Sequence

import cv2
import numpy as np

from services.common.colors import track_color
from services.tracking.selection import Candidate


def render_candidates_preview(frame: np.ndarray, candidates: Sequence[Candidate]) -> bytes:
    """PNG bytes of the full-resolution RGB `frame` with numbered candidate outlines; the
    numbers are the candidate indices that `candidate_indices` refers to. Candidate i is drawn
    in the colour of track id i: the track it becomes when subjects are taken in score order
    (the default); an explicit selection numbers the tracks in its own order."""
    canvas = frame.copy()
    height, width = canvas.shape[:2]
    thickness = max(2, round(min(height, width) / 200))
    font_scale = max(0.6, min(height, width) / 500)
    for candidate in candidates:
        color = track_color(candidate.index)
        mask = candidate.mask.resize((height, width)).to_array().astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(canvas, contours, -1, color, thickness, cv2.LINE_AA)
        x, y, _, _ = cv2.boundingRect(mask)
        label = str(candidate.index)
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        top = max(y - th - base - 2, 0)
        cv2.rectangle(canvas, (x, top), (x + tw + 4, top + th + base + 2), color, -1)
        cv2.putText(
            canvas,
            label,
            (x + 2, top + th + 1),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            (0, 0, 0),
            thickness,
            cv2.LINE_AA,
        )
    ok, data = cv2.imencode(".png", cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding of the candidates preview failed")
    return data.tobytes()
