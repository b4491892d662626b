"""The typed parameters of one pipeline run (the reference's run_all options, corrected).

Everything a run needs is checked here, before any work starts: a bad value raises
`ParameterError` naming the field, and options whose stages are not built yet are refused
with a message that says so (never silently skipped).
"""

import re
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

YOUTUBE_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")
_TIME = re.compile(r"^(?:(?:(\d+):)?(\d{1,2}):)?(\d+(?:\.\d+)?)$")

#: "opengl": the render stage (headless OpenGL: camera-view and world-view videos, previews,
#: exports); "none": no render stage. Rendering is the default: the videos are what people
#: look at, and on a CPU-only machine it costs far less than the pose stage does.
Renderer = Literal["opengl", "none"]
#: Stages this build can run; the flow refuses a run that needs any other.
AVAILABLE_STAGES = frozenset(
    {"ingest", "tracking", "semseg", "slam", "pose", "fitting", "interpolation", "render"}
)
#: Camera trackers of the slam stage (docs/running.md).
SlamBackend = Literal["auto", "colmap", "droid"]
#: Where the metric scale of a moving camera comes from (docs/running.md).
ScaleSource = Literal["auto", "people", "depth", "none"]


class ParameterError(ValueError):
    """A run parameter is invalid or needs a stage that is not available; names the field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class VideoKind(StrEnum):
    """Where the input video comes from."""

    PATH = "path"
    URL = "url"
    YOUTUBE = "youtube"
    STORE = "store"


def parse_time(text: str) -> float:
    """Seconds from `[HH:]MM:SS[.ff]` or plain seconds; ValueError when malformed."""
    match = _TIME.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a time; use [HH:]MM:SS[.ff] or seconds, e.g. 01:05.5")
    hours, minutes, seconds = match.groups()
    if minutes is not None and float(seconds) >= 60:
        raise ValueError(f"{text!r}: seconds must be below 60 when minutes are given")
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds)


def classify_video(video: str) -> VideoKind:
    """Tells a store object, URL, existing path or YouTube id apart (a path wins over an id)."""
    if video.startswith(("s3://", "file://")):
        return VideoKind.STORE
    if video.startswith(("http://", "https://")):
        return VideoKind.URL
    if YOUTUBE_ID.match(video) and not Path(video).exists():
        return VideoKind.YOUTUBE
    return VideoKind.PATH


class ImagePoint(BaseModel):
    """A pixel position in the segmentation init frame (x right, y down)."""

    model_config = ConfigDict(extra="forbid")
    x: float = Field(ge=0, description="Horizontal pixel coordinate.")
    y: float = Field(ge=0, description="Vertical pixel coordinate.")


class SubjectSelection(BaseModel):
    """Which of the people detected on the init frame to track. Empty: all (up to max_persons)."""

    model_config = ConfigDict(extra="forbid")
    indices: list[int] = Field(
        default_factory=list,
        description="Candidate indices (score order, as in the candidates preview) to keep.",
    )
    points: list[ImagePoint] = Field(
        default_factory=list,
        description="Pixel positions on the init frame; the person under each point is kept.",
    )
    in_ui: bool = Field(
        default=False,
        description="Pause after the candidates preview and wait for indices typed in the UI.",
    )

    @field_validator("indices")
    @classmethod
    def _indices_valid(cls, value: list[int]) -> list[int]:
        if any(i < 0 for i in value):
            raise ValueError("candidate indices must be >= 0")
        if len(set(value)) != len(value):
            raise ValueError(f"candidate indices must be distinct, got {value}")
        return value

    @model_validator(mode="after")
    def _one_way(self) -> "SubjectSelection":
        ways = [name for name in ("indices", "points") if getattr(self, name)] + (
            ["in_ui"] if self.in_ui else []
        )
        if len(ways) > 1:
            raise ValueError(f"choose subjects one way only, got {' and '.join(ways)}")
        return self

    @property
    def is_all(self) -> bool:
        return not (self.indices or self.points or self.in_ui)


class NlfOptions(BaseModel):
    """Pose (NLF) options; defaults are the reference pipeline's."""

    model_config = ConfigDict(extra="forbid")
    num_aug: int = Field(default=5, ge=1, le=20, description="Test-time augmentations per crop.")
    antialias_factor: int = Field(default=2, ge=1, le=4, description="Supersampling of crops.")
    batch_size: int = Field(default=8, ge=1, le=256, description="Frames per batch.")
    internal_batch_size: int = Field(
        default=8, ge=1, le=1024, description="Crops per forward pass inside the model."
    )


