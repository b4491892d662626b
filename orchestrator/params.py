"""The typed parameters of one pipeline run (the reference's run_all options, corrected).

Titles, descriptions and constraints are written for the person filling in the Prefect UI's
run form (the form refuses what the schema can tell is wrong); the docstrings of the models are
their descriptions there, so they speak to users, not to developers.

Everything a run needs is checked here, before any work starts: a bad value raises
`ParameterError` naming the field, and options whose stages are not built yet are refused
with a message that says so (never silently skipped).
"""

import copy
import re
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

YOUTUBE_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")
_TIME = re.compile(r"^(?:(?:(\d+):)?(\d{1,2}):)?(\d+(?:\.\d+)?)$")
_TIME_TEXT = r"\s*(?:(?:\d+:)?\d{1,2}:)?\d+(?:\.\d+)?\s*"
#: What the form accepts as a time, and as a range (both may stay empty).
TIME_PATTERN = rf"^(?:{_TIME_TEXT})?$"
TIME_RANGE_PATTERN = rf"^(?:{_TIME_TEXT}-{_TIME_TEXT})?$"
#: Fields whose None (from older callers and the CLI) means "the default".
_NONE_MEANS_DEFAULT = ("time_range", "seg_init_time", "fov_deg", "fps_factor")

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
    """A point on the tracking start frame, in pixels (x to the right, y down)."""

    model_config = ConfigDict(extra="forbid", title="Point")
    x: float = Field(ge=0, title="x (pixels from the left)")
    y: float = Field(ge=0, title="y (pixels from the top)")


