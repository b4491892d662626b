"""Import the exports into Blender headless and print what Blender sees, as one JSON object.

Run it by path with a Python that has `bpy` (PyPI `bpy`, e.g. 5.0.1 on Python 3.11, in a venv
of its own: bpy is no dependency of nlfpipe, and this script imports nothing else of it):

    python services/render/exports/blender_check.py scene.glb [--bvh track_1.bvh] \
        [--frames 0,30,60] [--vertices 0,100 | --vertices all]

Blender's axes are z up: a glTF point (x, y, z) is Blender's (x, -z, y), and BVH centimetres
are imported with scale 0.01. Frame numbers are output frames: glTF time 0 is Blender frame 0,
BVH frame 0 is Blender frame 1 (its importer starts no earlier); the scene's fps is set to the
export's first, as a user should do before importing.
"""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path


def _glb_fps(path: Path) -> float:
    with open(path, "rb") as f:
        f.seek(12)
        length, _ = struct.unpack("<II", f.read(8))
        doc = json.loads(f.read(length))
    return float(doc["scenes"][0]["extras"]["fps"])


def _set_fps(scene, fps: float) -> None:
    base = 1000 if abs(fps - round(fps)) > 1e-6 else 1
    scene.render.fps = round(fps * base)
    scene.render.fps_base = base


def main() -> None:
    import bpy

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("glb", type=Path)
    parser.add_argument("--bvh", type=Path, action="append", default=[])
    parser.add_argument("--frames", default="0")
    parser.add_argument("--vertices", default="0", help="indices, or `all` (Blender may reorder)")
    args = parser.parse_args()
    frames = [int(v) for v in args.frames.split(",")]
    vertex_ids = None if args.vertices == "all" else [int(v) for v in args.vertices.split(",")]

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    fps = _glb_fps(args.glb)
    _set_fps(scene, fps)
    bpy.ops.import_scene.gltf(filepath=str(args.glb))
    meshes = sorted((o for o in scene.objects if o.type == "MESH"), key=lambda o: o.name)
    armatures = [o for o in scene.objects if o.type == "ARMATURE"]
    cameras = [o for o in scene.objects if o.type == "CAMERA"]
    result: dict = {
        "fps": scene.render.fps / scene.render.fps_base,
        "meshes": [o.name for o in meshes],
        "armatures": len(armatures),
        "cameras": [
            {
                "name": c.name,
                "sensor_fit": c.data.sensor_fit,
                "lens": c.data.lens,
                "sensor_height": c.data.sensor_height,
            }
            for c in cameras
        ],
        "frames": [],
    }
    for frame in frames:
        scene.frame_set(frame)  # glTF time 0 is Blender frame 0
        depsgraph = bpy.context.evaluated_depsgraph_get()
        entry: dict = {"frame": frame, "meshes": {}}
        for obj in meshes:
            evaluated = obj.evaluated_get(depsgraph)
            mesh = evaluated.to_mesh()
            world = evaluated.matrix_world
            ids = range(len(mesh.vertices)) if vertex_ids is None else vertex_ids
            entry["meshes"][obj.name] = [list(world @ mesh.vertices[i].co) for i in ids]
            evaluated.to_mesh_clear()
        if cameras:
            cam = cameras[0].evaluated_get(depsgraph)
            entry["camera_location"] = list(cam.matrix_world.translation)
            entry["camera_angle_y"] = cam.data.angle_y
        result["frames"].append(entry)

    result["bvh"] = []
    for path in args.bvh:
        before = set(scene.objects)
        bpy.ops.import_anim.bvh(
            filepath=str(path), global_scale=0.01, frame_start=1, use_fps_scale=False
        )
        (arm,) = [o for o in scene.objects if o not in before]
        entry = {"file": path.name, "bones": len(arm.pose.bones), "frames": []}
        action = arm.animation_data.action
        entry["frame_range"] = list(action.frame_range)
        for frame in frames:
            scene.frame_set(frame + 1)  # Blender's BVH import starts at frame 1 at the earliest
            entry["frames"].append(
                {b.name: list(arm.matrix_world @ b.head) for b in arm.pose.bones}
            )
        result["bvh"].append(entry)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
