"""Propagating the init masks over the whole video in passes (reference B.12).

The burn-in passes (all but the last) visit the frames in a random order when
`permute_frames` is set, so that the permanent memory sees the whole video; the last pass
visits them in temporal order and writes to the temporary memory only, so the burn-in memory
stays intact. With a single pass, that pass is the permuted (or temporal) one. Every pass
starts at the init frame. Results are stored by frame index, so the output is always in
temporal order, whatever order the frames were visited in.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from rlemasklib import RLEMask

from services.tracking.frames import FrameSpool


class MaskPropagator(Protocol):
    """Turns init masks plus a stream of frames into per-frame label maps."""

    def start(self, init_frame: np.ndarray, init_masks: np.ndarray, permanent_frames: int) -> None:
        """Memorizes the init frame (RGB uint8 [H, W, 3]) with its masks (bool [n, H, W]);
        `permanent_frames` is how many frames will be written to permanent memory."""

    def step(self, index: int, frame: np.ndarray, temporary: bool) -> np.ndarray:
        """Segments frame `index` and memorizes it (in temporary memory if asked); returns the
        label map (uint8 [H, W], 0 = background, i + 1 = object i)."""


@dataclass(frozen=True)
class PassPlan:
    """How the frames are visited."""

    num_frames: int
    init_index: int
    passes: int = 2
    permute: bool = True
    seed: int = 0

    def shuffled(self, pass_index: int) -> bool:
        """Whether a pass visits the frames in random order."""
        final = pass_index == self.passes - 1
        return self.permute and not (final and self.passes > 1)

    def orders(self) -> list[np.ndarray]:
        """Frame indices of each pass, init frame first."""
        rng = np.random.default_rng(self.seed)
        rest = np.delete(np.arange(self.num_frames), self.init_index)
        return [
            np.concatenate([[self.init_index], rng.permutation(rest) if self.shuffled(i) else rest])
            for i in range(self.passes)
        ]

    @property
    def permanent_frames(self) -> int:
        """Frames written to permanent memory: the init frame plus every burn-in visit."""
        burn_in_passes = max(self.passes - 1, 1)
        return 1 + burn_in_passes * self.num_frames


def label_map_to_masks(label_map: np.ndarray, n_objects: int) -> dict[int, RLEMask]:
    """Per-object masks of a label map, by object index; empty masks are left out."""
    masks = RLEMask.from_label_map(label_map)
    return {i - 1: m for i, m in masks.items() if 1 <= i <= n_objects and m.area() > 0}


def pass_progress(done: int, frames_per_pass: int, passes: int) -> str:
    """`pass 2/2, frame 400/1350` for the `done`-th frame step of all passes (1-based)."""
    if frames_per_pass <= 0:
        return "propagating masks"
    index = min(max(done - 1, 0) // frames_per_pass, passes - 1)
    frame = done - index * frames_per_pass
    return f"pass {index + 1}/{passes}, frame {frame}/{frames_per_pass}"


def propagate(
    plan: PassPlan,
    propagator: MaskPropagator,
    init_frame: np.ndarray,
    init_masks: np.ndarray,
    sequential_frames: Callable[[], Iterator[np.ndarray]],
    workdir: Path,
    on_frame: Callable[[int, int], None] = lambda done, total: None,
) -> list[dict[int, RLEMask]]:
    """Runs every pass and returns the last pass's masks by frame index, then object index.

    `sequential_frames()` decodes the video anew at the working resolution; permuted passes
    read from a JPEG spool made by one such decode.
    """
    orders = plan.orders()
    propagator.start(init_frame, init_masks, plan.permanent_frames)
    total = sum(len(o) for o in orders)
    done = 0
    spool = None
    results: list[dict[int, RLEMask]] = [{} for _ in range(plan.num_frames)]
    n_objects = len(init_masks)
    try:
        for pass_index, order in enumerate(orders):
            final = pass_index == len(orders) - 1
            if plan.shuffled(pass_index):
                if spool is None:
                    spool = FrameSpool(workdir, sequential_frames())
                frames = (spool[int(i)] for i in order)
            else:
                frames = _temporal_frames(plan.init_index, init_frame, sequential_frames())
            temporary = final and plan.passes > 1
            for index, frame in zip(order, frames, strict=True):
                label_map = propagator.step(int(index), frame, temporary)
                if final:
                    results[index] = label_map_to_masks(label_map, n_objects)
                done += 1
                on_frame(done, total)
    finally:
        if spool is not None:
            spool.close()
    return results


def _temporal_frames(
    init_index: int, init_frame: np.ndarray, frames: Iterator[np.ndarray]
) -> Iterator[np.ndarray]:
    """The init frame, then every other frame in order."""
    yield init_frame
    for i, frame in enumerate(frames):
        if i != init_index:
            yield frame
