"""Ground plane (format `nlfpipe.ground/2`, JSON; see docs/formats.md).

{"format": "nlfpipe.ground/2", "found": bool, "world_up": [x, y, z] (unit normal pointing up,
world frame of the cameras), "height_mm": h (the floor the people stand on: the plane
{X : <X, world_up> = h}, X in mm; draw and export the ground here), "foot_joint_height_mm": f
(the plane through the body model's foot joints in contact, SMPL joints 10/11, a few cm above
the floor), "sole_offset_mm": f - h (the body model's foot-joint height above the soles),
"body_model": name, "inliers": n, "points": n}. The heights are null when not found.

Version 1 had only "height_mm", which was the foot-joint plane; `load_ground` reads it with
"foot_joint_height_mm" = "height_mm" and "sole_offset_mm" = 0 (no floor was measured).
"""

import json
import math
from pathlib import Path

from services.common.errors import InvalidInput

FORMAT = "nlfpipe.ground/2"
FORMAT_V1 = "nlfpipe.ground/1"
MEDIA_TYPE = "application/json"


def _mm(value: float) -> float | None:
    return None if not math.isfinite(value) else float(value)


def save_ground(
    path: Path,
    up,
    height_mm: float,
    inliers: int,
    points: int,
    found: bool,
    *,
    foot_joint_height_mm: float | None = None,
    sole_offset_mm: float = 0.0,
    body_model: str = "smpl",
) -> None:
    """Writes a ground file; `height_mm` is the floor (NaN when not found), the foot joints'
    plane `foot_joint_height_mm` defaults to `sole_offset_mm` above it."""
    if foot_joint_height_mm is None:
        foot_joint_height_mm = height_mm + sole_offset_mm
    doc = {
        "format": FORMAT,
        "found": bool(found),
        "world_up": [float(v) for v in up],
        "height_mm": _mm(height_mm),
        "foot_joint_height_mm": _mm(foot_joint_height_mm),
        "sole_offset_mm": float(sole_offset_mm),
        "body_model": body_model,
        "inliers": int(inliers),
        "points": int(points),
    }
    Path(path).write_text(json.dumps(doc, indent=1))


def load_ground(path: Path) -> dict:
    """The ground file as a dict with the version 2 keys (a version 1 file is upgraded)."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise InvalidInput(f"{Path(path).name} is not a ground file: {e}") from None
    if doc.get("format") == FORMAT_V1:
        doc = {
            **doc,
            "foot_joint_height_mm": doc.get("height_mm"),
            "sole_offset_mm": 0.0,
            "body_model": "smpl",
        }
    elif doc.get("format") != FORMAT:
        raise InvalidInput(
            f"{Path(path).name}: format {doc.get('format')!r}, want {FORMAT} (or {FORMAT_V1})"
        )
    return doc
