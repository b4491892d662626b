"""Long videos in overlapping chunks, joined by a similarity transform on the overlap, so
that memory stays flat in the video's length (and DROID's keyframe buffer never overflows)."""

import numpy as np

from services.common.errors import PreconditionFailed
from services.slam.geometry import apply_similarity, similarity_between


def plan_chunks(items: list[int], size: int, overlap: int) -> list[list[int]]:
    """Runs of `size` items (fewer only when there are fewer items), evenly spread so that
    neighbours share at least `overlap` items and no chunk is left nearly empty."""
    if size <= overlap:
        raise ValueError(f"chunk size {size} must exceed the overlap {overlap}")
    if len(items) <= size:
        return [list(items)]
    count = int(np.ceil((len(items) - overlap) / (size - overlap)))
    starts = np.round(np.linspace(0, len(items) - size, count)).astype(int)
    return [list(items[s : s + size]) for s in starts]


def join_chunks(
    parts: list[tuple[list[int], np.ndarray, np.ndarray]],
) -> tuple[list[int], np.ndarray, np.ndarray, list[float]]:
    """Joins (frames, rotations, centres) chunks into the first chunk's world; returns the
    frames, poses and each later chunk's scale relative to the first."""
    frames, rotations, centres = list(parts[0][0]), list(parts[0][1]), list(parts[0][2])
    scales = []
    for chunk_frames, chunk_r, chunk_c in parts[1:]:
        row = {f: i for i, f in enumerate(frames)}
        shared = [i for i, f in enumerate(chunk_frames) if f in row]
        if len(shared) < 2:
            raise PreconditionFailed(
                f"chunks around frame {chunk_frames[0]} share {len(shared)} frames; cannot join"
            )
        mine = [row[chunk_frames[i]] for i in shared]
        s, q, t = similarity_between(
            np.asarray(rotations)[mine], np.asarray(centres)[mine],
            chunk_r[shared], chunk_c[shared],
        )  # fmt: skip
        moved_r, moved_c = apply_similarity(chunk_r, chunk_c, s, q, t)
        scales.append(s)
        for i, f in enumerate(chunk_frames):
            if f not in row:
                frames.append(f)
                rotations.append(moved_r[i])
                centres.append(moved_c[i])
    return frames, np.asarray(rotations), np.asarray(centres), scales