class SubjectSelection(BaseModel):
    """Which of the people found on the tracking start frame to track; leave everything empty
    to track all of them (up to "Most people to track")."""

    model_config = ConfigDict(extra="forbid", title="Subjects")
    in_ui: bool = Field(
        default=False,
        title="Select subjects in the UI",
        description="Pause once the people are found and show them numbered; the run goes on "
        "when you resume it with the numbers of the people to track.",
    )
    indices: list[int] = Field(
        default_factory=list,
        title="Candidate numbers",
        description="Track these candidates, numbered as in the candidates image (0 is the "
        "most confident), when you already know them.",
        json_schema_extra={"items": {"type": "integer", "minimum": 0}, "uniqueItems": True},
    )
    points: list[ImagePoint] = Field(
        default_factory=list,
        title="Points on the start frame",
        description="Track the person under each point of the tracking start frame.",
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
    """How the 3D pose model (NLF) looks at each person; the defaults suit most videos."""

    model_config = ConfigDict(extra="forbid", title="Pose model")
    num_aug: int = Field(
        default=5, ge=1, le=20, title="Test-time augmentations",
        description="Views of each crop averaged per frame: more is steadier and slower.",
    )  # fmt: skip
    antialias_factor: int = Field(
        default=2, ge=1, le=4, title="Crop supersampling", description="Anti-aliasing of crops."
    )
    batch_size: int = Field(default=8, ge=1, le=256, title="Frames per batch")
    internal_batch_size: int = Field(
        default=8, ge=1, le=1024, title="Crops per model call",
        description="Lower it when the GPU runs out of memory.",
    )  # fmt: skip


class VideoParams(BaseModel):
    """One video through the whole pipeline: 3D people (SMPL bodies) in world coordinates,
    rendered as videos with exports."""

    model_config = ConfigDict(extra="forbid", title="Video and options")

    video: str = Field(
        title="Video",
        description="A file path on the worker, an http(s) URL, a YouTube id, or a stored "
        "object (s3://... or file://...).",
        min_length=1,
    )
    time_range: str = Field(
        default="",
        title="Time range",
        description="Process only START-END of the video, each [HH:]MM:SS[.ff] or seconds, "
        "e.g. 00:45-01:25. Empty: the whole video.",
        pattern=TIME_RANGE_PATTERN,
    )
    seg_init_time: str = Field(
        default="",
        title="Tracking start time",
        description="Where in the video the people are found and numbered ([HH:]MM:SS[.ff] or "
        "seconds, in the source video). Empty: the middle of the processed part.",
        pattern=TIME_PATTERN,
    )
    max_persons: int = Field(
        default=-1, ge=-1, title="Most people to track",
        description="The most confident N people; -1: no limit.",
    )  # fmt: skip
    subjects: SubjectSelection = Field(default_factory=SubjectSelection, title="Subjects")
    static_camera: bool = Field(
        default=False,
        title="Static camera",
        description="The camera does not move: skip estimating its motion (faster; results in "
        "the camera's frame). Off: the camera's motion is estimated.",
    )
    slam_backend: SlamBackend = Field(
        default="auto",
        title="Camera tracker",
        description="'colmap' runs on the CPU, 'droid' needs a CUDA GPU, 'auto' picks droid "
        "where it can run, else colmap.",
    )
    scale_source: ScaleSource = Field(
        default="auto",
        title="Metric scale from",
        description="'people' (their body sizes), 'depth' (a depth model on the background), "
        "'auto' (people when the video allows it, else depth), 'none' (not in metres).",
    )
    fov_deg: float = Field(
        default=0.0, ge=0, lt=179, title="Field of view (degrees)",
        description="Of the image's larger side. 0: estimated for a moving camera, else 55.",
    )  # fmt: skip
    fps_factor: Literal[0, 1, 2] = Field(
        default=0,
        title="Frame-rate multiplier",
        description="2 doubles the frame rate of the results, 1 keeps it. 0: automatic (2 for "
        "videos of at most 40 fps, else 1).",
    )
    nlf: NlfOptions = Field(default_factory=NlfOptions, title="Pose model")
    renderer: Renderer = Field(
        default="opengl",
        title="Render videos",
        description="'opengl': videos of the bodies (camera and world view), previews and "
        "exports (glTF, BVH, npz); 'none': stop after fitting the bodies.",
    )
    force: bool = Field(
        default=False, title="Recompute everything",
        description="Ignore results cached from earlier runs.",
    )  # fmt: skip

    @model_validator(mode="before")
    @classmethod
    def _none_means_default(cls, data):
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (k in _NONE_MEANS_DEFAULT and v is None)}
        return data

    @field_validator("fov_deg")
    @classmethod
    def _fov_valid(cls, value: float) -> float:
        if 0 < value <= 1:
            raise ValueError(f"give the field of view in degrees (1 to 179), or 0; got {value}")
        return value

    @field_validator("video")
    @classmethod
    def _video_given(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("give a path, URL, YouTube id or store object")
        return value

    @field_validator("time_range")
    @classmethod
    def _range_valid(cls, value: str) -> str:
        value = value.strip()
        if value:
            parse_time_range(value)
        return value

    @field_validator("seg_init_time")
    @classmethod
    def _init_time_valid(cls, value: str) -> str:
        value = value.strip()
        if value:
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
        if not self.seg_init_time:
            return None
        window = self.time_window
        return parse_time(self.seg_init_time) - (window[0] if window else 0.0)


#: The options shared by every video of a batch: every field of VideoParams but the video.
BatchOptions = create_model(
    "BatchOptions",
    __config__=ConfigDict(extra="forbid", title="Options for every video"),
    __doc__="The same options for every video of the batch (see the single-video form).",
    **{
        name: (field.annotation, copy.copy(field))
        for name, field in VideoParams.model_fields.items()
        if name != "video"
    },
)


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


def _readable(field: str, error: dict) -> str:
    """A validation error in words (a pattern mismatch says what a time looks like)."""
    parse = {"time_range": parse_time_range, "seg_init_time": parse_time}.get(field)
    if error["type"] == "string_pattern_mismatch" and parse is not None:
        try:
            parse(str(error["input"]))
        except ValueError as why:
            return str(why)
        return f"{error['input']!r}: use [HH:]MM:SS[.ff] or seconds (START-END for a range)"
    return error["msg"].removeprefix("Value error, ")


def validate_params(raw: "VideoParams | dict") -> VideoParams:
    """Validates raw parameters and stage availability; raises ParameterError naming the field."""
    try:
        params = raw if isinstance(raw, VideoParams) else VideoParams.model_validate(raw)
        params = VideoParams.model_validate(params.model_dump())
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "parameters"
        raise ParameterError(field, _readable(field, first)) from None
    if params.video_kind is VideoKind.PATH and not Path(params.video).is_file():
        raise ParameterError(
            "video", f"no such file {params.video!r} (and not a URL or YouTube id)"
        )
    check_supported(params)
    return params
