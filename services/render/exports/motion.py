"""Skeletal motion of each fitted segment in the export frame, shared by the glTF and BVH files.

A skeleton is SMPL's 24 joints with the segment's own shape: in the rest pose every joint has
the identity rotation and sits at its rest position (SMPL's canonical frame, y up, facing +z).
Per frame, every joint but the root keeps SMPL's parent-relative rotation; the root's rotation is
R times SMPL's global orientation and its position R (J_0 + trans) + t (R, t: `ExportFrame`), so
the skinned mesh and the joints land on R X_world + t.

Frames where the segment is not shown (invalid, or outside the segment) hold the nearest shown
frame's pose, so every value is finite; `visible` says which frames are real.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from services.common.formats.fits import TrackFits
from services.render.exports.axes import ExportFrame
from services.render.exports.body import ExportBody


@dataclass
class SegmentMotion:
    track_id: int
    segment: int  # index among the track's segments
    num_segments: int
    frames: tuple[int, int]  # [start, end) output frames of the segment
    betas: np.ndarray  # (10,)
    rest_joints: np.ndarray  # (24, 3) m, canonical rest pose
    rest_vertices: np.ndarray  # (V, 3) m, canonical rest pose
    visible: np.ndarray  # (T,) bool
    root_position: np.ndarray  # (T, 3) m, export frame
    rotations: np.ndarray  # (T, 24, 3, 3) parent-relative; the root's in the export frame

    @property
    def name(self) -> str:
        """`track_<id>`, or `track_<id>_seg<k>` for a track of several segments."""
        base = f"track_{self.track_id}"
        return base if self.num_segments == 1 else f"{base}_seg{self.segment}"


def quaternions(matrices: np.ndarray) -> np.ndarray:
    """(T, ..., 4) unit quaternions (x, y, z, w) of rotation matrices (T, ..., 3, 3), the sign
    chosen continuous over time (axis 0), so that interpolating between frames takes the short
    way."""
    q = Rotation.from_matrix(matrices.reshape(-1, 3, 3)).as_quat().reshape(*matrices.shape[:-2], 4)
    flip = np.cumsum(np.sum(q[1:] * q[:-1], axis=-1) < 0, axis=0) % 2 == 1
    q[1:][flip] *= -1
    return q


def nearest_shown(visible: np.ndarray) -> np.ndarray:
    """(T,) index of the nearest visible frame of each frame (the earlier one on a tie)."""
    shown = np.flatnonzero(visible)
    frames = np.arange(len(visible))
    after = np.clip(np.searchsorted(shown, frames), 0, len(shown) - 1)
    before = np.clip(after - 1, 0, len(shown) - 1)
    take_before = np.abs(frames - shown[before]) <= np.abs(shown[after] - frames)
    return np.where(take_before, shown[before], shown[after])


def segment_motions(track: TrackFits, body: ExportBody, frame: ExportFrame) -> list[SegmentMotion]:
    """The track's segments that have at least one valid frame, in order."""
    motions = []
    valid = track.valid.astype(bool)
    num_frames = len(valid)
    for k, ((start, end), betas) in enumerate(zip(track.segments, track.shape_betas, strict=True)):
        visible = np.zeros(num_frames, bool)
        visible[start:end] = valid[start:end]
        if not visible.any():
            continue
        source = nearest_shown(visible)
        rest_joints, rest_vertices = body.rest(betas)
        pose = track.pose_rotvecs[source].astype(np.float64).reshape(num_frames, -1, 3)
        rotations = Rotation.from_rotvec(pose.reshape(-1, 3)).as_matrix().reshape(*pose.shape, 3)
        rotations[:, 0] = frame.rotation @ rotations[:, 0]
        root = frame.points(rest_joints[0] + track.trans[source].astype(np.float64))
        motions.append(
            SegmentMotion(
                track_id=int(track.track_id),
                segment=k,
                num_segments=len(track.segments),
                frames=(int(start), int(end)),
                betas=np.asarray(betas, np.float64),
                rest_joints=rest_joints,
                rest_vertices=rest_vertices,
                visible=visible,
                root_position=root,
                rotations=rotations,
            )
        )
    return motions
