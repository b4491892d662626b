"""SMPL fits per track (format `nlfpipe.fits/1`, an npz without pickle; see docs/formats.md).

Keys: `format` = "nlfpipe.fits/1"; `meta` = a JSON string (fps of the output, fps_factor,
num_frames of the output, body_model, gender, track_ids, units); per track id N:
`track_N/pose_rotvecs` (T,72) float32 rad, parent-relative SMPL joint rotations;
`track_N/trans` (T,3) float32 m, SMPL translation in the cameras' world frame;
`track_N/shape_betas` (S,10) float32, one shape per segment; `track_N/segments` (S,2) int64
[start, end) output frames; `track_N/scale` (T,) float32, the factor the predictions were scaled
by about the camera centre (NaN where not observed); `track_N/valid` (T,) bool.
Invalid frames are NaN in every float array. T is the output frame count of the whole video.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.common.errors import InvalidInput

FORMAT = "nlfpipe.fits/1"
MEDIA_TYPE = "application/x-nlfpipe-fits+npz"
_ARRAYS = ("pose_rotvecs", "trans", "shape_betas", "segments", "scale", "valid")


@dataclass
class TrackFits:
    track_id: int
    pose_rotvecs: np.ndarray
    trans: np.ndarray
    shape_betas: np.ndarray
    segments: np.ndarray
    scale: np.ndarray
    valid: np.ndarray

    def betas_per_frame(self) -> np.ndarray:
        """(T, 10) shape of every frame (NaN outside the segments)."""
        out = np.full((len(self.valid), self.shape_betas.shape[1]), np.nan, np.float32)
        for (start, end), betas in zip(self.segments, self.shape_betas, strict=True):
            out[start:end] = betas
        out[~self.valid] = np.nan
        return out


def save_fits(path: Path, tracks: list[TrackFits], meta: dict) -> None:
    arrays = {"format": np.array(FORMAT)}
    meta = {**meta, "track_ids": [int(t.track_id) for t in tracks]}
    arrays["meta"] = np.array(json.dumps(meta))
    for t in tracks:
        for name in _ARRAYS:
            arrays[f"track_{t.track_id}/{name}"] = np.asarray(getattr(t, name))
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def load_fits(path: Path) -> tuple[dict, dict[int, TrackFits]]:
    """(meta, tracks by id)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["format"]) != FORMAT:
                raise InvalidInput(f"{Path(path).name}: format {data['format']}, want {FORMAT}")
            meta = json.loads(str(data["meta"]))
            tracks = {
                tid: TrackFits(tid, *(data[f"track_{tid}/{name}"] for name in _ARRAYS))
                for tid in meta["track_ids"]
            }
    except (OSError, KeyError, ValueError) as e:
        raise InvalidInput(f"{Path(path).name} is not an nlfpipe fits file: {e}") from None
    return meta, tracks
