"""BVH export: one file per fitted segment, SMPL's 24-joint skeleton with the segment's shape.

Axes and origin are the export frame's (y up, right-handed, floor at y = 0; `axes.py`), units
**centimetres**, rotations in **degrees**, every joint's channels `Zrotation Xrotation Yrotation`
(the local rotation is Rz @ Rx @ Ry, applied to the child's offset). The root (`pelvis`) has
OFFSET 0 and absolute `Xposition Yposition Zposition`; the other OFFSETs are the rest-pose bone
vectors (SMPL's T-pose of the segment's betas, facing +z). Leaf joints end in an End Site half a
parent bone further (cosmetic). Frame i is output frame i of the video (Frame Time 1/fps);
frames where the segment is not shown repeat the nearest shown pose (the world npz says which
frames are valid).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from services.render.exports.motion import SegmentMotion

CM = 100.0
EULER_ORDER = "ZXY"


def _hierarchy(motion: SegmentMotion, names: list[str], parents: np.ndarray) -> tuple[str, list]:
    """The HIERARCHY text and the joints in the order their channels appear."""
    children = {j: [c for c in range(len(parents)) if parents[c] == j] for j in range(len(parents))}
    rotation = " ".join(f"{axis}rotation" for axis in EULER_ORDER)
    lines, order = ["HIERARCHY"], []

    def joint(j: int, depth: int) -> None:
        pad = "  " * depth
        order.append(j)
        if j == 0:
            lines.append(f"ROOT {names[j]}")
            offset = np.zeros(3)
            channels = f"CHANNELS 6 Xposition Yposition Zposition {rotation}"
        else:
            lines.append(f"{pad}JOINT {names[j]}")
            offset = (motion.rest_joints[j] - motion.rest_joints[parents[j]]) * CM
            channels = f"CHANNELS 3 {rotation}"
        lines.extend([f"{pad}{{", f"{pad}  OFFSET {_xyz(offset)}", f"{pad}  {channels}"])
        for c in children[j]:
            joint(c, depth + 1)
        if not children[j]:
            tip = (motion.rest_joints[j] - motion.rest_joints[parents[j]]) * CM / 2
            lines.extend(
                [f"{pad}  End Site", f"{pad}  {{", f"{pad}    OFFSET {_xyz(tip)}", f"{pad}  }}"]
            )
        lines.append(f"{pad}}}")

    joint(0, 0)
    return "\n".join(lines) + "\n", order


def _xyz(v: np.ndarray) -> str:
    return " ".join(f"{x:.6f}" for x in v)


def write_bvh(
    path: Path, motion: SegmentMotion, names: list[str], parents: np.ndarray, fps: float
) -> None:
    """Write the segment's skeleton and its motion over every output frame to `path`."""
    hierarchy, order = _hierarchy(motion, names, parents)
    n = len(motion.visible)
    rotations = motion.rotations[:, order].reshape(-1, 3, 3)
    euler = Rotation.from_matrix(rotations).as_euler(EULER_ORDER, degrees=True).reshape(n, -1)
    values = np.concatenate([motion.root_position * CM, euler], axis=1)
    text = io.StringIO()
    text.write(hierarchy)
    text.write(f"MOTION\nFrames: {n}\nFrame Time: {1 / fps:.9f}\n")
    np.savetxt(text, values, fmt="%.6f")
    Path(path).write_text(text.getvalue())
