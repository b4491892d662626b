"""Probe information of a normalized video (format `nlfpipe.probe/1`, JSON; see docs/formats.md)."""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

FORMAT = "nlfpipe.probe/1"
MEDIA_TYPE = "application/json"
VIDEO_MEDIA_TYPE = "video/mp4"


@dataclass(frozen=True)
class ProbeInfo:
    """Facts about a video; frame_count is counted, not estimated from the duration."""

    frame_count: int
    fps: float
    width: int
    height: int
    duration_s: float
    rotation_deg: int
    has_audio: bool
    codec: str
    pix_fmt: str

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **asdict(self)}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "ProbeInfo":
        data = json.loads(text)
        if data.pop("format", None) != FORMAT:
            raise ValueError(f"not a {FORMAT} document")
        return cls(**data)

    def save(self, path: Path) -> None:
        path.write_text(self.to_json())

    @classmethod
    def load(cls, path: Path) -> "ProbeInfo":
        return cls.from_json(Path(path).read_text())
