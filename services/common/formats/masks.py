"""Per-frame, per-track person masks as COCO RLE (format `nlfpipe.masks/1`, see docs/formats.md).

File layout: zstd-compressed JSON Lines. Line 1 is the header
`{"format", "height", "width", "num_frames", "track_ids", "meta"}`; then one line per frame,
in frame order: `{"frame": i, "masks": {"<track id>": "<COCO compressed counts>"}}`. A track
absent from a frame has no entry (never an empty mask). Masks are column-major COCO RLE at
the stated height x width, which may be lower than the video's resolution.
"""

import io
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard
from rlemasklib import RLEMask

from services.common.errors import InvalidInput

FORMAT = "nlfpipe.masks/1"
MEDIA_TYPE = "application/x-nlfpipe-masks+jsonl+zstd"


@dataclass
class TrackMasks:
    """All masks of one video, with random access by frame."""

    height: int
    width: int
    track_ids: list[int]
    frames: list[dict[int, RLEMask]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    def frame(self, index: int) -> dict[int, RLEMask]:
        """Masks of one frame by track id (tracks absent from the frame are missing)."""
        return self.frames[index]


def _encode(mask: RLEMask) -> str:
    return mask.to_dict()["counts"].decode("ascii")


def write_track_masks(
    path: Path,
    frames: Sequence[Mapping[int, RLEMask]],
    height: int,
    width: int,
    meta: Mapping[str, Any] | None = None,
) -> None:
    """Writes masks for every frame; each mask must have shape (height, width)."""
    track_ids = sorted({int(t) for f in frames for t in f})
    header = {
        "format": FORMAT,
        "height": int(height),
        "width": int(width),
        "num_frames": len(frames),
        "track_ids": track_ids,
        "meta": dict(meta or {}),
    }
    compressor = zstandard.ZstdCompressor(level=6)
    with open(path, "wb") as raw, compressor.stream_writer(raw) as out:
        out.write((json.dumps(header) + "\n").encode())
        for index, masks in enumerate(frames):
            encoded = {}
            for track_id, mask in sorted(masks.items()):
                if tuple(mask.shape) != (height, width):
                    raise ValueError(
                        f"frame {index}, track {track_id}: mask shape {tuple(mask.shape)} "
                        f"differs from the declared {(height, width)}"
                    )
                encoded[str(int(track_id))] = _encode(mask)
            out.write((json.dumps({"frame": index, "masks": encoded}) + "\n").encode())


def iter_track_masks(path: Path) -> Iterator[dict[str, Any] | dict[int, RLEMask]]:
    """Yields the header dict, then each frame's {track id: mask} in order (streaming)."""
    decompressor = zstandard.ZstdDecompressor()
    with open(path, "rb") as raw, decompressor.stream_reader(raw) as stream:
        lines = io.TextIOWrapper(stream, encoding="utf-8")
        try:
            header = json.loads(next(lines))
        except (StopIteration, json.JSONDecodeError, zstandard.ZstdError) as e:
            raise InvalidInput(f"{path.name} is not an nlfpipe masks file: {e}") from None
        if header.get("format") != FORMAT:
            raise InvalidInput(f"{path.name} has format {header.get('format')!r}, want {FORMAT}")
        yield header
        size = [header["height"], header["width"]]
        for line in lines:
            record = json.loads(line)
            yield {
                int(t): RLEMask.from_dict({"size": size, "counts": c.encode("ascii")})
                for t, c in record["masks"].items()
            }


def read_track_masks(path: Path) -> TrackMasks:
    """Reads a whole masks file (masks are small: a few hundred bytes each)."""
    records = iter_track_masks(path)
    header = next(records)
    frames = list(records)
    if len(frames) != header["num_frames"]:
        raise InvalidInput(
            f"{path.name} is truncated: {len(frames)} of {header['num_frames']} frames present"
        )
    return TrackMasks(
        header["height"], header["width"], header["track_ids"], frames, header.get("meta", {})
    )
