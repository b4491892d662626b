"""The interpolation stage's work: the video at twice its frame rate, streamed.

Frames are decoded one by one, their middle frames made in batches of consecutive pairs and
everything written to the encoder as it comes, in the shared doubled layout
(`services.common.frame_doubling`), so memory stays flat in the video's length.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from services.common import frame_doubling
from services.common.errors import InvalidInput, PreconditionFailed
from services.common.formats.video import VIDEO_MEDIA_TYPE
from services.common.identity import ModelIdentity
from services.common.stagerun import OutputFile, StageOutputs, StageRun
from services.interpolation.video import (
    SourceFrame,
    VideoEncoder,
    count_frames,
    decode_frames,
    inspect_video,
)

STAGE = "interpolation"
VERSION = "1"
DEFAULT_CRF = 15
# RIFE flow scales (0: automatic); 1 estimates the flow at full resolution.
SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)


class Interpolator(Protocol):
    """A backend: middle frames of batches of frame pairs."""

    name: str  # with its version: "rife-4.18", "flow-dis-fast-1"
    batch_size: int  # pairs per call of `middles`
    identity: ModelIdentity  # its files, device and precision (part of the cache key)

    def middles(
        self, firsts: Sequence[SourceFrame], seconds: Sequence[SourceFrame], flow_scale: float
    ) -> list[np.ndarray]:
        """The 4:2:0 planes (uint8 [H * 3 / 2, W]) of the frames halfway between each pair."""


@dataclass(frozen=True)
class InterpolationParams:
    """The request's parameters, validated; zero values take the defaults."""

    fps_factor: int = frame_doubling.FACTOR
    flow_scale: float = 0.0  # 0: automatic (1 below 1600 pixels of height, else 0.5)
    crf: int = DEFAULT_CRF

    def __post_init__(self):
        if self.fps_factor != frame_doubling.FACTOR:
            raise InvalidInput(
                f"fps_factor={self.fps_factor} is not supported; only {frame_doubling.FACTOR} "
                "(twice the frame rate) is"
            )
        if self.flow_scale and self.flow_scale not in SCALES:
            raise InvalidInput(
                f"flow_scale={self.flow_scale:g} must be 0 (automatic) or one of "
                + ", ".join(f"{s:g}" for s in SCALES)
            )
        if not 0 <= self.crf <= 51:
            raise InvalidInput(f"crf={self.crf} must be between 0 and 51")

    def to_dict(self) -> dict:
        return {"fps_factor": self.fps_factor, "flow_scale": self.flow_scale, "crf": self.crf}


def compute_interpolation(
    run: StageRun, params: InterpolationParams, backend: Interpolator
) -> StageOutputs:
    """The stage's compute function: run.inputs["video"] -> a video at twice its rate."""
    source = run.inputs["video"]
    facts = inspect_video(source)
    total = frame_doubling.doubled_count(facts.frame_count)
    rate = facts.frame_rate * frame_doubling.FACTOR
    output = run.workdir / "video.mp4"

    def middles(firsts: Sequence[SourceFrame], seconds: Sequence[SourceFrame]):
        run.check_cancelled()
        with run.step("interpolate"):
            made = backend.middles(firsts, seconds, params.flow_scale)
        return [SourceFrame(yuv, facts) for yuv in made]

    with VideoEncoder(output, source, facts, rate, params.crf) as encoder:
        doubled = frame_doubling.stream_doubled(
            decode_frames(source, facts), middles, backend.batch_size
        )
        for frame in doubled:
            encoder.write(frame.yuv)
            if encoder.frames_written % 16 == 0:
                run.progress(encoder.frames_written, total, "output frames", "interpolate")
    written = count_frames(output)
    if encoder.frames_written != total or written != total:
        raise PreconditionFailed(
            f"the video decoded to {encoder.frames_written // 2} frames but its index lists "
            f"{facts.frame_count} (output {written} of {total} frames); re-run ingest"
        )
    run.progress(total, total, "output frames", "interpolate")
    return StageOutputs(
        files={"video": OutputFile(output, VIDEO_MEDIA_TYPE)},
        counts={"source_frames": facts.frame_count, "frames": total},
        extra={
            "fps": float(rate),
            "frame_rate": f"{rate.numerator}/{rate.denominator}",
            "backend": backend.name,
            "layout": "2i: source frame i; 2i+1: between i and i+1; last: source frame N-1",
        },
    )
