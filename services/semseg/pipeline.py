"""The semseg stage's computation: stream frames in batches, threshold the person probability,
write one RLE mask per frame (track id 0 = all persons)."""

from collections.abc import Iterator
from dataclasses import asdict, dataclass
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

    def __post_init__(self):
        if not 0 < self.threshold <= 1:
            raise InvalidInput(f"threshold={self.threshold} must be in (0, 1]")
        if not 1 <= self.batch_size <= 256:
            raise InvalidInput(f"batch_size={self.batch_size} is out of range (1 to 256)")
        if not 16 <= self.short_side <= 4096:
            raise InvalidInput(f"short_side={self.short_side} is out of range (16 to 4096)")

    def to_dict(self) -> dict:
        return asdict(self)


def compute_semseg(
    run: StageRun, params: SemsegParams, segmenter: PersonSegmenter, backend: str
) -> StageOutputs:
    """Segments `run.inputs["video"]`; outputs `masks`."""
    video = Video(run.inputs["video"])
    shape = working_shape(video.height, video.width, params.short_side)
    frames: list[dict[int, RLEMask]] = []
    person_pixels = 0
    with run.step("segment"):
        for batch in _batches(video.frames(shape), params.batch_size):
            probability = segmenter.person_probability(batch)
            for person in probability >= params.threshold:
                mask = RLEMask.from_array(person)
                area = int(mask.area())
                person_pixels += area
                frames.append({ALL_PERSONS: mask} if area else {})
            run.progress(len(frames), video.num_frames, "segmenting persons", "segment")
    with_persons = sum(1 for f in frames if f)
    mean_fraction = person_pixels / (len(frames) * shape[0] * shape[1])
    with run.step("write"):
        path = run.workdir / "masks.jsonl.zst"
        meta = {
            "stage": STAGE,
            "backend": backend,
            "track_meaning": {str(ALL_PERSONS): "all persons"},
            "threshold": params.threshold,
            "video_width": video.width,
            "video_height": video.height,
            "fps": video.fps,
        }
        write_track_masks(path, frames, shape[0], shape[1], meta)
    counts = {"frames": len(frames), "frames_with_persons": with_persons}
    extra = {"mean_person_fraction": mean_fraction}
    return StageOutputs({"masks": OutputFile(path, MASKS_MEDIA_TYPE)}, counts, extra)


def _batches(frames: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    while batch := list(islice(frames, size)):
        yield np.stack(batch)
