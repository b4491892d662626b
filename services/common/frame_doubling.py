"""The frame layout of a doubled frame rate, shared by the video (interpolation) and the poses
(fitting), so that output frame k of the video and of the fits show the same instant.

N source frames become 2N output frames at twice the rate: output frame 2i is source frame i,
output frame 2i+1 lies halfway between source frames i and i+1, and the last output frame
(2N-1) repeats source frame N-1, as the reference's RIFE output does (there is no frame N to
interpolate towards, and 2N frames keep the doubled duration equal to the source's).
"""

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

import numpy as np

FACTOR = 2

T = TypeVar("T")


def doubled_count(source_frames: int) -> int:
    """Number of output frames for `source_frames` source frames."""
    return FACTOR * source_frames


def source_neighbours(source_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """For each output frame, the two source frames it lies halfway between (equal indices:
    the output frame is that source frame itself)."""
    out = np.arange(doubled_count(source_frames))
    first = out // FACTOR
    second = np.minimum(first + out % FACTOR, source_frames - 1)
    return first, second


def interleave(sources: np.ndarray, middles: np.ndarray) -> np.ndarray:
    """(N, ...) source values and (N-1, ...) middle values -> (2N, ...) in the doubled layout."""
    n = len(sources)
    if len(middles) != max(n - 1, 0):
        raise ValueError(f"{n} source frames need {max(n - 1, 0)} middles, got {len(middles)}")
    out = np.empty((doubled_count(n), *sources.shape[1:]), np.result_type(sources, middles))
    out[0::2] = sources
    out[1:-1:2] = middles
    if n:
        out[-1] = sources[-1]
    return out


def stream_doubled(
    frames: Iterable[T],
    middles: Callable[[Sequence[T], Sequence[T]], Sequence[T]],
    batch_size: int = 1,
) -> Iterator[T]:
    """Yields the doubled sequence of a stream of frames, in output order.

    `middles(firsts, seconds)` makes the middle frames of a batch of consecutive pairs; it is
    called with at most `batch_size` pairs, so at most `batch_size + 1` source frames are held.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    pending: list[T] = []  # source frames whose middle frame is not made yet, plus the next one
    for frame in frames:
        pending.append(frame)
        if len(pending) > batch_size:
            yield from _flush(pending, middles)
            pending = pending[-1:]
    if pending:
        yield from _flush(pending, middles)
        yield pending[-1]  # the last source frame
        yield pending[-1]  # and its repeat, the last middle frame


def _flush(pending: list[T], middles: Callable[[Sequence[T], Sequence[T]], Sequence[T]]):
    """Source frame, middle frame, ... for every pair in `pending` (the last frame waits)."""
    if len(pending) < 2:
        return
    made = middles(pending[:-1], pending[1:])
    if len(made) != len(pending) - 1:
        raise ValueError(f"middles() returned {len(made)} frames for {len(pending) - 1} pairs")
    for source, middle in zip(pending[:-1], made, strict=True):
        yield source
        yield middle
