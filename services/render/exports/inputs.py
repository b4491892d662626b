"""The fitting stage's outputs as the exports read them, checked for consistency."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.common.errors import InvalidInput
from services.common.formats.cameras import CameraTrack
from services.common.formats.fits import TrackFits, load_fits
from services.common.formats.ground import load_ground

NUM_POSE = 72
NUM_BETAS = 10


@dataclass
class ExportInputs:
    fps: float
    num_frames: int
    gender: str
    tracks: list[TrackFits]  # ascending track id
    cameras: CameraTrack  # one display camera per output frame
    up: np.ndarray  # (3,) unit world up (the ground normal, or the prior up without a ground)
    ground_height_m: float | None  # plane {X : <X, up> = h} through the foot joints, metres


def load_inputs(fits: Path, ground: Path, display_cameras: Path, gender: str) -> ExportInputs:
    """Read the fits, ground and display cameras; InvalidInput says what does not match."""
    meta, tracks = load_fits(Path(fits))
    cameras = CameraTrack.load(Path(display_cameras))
    ground_doc = load_ground(Path(ground))
    name = Path(fits).name
    if meta.get("body_model", "smpl") != "smpl":
        raise InvalidInput(f"{name}: body model {meta['body_model']!r}; exports support SMPL only")
    if meta.get("gender", gender) != gender:
        raise InvalidInput(
            f"{name} was fitted with the {meta['gender']} body model, the export was asked for "
            f"{gender!r}: export with gender={meta['gender']!r} (betas only fit their own model)"
        )
    fps = float(meta.get("fps", float("nan")))
    if not math.isfinite(fps) or fps <= 0:
        raise InvalidInput(f"{name}: fps={meta.get('fps')} must be a positive frame rate")
    num_frames = int(meta.get("num_frames", -1))
    if len(cameras) != num_frames:
        raise InvalidInput(
            f"{Path(display_cameras).name} has {len(cameras)} cameras but {name} has "
            f"{num_frames} frames: give the display_cameras of the same fitting run"
        )
    for track in tracks.values():
        _check_track(track, num_frames, name)
    up = np.asarray(ground_doc.get("world_up", cameras.world_up), np.float64)
    if up.shape != (3,) or not np.isfinite(up).all() or np.linalg.norm(up) < 1e-6:
        raise InvalidInput(f"{Path(ground).name}: world_up {up.tolist()} is not a direction")
    height = ground_doc.get("height_mm")
    found = bool(ground_doc.get("found")) and height is not None and math.isfinite(height)
    return ExportInputs(
        fps=fps,
        num_frames=num_frames,
        gender=gender,
        tracks=[tracks[k] for k in sorted(tracks)],
        cameras=cameras,
        up=up / np.linalg.norm(up),
        ground_height_m=float(height) / 1000 if found else None,
    )


def _check_track(t: TrackFits, num_frames: int, name: str) -> None:
    where = f"{name}, track {t.track_id}"
    shapes = {
        "pose_rotvecs": (t.pose_rotvecs.shape, (num_frames, NUM_POSE)),
        "trans": (t.trans.shape, (num_frames, 3)),
        "valid": (t.valid.shape, (num_frames,)),
        "shape_betas": (t.shape_betas.shape, (len(t.segments), NUM_BETAS)),
        "segments": (t.segments.shape, (len(t.segments), 2)),
    }
    for field, (got, want) in shapes.items():
        if got != want:
            raise InvalidInput(
                f"{where}: {field} has shape {got}, expected {want} ({num_frames} frames in the "
                "fits' meta); the file is damaged or from another pipeline version"
            )
    starts, ends = t.segments[:, 0], t.segments[:, 1]
    if len(t.segments) and (
        starts[0] < 0
        or ends[-1] > num_frames
        or (ends <= starts).any()
        or (starts[1:] < ends[:-1]).any()
    ):
        raise InvalidInput(
            f"{where}: segments {t.segments.tolist()} must be ordered, non-overlapping "
            f"[start, end) ranges within 0..{num_frames}"
        )
    in_segment = np.zeros(num_frames, bool)
    for start, end in t.segments:
        in_segment[start:end] = True
    valid = t.valid.astype(bool)
    if (valid & ~in_segment).any():
        frame = int(np.flatnonzero(valid & ~in_segment)[0])
        raise InvalidInput(f"{where}: frame {frame} is valid but lies in no segment")
    used = [valid[start:end].any() for start, end in t.segments]
    finite = (
        np.isfinite(t.pose_rotvecs[valid]).all()
        and np.isfinite(t.trans[valid]).all()
        and np.isfinite(t.shape_betas[used]).all()
    )
    if not finite:
        raise InvalidInput(f"{where}: NaN or infinite values in valid frames or shapes")
