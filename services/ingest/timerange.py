"""`--time-range` parsing and its frame-exact meaning.

A range `START-END` (each `[HH:]MM:SS[.fraction]`) selects the frames whose presentation time
t = index / fps (relative to the first frame) satisfies START <= t < END.
"""

import math
import re
from dataclasses import dataclass

from services.common.errors import InvalidInput

_TIME = r"(?:(\d+):)?(\d+):(\d+(?:\.\d+)?)"
_RANGE = re.compile(rf"^\s*{_TIME}\s*-\s*{_TIME}\s*$")
_FORMAT_HINT = "expected [HH:]MM:SS[.ff]-[HH:]MM:SS[.ff], e.g. 00:45-01:25 or 1:02:03.5-1:02:10"
# Tolerance for times that fall on a frame boundary up to floating-point error.
_EPS = 1e-6


@dataclass(frozen=True)
class TimeRange:
    """A half-open interval [start_s, end_s) of video time in seconds."""

    start_s: float
    end_s: float

    def frame_span(self, fps: float, frame_count: int) -> tuple[int, int]:
        """(first frame index, number of frames) of the range; InvalidInput if out of range."""
        first = math.ceil(self.start_s * fps - _EPS)
        stop = math.ceil(self.end_s * fps - _EPS)
        duration = frame_count / fps
        video = (
            f"the video's end at {format_seconds(duration)} "
            f"({count_of(frame_count, 'frame')} at {fps:.3f} fps)"
        )
        if self.start_s >= duration - _EPS:
            raise InvalidInput(
                f"time_range {self} starts outside the video: its start "
                f"{format_seconds(self.start_s)} is at or past {video}; choose a start before "
                f"{format_seconds(duration)}"
            )
        if stop > frame_count:
            raise InvalidInput(
                f"time_range {self} ends outside the video: its end {format_seconds(self.end_s)} "
                f"is past {video}; choose an end of at most {format_seconds(duration)}"
            )
        if stop <= first:
            raise InvalidInput(
                f"time_range {self} contains no frame at {fps:.3f} fps (a frame every "
                f"{1 / fps:.3f} s); make it longer"
            )
        return first, stop - first

    def __str__(self) -> str:
        return f"{format_seconds(self.start_s)}-{format_seconds(self.end_s)}"


def _seconds(hours: str | None, minutes: str, seconds: str, text: str) -> float:
    if float(seconds) >= 60 or (hours is not None and int(minutes) >= 60):
        raise InvalidInput(f"time_range {text!r}: minutes and seconds must be below 60")
    return int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)


def parse_time_range(text: str) -> TimeRange | None:
    """Parses `[HH:]MM:SS[.ff]-[HH:]MM:SS[.ff]`; None for an empty string (the whole video)."""
    if not text.strip():
        return None
    match = _RANGE.match(text)
    if match is None:
        raise InvalidInput(f"time_range {text!r} is malformed: {_FORMAT_HINT}")
    groups = match.groups()
    start = _seconds(*groups[:3], text)
    end = _seconds(*groups[3:], text)
    if end <= start:
        raise InvalidInput(f"time_range {text!r}: the end must come after the start")
    return TimeRange(start, end)


def count_of(count: int, noun: str) -> str:
    """`1 frame`, `2 frames`."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def format_seconds(seconds: float) -> str:
    """`HH:MM:SS.fff` for a number of seconds."""
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest / 1000:06.3f}"
