"""The world export (`world.npz`, format `nlfpipe.world/1`): the fits as plain arrays per track
in the cameras' world frame, metres, with joints, the display cameras and the ground; see
docs/formats.md. Read with `np.load(path)` (no pickle needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from services.render.exports.axes import ExportFrame
from services.render.exports.body import SMPL_NOTICE, ExportBody
from services.render.exports.inputs import ExportInputs

FORMAT = "nlfpipe.world/1"


def write_world_npz(path: Path, inputs: ExportInputs, body: ExportBody, frame: ExportFrame) -> None:
    cams = inputs.cameras
    height = np.nan if inputs.ground_height_m is None else inputs.ground_height_m
    arrays: dict[str, np.ndarray] = {
        "format": np.array(FORMAT),
        "meta": np.array(
            json.dumps(
                {
                    "fps": inputs.fps,
                    "num_frames": inputs.num_frames,
                    "body_model": "smpl",
                    "gender": inputs.gender,
                    "track_ids": [int(t.track_id) for t in inputs.tracks],
                    "units": {"lengths": "m", "angles": "rad"},
                    "license": SMPL_NOTICE,
                }
            )
        ),
        "joint_names": np.array(body.joint_names),
        "joint_parents": body.parents.astype(np.int64),
        "world_to_export": frame.matrix(),
        "cameras/intrinsics": cams.intrinsics,
        "cameras/rotation": cams.rotation,
        "cameras/optical_center": cams.optical_center / 1000,
        "cameras/distortion": cams.distortion,
        "cameras/image_size": np.array(cams.image_size, np.int64),
        "ground/found": np.array(inputs.ground_height_m is not None),
        "ground/up": inputs.up,
        "ground/height": np.array(height),
    }
    for t in inputs.tracks:
        valid = t.valid.astype(bool)
        betas = t.betas_per_frame()
        joints = np.full((len(valid), body.num_joints, 3), np.nan, np.float32)
        if valid.any():
            joints[valid] = body.posed_joints(t.pose_rotvecs[valid], betas[valid], t.trans[valid])
        prefix = f"track_{t.track_id}/"
        arrays |= {
            prefix + "valid": valid,
            prefix + "joints": joints,
            prefix + "pose_rotvecs": t.pose_rotvecs.astype(np.float32),
            prefix + "shape_betas": betas,
            prefix + "trans": t.trans.astype(np.float32),
            prefix + "segments": t.segments.astype(np.int64),
            prefix + "segment_betas": t.shape_betas.astype(np.float32),
        }
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
