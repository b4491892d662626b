"""Exports of the fits for other tools: a glTF binary scene (Blender, three.js, Unity, Maya), one
BVH per fitted segment, and the world npz for scripts. Formats and axes: docs/formats.md
(Exports); importing them: docs/running.md."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from services.common.errors import InvalidInput
from services.render.exports.axes import ExportFrame
from services.render.exports.body import ExportBody
from services.render.exports.bvh import write_bvh
from services.render.exports.gltf_scene import write_glb
from services.render.exports.inputs import load_inputs
from services.render.exports.motion import segment_motions
from services.render.exports.world_npz import write_world_npz

FORMATS = ("glb", "bvh", "npz")
GLB_NAME = "scene.glb"
NPZ_NAME = "world.npz"


def write_exports(
    *,
    fits: Path,
    ground: Path,
    display_cameras: Path,
    body_model_dir: Path,
    gender: str,
    out_dir: Path,
    formats: Sequence[str] = FORMATS,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Path]:
    """Write the requested exports of a fitting run into `out_dir`; output name -> path
    (`scene.glb`, `track_<id>.bvh` or `track_<id>_seg<k>.bvh` per segment, `world.npz`).

    `body_model_dir` holds the SMPL files (the `smpl/` folder the fitting stage used). Raises
    InvalidInput for inconsistent inputs, ModelNotReady when the SMPL files are missing."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise InvalidInput(f"export formats {list(formats)}: choose from {', '.join(FORMATS)}")
    inputs = load_inputs(Path(fits), Path(ground), Path(display_cameras), gender)
    body = ExportBody(Path(body_model_dir), gender)
    frame = ExportFrame.create(inputs.up, inputs.ground_height_m, body.sole_depth())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = progress or (lambda done, total, message: None)
    total = len(inputs.tracks) + ("glb" in formats) + ("npz" in formats)
    done = 0
    motions = []
    for track in inputs.tracks:
        motions += segment_motions(track, body, frame)
        done += 1
        report(done, total, f"posed track {track.track_id}")
    written: dict[str, Path] = {}
    if "bvh" in formats:
        for m in motions:
            path = out_dir / f"{m.name}.bvh"
            write_bvh(path, m, body.joint_names, body.parents, inputs.fps)
            written[path.name] = path
    if "glb" in formats:
        written[GLB_NAME] = out_dir / GLB_NAME
        write_glb(written[GLB_NAME], inputs, body, frame, motions)
        done += 1
        report(done, total, f"wrote {GLB_NAME}")
    if "npz" in formats:
        written[NPZ_NAME] = out_dir / NPZ_NAME
        write_world_npz(written[NPZ_NAME], inputs, body, frame)
        done += 1
        report(done, total, f"wrote {NPZ_NAME}")
    return written
