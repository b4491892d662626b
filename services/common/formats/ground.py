"""Ground plane (format `nlfpipe.ground/1`, JSON; see docs/formats.md).

{"format": "nlfpipe.ground/1", "found": bool, "world_up": [x, y, z] (unit normal pointing up,
world frame of the cameras), "height_mm": h (the plane is {X : <X, world_up> = h}, X in mm; it
passes through the foot joints (SMPL joints 10, 11) in contact; null when not found),
"inliers": n, "points": n}
"""

import json
import math
from pathlib import Path

from services.common.errors import InvalidInput

FORMAT = "nlfpipe.ground/1"
MEDIA_TYPE = "application/json"


def save_ground(path: Path, up, height_mm: float, inliers: int, points: int, found: bool) -> None:
    doc = {
        "format": FORMAT,
        "found": bool(found),
        "world_up": [float(v) for v in up],
        "height_mm": None if not math.isfinite(height_mm) else float(height_mm),
        "inliers": int(inliers),
        "points": int(points),
    }
    Path(path).write_text(json.dumps(doc, indent=1))


def load_ground(path: Path) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise InvalidInput(f"{Path(path).name} is not a ground file: {e}") from None
    if doc.get("format") != FORMAT:
        raise InvalidInput(f"{Path(path).name}: format {doc.get('format')!r}, want {FORMAT}")
    return doc
