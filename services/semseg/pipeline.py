"""The semseg stage's computation: stream the chosen frames in batches, threshold the person
probability, write one record per video frame (track id 0 = all persons; frames that were not
segmented carry no masks and are listed nowhere, the segmented ones in `meta.computed_frames`)."""

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Protocol

import numpy as np
from rlemasklib import RLEMask

from services.common.errors import InvalidInput
from services.common.formats.masks import MEDIA_TYPE as MASKS_MEDIA_TYPE
from services.common.formats.masks import write_track_masks
from services.common.frames import Video, working_shape
from services.common.stagerun import OutputFile, StageOutputs, StageRun

STAGE = "semseg"
VERSION = "1"
ALL_PERSONS = 0


class PersonSegmenter(Protocol):
    """Gives the person probability of every pixel of a batch of frames."""

    def person_probability(self, frames: np.ndarray) -> np.ndarray:
        """RGB uint8 [B, H, W, 3] -> float [B, H, W] in 0..1."""


@dataclass(frozen=True)
class SemsegParams:
    """Parameters of one semseg run (defaults: the reference's run_all settings)."""

    threshold: float = 0.2  # person probability at or above which a pixel is a person
    batch_size: int = 8
    short_side: int = 520  # working resolution, also the masks' resolution
    frame_indices: tuple[int, ...] = ()  # frames to segment, ascending; () = every frame

    def __post_init__(self):
        if not 0 < self.threshold <= 1:
            raise InvalidInput(f"threshold={self.threshold} must be in (0, 1]")
        if not 1 <= self.batch_size <= 256:
            raise InvalidInput(f"batch_size={self.batch_size} is out of range (1 to 256)")
        if not 16 <= self.short_side <= 4096:
            raise InvalidInput(f"short_side={self.short_side} is out of range (16 to 4096)")
        for k, (a, b) in enumerate(zip(self.frame_indices, self.frame_indices[1:], strict=False)):
            if b <= a:
                raise InvalidInput(
                    f"frame_indices must be ascending without repeats: entry {k + 1} ({b}) "
                    f"follows {a}"
                )

    def to_dict(self) -> dict:
        """JSON-able parameters (the cache key is derived from them)."""
        return {
            "threshold": self.threshold,
            "batch_size": self.batch_size,
            "short_side": self.short_side,
            "frame_indices": list(self.frame_indices) or None,
        }

    def frames_of(self, num_frames: int) -> list[int]:
        """The frames to segment in a video of `num_frames` (InvalidInput when out of range)."""
        if not self.frame_indices:
            return list(range(num_frames))
        if self.frame_indices[-1] >= num_frames:
            raise InvalidInput(
                f"frame_indices: {self.frame_indices[-1]} is outside the video ({num_frames} "
                f"frames, 0 to {num_frames - 1})"
            )
        return list(self.frame_indices)


def compute_semseg(
    run: StageRun, params: SemsegParams, segmenter: PersonSegmenter, backend: str, model: str
) -> StageOutputs:
    """Segments the chosen frames of `run.inputs["video"]`; outputs `masks`."""
    video = Video(run.inputs["video"])
    chosen = params.frames_of(video.num_frames)
    shape = working_shape(video.height, video.width, params.short_side)
    frames: list[dict[int, RLEMask]] = [{} for _ in range(video.num_frames)]
    done = person_pixels = with_persons = 0
    with run.step("segment"):
        decoded = video.frames_at(chosen, shape)
        for batch_indices, batch in _batches(chosen, decoded, params.batch_size):
            probability = segmenter.person_probability(batch)
            for index, person in zip(batch_indices, probability >= params.threshold, strict=True):
                mask = RLEMask.from_array(person)
                area = int(mask.area())
                person_pixels += area
                if area:
                    frames[index] = {ALL_PERSONS: mask}
                    with_persons += 1
            done += len(batch_indices)
            run.progress(done, len(chosen), "segmenting persons", "segment")
            run.check_cancelled()
    mean_fraction = person_pixels / (len(chosen) * shape[0] * shape[1])
    with run.step("write"):
        path = run.workdir / "masks.jsonl.zst"
        meta = {
            "stage": STAGE,
            "backend": backend,
            "model": model,
            "track_meaning": {str(ALL_PERSONS): "all persons"},
            "threshold": params.threshold,
            "video_width": video.width,
            "video_height": video.height,
            "fps": video.fps,
        }
        if params.frame_indices:
            meta["computed_frames"] = chosen
        write_track_masks(path, frames, shape[0], shape[1], meta)
    counts = {
        "frames": video.num_frames,
        "frames_segmented": len(chosen),
        "frames_with_persons": with_persons,
    }
    extra = {"mean_person_fraction": mean_fraction, "model": model}
    return StageOutputs({"masks": OutputFile(path, MASKS_MEDIA_TYPE)}, counts, extra)


def _batches(
    indices: list[int], frames: Iterator[np.ndarray], size: int
) -> Iterator[tuple[list[int], np.ndarray]]:
    for start in range(0, len(indices), size):
        batch = list(islice(frames, size))
        yield indices[start : start + len(batch)], np.stack(batch)
