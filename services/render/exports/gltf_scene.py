"""The .glb export: every fitted segment as a skinned SMPL mesh, the ground, and the recording
camera, animated together at the output fps in the export frame (`axes.py`).

- Each segment of a track is one skinned mesh (its own shape) with its own 24-joint skeleton,
  named `track_<id>` (`track_<id>_seg<k>` when the track has several segments). Bind pose:
  SMPL's rest pose of that shape (y up, facing +z); inverse bind matrices translate by minus
  the rest joint positions. Linear blend skinning with the 4 strongest SMPL weights per vertex;
  SMPL's pose-corrective blend shapes are not applied.
- Frames where a segment is not shown (invalid frames, or outside the segment) scale its root
  joint to 0 (STEP interpolation): the mesh collapses to a point at the last shown position.
- The camera node follows the display cameras (glTF cameras look along -z, y up); its yfov
  follows the per-frame focal length through KHR_animation_pointer when the focal length changes
  (viewers without the extension keep the first frame's yfov). Principal point offsets and lens
  distortion cannot be expressed in glTF.
- The ground is a 1 m checkerboard on y = 0 around everything that moves.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from services.common.colors import track_color
from services.render.exports.axes import ExportFrame
from services.render.exports.body import SMPL_NOTICE, ExportBody
from services.render.exports.glb import ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER, GlbBuilder
from services.render.exports.inputs import ExportInputs
from services.render.exports.motion import SegmentMotion, quaternions

CAMERA_TO_GLTF = np.diag([1.0, -1.0, -1.0])  # x right, y down, z forward -> glTF camera axes
GROUND_MARGIN_M = 2.0
MAX_GROUND_TILES = 100  # per side; tiles grow beyond 1 m to stay under it
QUAD_CORNERS = np.array([(0, 0), (0, 1), (1, 1), (1, 0)])  # (x, z), counter-clockwise from +y
GROUND_COLORS = ((0.55, 0.55, 0.55), (0.35, 0.35, 0.35))  # linear RGB


def srgb_to_linear(rgb: tuple[int, int, int]) -> list[float]:
    """sRGB 0-255 -> linear 0-1 (glTF's baseColorFactor is linear)."""
    c = np.asarray(rgb, np.float64) / 255
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).round(6).tolist()


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals; +y for vertices in no face."""
    tri = vertices[faces]
    face_normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals = np.zeros_like(vertices, dtype=np.float64)
    for corner in range(3):
        np.add.at(normals, faces[:, corner], face_normals)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return np.where(length > 1e-12, normals / np.maximum(length, 1e-12), [0.0, 1.0, 0.0])


class _SceneWriter:
    def __init__(self, inputs: ExportInputs, body: ExportBody, frame: ExportFrame):
        self.inputs, self.body, self.frame = inputs, body, frame
        self.b = GlbBuilder(
            {"version": "2.0", "generator": "nlfpipe exports", "copyright": SMPL_NOTICE}
        )
        self.channels: list[dict] = []
        self.samplers: list[dict] = []
        times = np.arange(inputs.num_frames, dtype=np.float64) / inputs.fps
        self.animated = inputs.num_frames >= 2
        self.times = self.b.accessor(times.astype(np.float32), bounds=True) if self.animated else -1
        self.materials: dict[int, int] = {}
        joints, weights, self.dropped_weight = body.influences()
        faces = body.faces.astype(np.uint16 if body.faces.max() < 65535 else np.uint32)
        self.skin_attributes = {
            "JOINTS_0": self.b.accessor(joints, target=ARRAY_BUFFER),
            "WEIGHTS_0": self.b.accessor(weights, target=ARRAY_BUFFER),
        }
        self.indices = self.b.accessor(faces.reshape(-1), target=ELEMENT_ARRAY_BUFFER)

    def animate(self, target: dict, values: np.ndarray, interpolation: str = "LINEAR") -> None:
        if not self.animated:
            return
        output = self.b.accessor(np.asarray(values, np.float32))
        self.samplers.append(
            {"input": self.times, "output": output, "interpolation": interpolation}
        )
        self.channels.append({"sampler": len(self.samplers) - 1, "target": target})

    def material(self, track_id: int) -> int:
        if track_id not in self.materials:
            self.materials[track_id] = self.b.add(
                "materials",
                {
                    "name": f"track_{track_id}",
                    "pbrMetallicRoughness": {
                        "baseColorFactor": [*srgb_to_linear(track_color(track_id)), 1.0],
                        "metallicFactor": 0.0,
                        "roughnessFactor": 0.6,
                    },
                },
            )
        return self.materials[track_id]

    def segment(self, m: SegmentMotion) -> list[int]:
        """The segment's skeleton (node `<name>` over the joints `<name>_<joint>`) and skinned
        mesh (node `<name>_mesh`, a scene root as glTF wants); their node indices."""
        b = self.b
        parents = self.body.parents
        first = int(np.argmax(m.visible))
        joint_nodes = []
        for j, name in enumerate(self.body.joint_names):
            node: dict = {"name": f"{m.name}_{name}"}
            if j == 0:
                node["translation"] = m.root_position[first].tolist()
            else:
                node["translation"] = (m.rest_joints[j] - m.rest_joints[parents[j]]).tolist()
            joint_nodes.append(b.add("nodes", node))
        for j in range(1, len(parents)):
            b.doc["nodes"][joint_nodes[parents[j]]].setdefault("children", []).append(
                joint_nodes[j]
            )
        root = joint_nodes[0]
        self.animate({"node": root, "path": "translation"}, m.root_position)
        rotations = quaternions(m.rotations)
        for j, node in enumerate(joint_nodes):
            self.animate({"node": node, "path": "rotation"}, rotations[:, j])
        if not m.visible.all():
            scale = np.repeat(m.visible.astype(np.float32)[:, None], 3, axis=1)
            self.animate({"node": root, "path": "scale"}, scale, "STEP")

        inverse_bind = np.repeat(np.eye(4)[None], len(parents), axis=0)
        inverse_bind[:, :3, 3] = -m.rest_joints
        # The joints' own parent node: Blender makes it the track's armature object (joints
        # at the scene root would all share one armature holding every other root node).
        skeleton = b.add("nodes", {"name": m.name, "children": [root]})
        skin = b.add(
            "skins",
            {
                "name": m.name,
                "inverseBindMatrices": b.accessor(inverse_bind.astype(np.float32), matrix=True),
                "joints": joint_nodes,
                "skeleton": skeleton,
            },
        )
        vertices = m.rest_vertices.astype(np.float32)
        normals = vertex_normals(m.rest_vertices.astype(np.float64), self.body.faces)
        mesh = b.add(
            "meshes",
            {
                "name": m.name,
                "primitives": [
                    {
                        "attributes": {
                            "POSITION": b.accessor(vertices, target=ARRAY_BUFFER, bounds=True),
                            "NORMAL": b.accessor(normals.astype(np.float32), target=ARRAY_BUFFER),
                            **self.skin_attributes,
                        },
                        "indices": self.indices,
                        "material": self.material(m.track_id),
                    }
                ],
            },
        )
        mesh_node = b.add(
            "nodes",
            {
                "name": f"{m.name}_mesh",
                "mesh": mesh,
                "skin": skin,
                "extras": {
                    "track_id": m.track_id,
                    "segment": m.segment,
                    "frames": list(m.frames),
                    "shape_betas": m.betas.round(6).tolist(),
                    "hidden_frames": int((~m.visible).sum()),
                },
            },
        )
        return [skeleton, mesh_node]

    def camera(self) -> int:
        cams = self.inputs.cameras
        width, height = cams.image_size
        fx, fy = cams.intrinsics[:, 0, 0], cams.intrinsics[:, 1, 1]
        yfov = 2 * np.arctan(height / (2 * fy))
        camera = self.b.add(
            "cameras",
            {
                "name": "recording_camera",
                "type": "perspective",
                "perspective": {
                    "yfov": float(yfov[0]),
                    "aspectRatio": float(width * fy[0] / (height * fx[0])),
                    "znear": 0.05,
                },
            },
        )
        rotation = self.frame.rotation @ cams.rotation.transpose(0, 2, 1) @ CAMERA_TO_GLTF
        position = self.frame.points(cams.optical_center / 1000)
        quats = quaternions(rotation)
        node = self.b.add(
            "nodes",
            {
                "name": "recording_camera",
                "camera": camera,
                "translation": position[0].tolist(),
                "rotation": quats[0].tolist(),
                "extras": {"image_size": [int(width), int(height)]},
            },
        )
        self.animate({"node": node, "path": "translation"}, position)
        self.animate({"node": node, "path": "rotation"}, quats)
        if np.ptp(yfov) > 1e-9 and self.animated:
            pointer = f"/cameras/{camera}/perspective/yfov"
            self.animate(
                {"path": "pointer", "extensions": {"KHR_animation_pointer": {"pointer": pointer}}},
                yfov,
            )
            self.b.doc.setdefault("extensionsUsed", []).append("KHR_animation_pointer")
        return node

    def ground(self, points_xz: np.ndarray) -> int:
        lo = np.floor(points_xz.min(0) - GROUND_MARGIN_M)
        hi = np.ceil(points_xz.max(0) + GROUND_MARGIN_M)
        tile = max(1.0, math.ceil(float((hi - lo).max()) / MAX_GROUND_TILES))
        nx, nz = (np.ceil((hi - lo) / tile)).astype(int)
        ix, iz = np.meshgrid(np.arange(nx), np.arange(nz), indexing="ij")
        primitives = []
        for parity, color in enumerate(GROUND_COLORS):
            pick = (ix + iz) % 2 == parity
            x0 = lo[0] + ix[pick] * tile
            z0 = lo[1] + iz[pick] * tile
            x = x0[:, None] + QUAD_CORNERS[:, 0] * tile
            z = z0[:, None] + QUAD_CORNERS[:, 1] * tile
            corners = np.stack([x, np.zeros_like(x), z], -1).reshape(-1, 3).astype(np.float32)
            quads = np.arange(len(x0))[:, None] * 4
            faces = (quads + np.array([0, 1, 2, 0, 2, 3])).reshape(-1).astype(np.uint32)
            normals = np.tile(np.float32([0, 1, 0]), (len(corners), 1))
            material = self.b.add(
                "materials",
                {
                    "name": f"ground_{parity}",
                    "pbrMetallicRoughness": {
                        "baseColorFactor": [*color, 1.0],
                        "metallicFactor": 0.0,
                        "roughnessFactor": 0.9,
                    },
                    "doubleSided": True,
                },
            )
            primitives.append(
                {
                    "attributes": {
                        "POSITION": self.b.accessor(corners, target=ARRAY_BUFFER, bounds=True),
                        "NORMAL": self.b.accessor(normals, target=ARRAY_BUFFER),
                    },
                    "indices": self.b.accessor(faces, target=ELEMENT_ARRAY_BUFFER),
                    "material": material,
                }
            )
        mesh = self.b.add("meshes", {"name": "ground", "primitives": primitives})
        return self.b.add("nodes", {"name": "ground", "mesh": mesh, "extras": {"tile_m": tile}})


def write_glb(
    path: Path,
    inputs: ExportInputs,
    body: ExportBody,
    frame: ExportFrame,
    motions: list[SegmentMotion],
) -> None:
    """Write the scene of `motions` (every track's segments) to `path`."""
    w = _SceneWriter(inputs, body, frame)
    roots = []
    for m in motions:
        roots += w.segment(m)
    roots.append(w.camera())
    if inputs.ground_height_m is not None:
        moving = [m.root_position[m.visible] for m in motions]
        moving.append(frame.points(inputs.cameras.optical_center / 1000))
        roots.append(w.ground(np.concatenate(moving)[:, [0, 2]]))
    w.b.add(
        "scenes",
        {
            "name": "nlfpipe",
            "nodes": roots,
            "extras": {
                "fps": inputs.fps,
                "num_frames": inputs.num_frames,
                "units": "m",
                "axes": "y up, right-handed; floor at y = 0",
                "world_to_scene": frame.matrix().round(9).tolist(),
                "skin_weight_dropped_max": round(w.dropped_weight, 6),
                "license": SMPL_NOTICE,
            },
        },
    )
    w.b.doc["scene"] = 0
    if w.channels:
        w.b.add("animations", {"name": "recording", "samplers": w.samplers, "channels": w.channels})
    w.b.write(path)