class VideoParams(BaseModel):
    """One video's run: the options of the reference's run_all, typed and checked."""

    model_config = ConfigDict(extra="forbid")

    video: str = Field(
        description="Local path, http(s) URL, YouTube id, or store object (s3://... / file://...)."
    )
    time_range: str | None = Field(
        default=None,
        description="Cut to START-END, each [HH:]MM:SS[.ff] or seconds, e.g. 00:45-01:25.",
    )
    seg_init_time: str | None = Field(
        default=None,
        description="Time of the segmentation init frame in the source video; default: middle.",
    )
    max_persons: int = Field(default=-1, description="Most people to track; -1 for no limit.")
    subjects: SubjectSelection = Field(default_factory=SubjectSelection)
    static_camera: bool = Field(
        default=False,
        description="The camera does not move: skip semantic segmentation and SLAM (results "
        "in the camera's frame). Default: estimate the camera's motion.",
    )
    slam_backend: SlamBackend = Field(
        default="auto",
        description="Camera tracker: 'colmap' (CPU structure from motion), 'droid' (masked "
        "DROID-SLAM, needs a CUDA GPU), 'auto' (droid where it can run, else colmap).",
    )
    scale_source: ScaleSource = Field(
        default="auto",
        description="Metric scale of the camera path: 'people' (from the people's metric "
        "poses), 'depth' (metric depth model on the background), 'auto' (people when the "
        "video constrains it, else the depth model), 'none' (not metric).",
    )
    fov_deg: float | None = Field(
        default=None, gt=1, lt=179, description="Field of view of the larger side; default 55."
    )
    fps_factor: Literal[1, 2] | None = Field(
        default=None, description="Output frame-rate multiplier; default 2 if fps <= 40, else 1."
    )
    nlf: NlfOptions = Field(default_factory=NlfOptions)
    renderer: Renderer = Field(
        default="opengl",
        description="'opengl': videos of the meshes (camera and world view), previews and "
        "exports (glTF, BVH, npz); 'none': stop after fitting.",
    )
    force: bool = Field(default=False, description="Recompute every stage, ignoring the cache.")

    @field_validator("video")
    @classmethod
    def _video_given(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("give a path, URL, YouTube id or store object")
        return value

    @field_validator("time_range")
    @classmethod
    def _range_valid(cls, value: str | None) -> str | None:
        if value is not None:
            parse_time_range(value)
        return value

    @field_validator("seg_init_time")
    @classmethod
    def _init_time_valid(cls, value: str | None) -> str | None:
        if value is not None:
            parse_time(value)
        return value

    @field_validator("max_persons")
    @classmethod
    def _max_persons_valid(cls, value: int) -> int:
        if value == 0 or value < -1:
            raise ValueError(f"must be -1 (no limit) or at least 1, got {value}")
        return value

    @model_validator(mode="after")
    def _init_time_inside_range(self) -> "VideoParams":
        if self.time_range and self.seg_init_time:
            start, end = parse_time_range(self.time_range)
            init = parse_time(self.seg_init_time)
            if not start <= init < end:
                raise ValueError(
                    f"seg_init_time {self.seg_init_time} lies outside time_range {self.time_range}"
                )
        if self.max_persons > 0 and len(self.subjects.indices) > self.max_persons:
            raise ValueError(
                f"subjects.indices selects {len(self.subjects.indices)} people "
                f"but max_persons is {self.max_persons}"
            )
        return self

    @property
    def video_kind(self) -> VideoKind:
        return classify_video(self.video)

    @property
    def time_window(self) -> tuple[float, float] | None:
        return parse_time_range(self.time_range) if self.time_range else None

    def init_time_in_clip(self) -> float | None:
        """Init time relative to the cut's start (seconds), or None for the middle frame."""
        if self.seg_init_time is None:
            return None
        window = self.time_window
        return parse_time(self.seg_init_time) - (window[0] if window else 0.0)


def parse_time_range(text: str) -> tuple[float, float]:
    """(start, end) seconds from `START-END`; ValueError when malformed or empty."""
    parts = text.split("-")
    if len(parts) != 2:
        raise ValueError(f"{text!r} is not a range; use START-END, e.g. 00:45-01:25")
    start, end = (parse_time(p) for p in parts)
    if end <= start:
        raise ValueError(f"{text!r}: the end must come after the start")
    return start, end


def required_stages(params: VideoParams) -> list[str]:
    """Stages a run with these parameters needs, in pipeline order."""
    stages = ["ingest", "tracking"]
    if not params.static_camera:
        stages += ["semseg", "slam"]
    stages += ["pose", "fitting"]
    if params.fps_factor != 1:  # 2, or automatic (2 when the video has at most 40 fps)
        stages.append("interpolation")
    if params.renderer != "none":
        stages.append("render")
    return stages


_MISSING_STAGE_FIELD = {
    "semseg": ("static_camera", "a moving camera needs semantic segmentation and SLAM"),
    "slam": ("static_camera", "a moving camera needs semantic segmentation and SLAM"),
    "interpolation": ("fps_factor", "doubling the frame rate needs the interpolation stage"),
    "render": ("renderer", "rendering needs the render stage"),
}


def check_supported(params: VideoParams, available: frozenset[str] = AVAILABLE_STAGES) -> None:
    """Refuses a run that needs a stage this build does not have, naming the field to change."""
    for stage in required_stages(params):
        if stage not in available:
            field, why = _MISSING_STAGE_FIELD.get(stage, ("video", f"the {stage} stage"))
            raise ParameterError(
                field,
                f"{why}, which is not available in this build yet; "
                + {
                    "static_camera": "use static_camera=true (--static-camera)",
                    "renderer": "use renderer='none'",
                    "fps_factor": "use fps_factor=1",
                }.get(field, "remove that option"),
            )


def validate_params(raw: "VideoParams | dict") -> VideoParams:
    """Validates raw parameters and stage availability; raises ParameterError naming the field."""
    try:
        params = raw if isinstance(raw, VideoParams) else VideoParams.model_validate(raw)
        params = VideoParams.model_validate(params.model_dump())
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "parameters"
        raise ParameterError(field, first["msg"].removeprefix("Value error, ")) from None
    if params.video_kind is VideoKind.PATH and not Path(params.video).is_file():
        raise ParameterError(
            "video", f"no such file {params.video!r} (and not a URL or YouTube id)"
        )
    check_supported(params)
    return params
