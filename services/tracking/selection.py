"""Choosing the init frame and the subjects to track among the person candidates."""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rlemasklib import RLEMask

from services.common.errors import InvalidInput, PreconditionFailed


@dataclass(frozen=True)
class Candidate:
    """One person found on the init frame, at the working resolution."""

    index: int  # position in the candidate list (descending score), shown in the preview
    score: float
    mask: RLEMask

    def to_json(self, scale_x: float, scale_y: float) -> dict:
        """JSON description; the box is given in video pixels (x, y, w, h)."""
        x, y, w, h = (float(v) for v in self.mask.bbox())
        return {
            "index": self.index,
            "score": round(self.score, 6),
            "box_xywh": [x * scale_x, y * scale_y, w * scale_x, h * scale_y],
            "area_px": int(self.mask.area()),
        }


def resolve_init_frame(
    num_frames: int, fps: float, index: int | None = None, time_s: float | None = None
) -> int:
    """The init frame: by index, by time (floor of time x fps), or else the middle frame."""
    if index is not None and time_s is not None:
        raise InvalidInput("give either init_frame_index or init_time_seconds, not both")
    duration = num_frames / fps
    if time_s is not None:
        if not math.isfinite(time_s) or time_s < 0 or time_s >= duration:
            raise InvalidInput(
                f"init_time_seconds={time_s} is outside the video (0 to {duration:.3f} s, "
                f"{num_frames} frames at {fps:g} fps)"
            )
        return min(int(time_s * fps), num_frames - 1)
    if index is not None:
        if not 0 <= index < num_frames:
            raise InvalidInput(
                f"init_frame_index={index} is outside the video (0 to {num_frames - 1})"
            )
        return index
    return num_frames // 2


def no_person_error(frame_index: int, fps: float, num_frames: int) -> PreconditionFailed:
    """The error for an init frame on which the detector found nobody."""
    return PreconditionFailed(
        f"no person was found at the init frame {frame_index} ({frame_index / fps:.2f} s); "
        f"choose another init time (init_time_seconds, 0 to {num_frames / fps:.2f} s) "
        "where the people are clearly visible"
    )


def select_subjects(
    candidates: Sequence[Candidate],
    *,
    max_persons: int = 0,
    indices: Sequence[int] = (),
    points: Sequence[tuple[float, float]] = (),
    point_scale: tuple[float, float] = (1.0, 1.0),
) -> list[Candidate]:
    """The tracked subjects, in track-id order.

    Either explicit candidate indices, or image points (the candidate under each point; points
    are in video pixels and `point_scale` maps them to the masks' working resolution), or else
    the `max_persons` highest-scoring candidates (0 or negative: all). Candidates are expected
    in descending score order.
    """
    if indices and points:
        raise InvalidInput("give either candidate_indices or select_points, not both")
    if max_persons > 0 and (indices or points):
        raise InvalidInput(
            "max_persons cannot be combined with candidate_indices or select_points; "
            "an explicit selection already fixes the number of persons"
        )
    if indices:
        chosen = [_candidate_at_index(candidates, i) for i in indices]
    elif points:
        chosen = [_candidate_under_point(candidates, x, y, point_scale) for x, y in points]
    else:
        ranked = sorted(candidates, key=lambda c: -c.score)
        chosen = ranked[:max_persons] if max_persons > 0 else ranked
    return list({c.index: c for c in chosen}.values())


def _candidate_at_index(candidates: Sequence[Candidate], index: int) -> Candidate:
    if not 0 <= index < len(candidates):
        raise InvalidInput(
            f"candidate_indices contains {index}, but the init frame has {len(candidates)} "
            f"candidates (valid indices 0 to {len(candidates) - 1}); see the candidates preview"
        )
    return candidates[index]


def _candidate_under_point(
    candidates: Sequence[Candidate], x: float, y: float, scale: tuple[float, float]
) -> Candidate:
    height, width = candidates[0].mask.shape
    col, row = math.floor(x * scale[0]), math.floor(y * scale[1])
    if not (0 <= col < width and 0 <= row < height):
        frame_w, frame_h = round(width / scale[0]), round(height / scale[1])
        raise InvalidInput(
            f"select point ({x:g}, {y:g}) lies outside the {frame_w}x{frame_h} frame "
            f"(x from 0 to {frame_w - 1}, y from 0 to {frame_h - 1})"
        )
    hits = [c for c in candidates if c.mask.to_array()[row, col]]
    if not hits:
        raise InvalidInput(
            f"select point ({x:g}, {y:g}) is on no person candidate; click inside one of the "
            "outlines of the candidates preview, or give candidate_indices"
        )
    return max(hits, key=lambda c: c.score)


def masks_to_array(candidates: Sequence[Candidate]) -> np.ndarray:
    """Stacks candidate masks into a bool array [n, H, W]."""
    return np.stack([c.mask.to_array().astype(bool) for c in candidates])
