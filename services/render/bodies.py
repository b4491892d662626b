"""SMPL meshes of the fits: smplfitter's forward pass (torch, CPU) and smooth vertex normals,
computed a chunk of frames at a time for every track that is valid there."""

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from services.common.formats.fits import TrackFits

FOOT_JOINTS = (10, 11)
CHUNK_FRAMES = 16


@dataclass
class TrackTimeline:
    """One track's per-frame parameters over the output frames (NaN where invalid)."""

    track_id: int
    pose: np.ndarray  # (T, 72) rad
    betas: np.ndarray  # (T, 10)
    trans: np.ndarray  # (T, 3) m
    valid: np.ndarray  # (T,) bool

    @classmethod
    def from_fits(cls, fits: TrackFits) -> "TrackTimeline":
        betas = fits.betas_per_frame()
        valid = (
            np.asarray(fits.valid, bool)
            & np.isfinite(fits.pose_rotvecs).all(1)
            & np.isfinite(fits.trans).all(1)
            & np.isfinite(betas).all(1)
        )
        return cls(fits.track_id, fits.pose_rotvecs, betas, fits.trans, valid)


class BodyMeshes:
    """Posed SMPL meshes (mm) with smooth normals from a smplfitter `BodyModel`."""

    def __init__(self, body_model):
        self.model = body_model
        self.faces = np.asarray(body_model.faces, np.int64)
        self.num_vertices = int(body_model.num_vertices)
        self._faces_t = torch.as_tensor(self.faces)
        template = body_model.v_template.numpy()
        joints = body_model.J_template.numpy()
        # Height of the foot joints above the soles (SMPL's template is y-up): the ground plane
        # of the fitting stage passes through the foot joints, the drawn floor under the soles.
        self.sole_depth_mm = float(
            (joints[list(FOOT_JOINTS), 1].mean() - template[:, 1].min()) * 1000
        )

    @torch.inference_mode()
    def pose(self, pose: np.ndarray, betas: np.ndarray, trans: np.ndarray) -> np.ndarray:
        """(n, V, 6) float32: vertex positions in mm, then unit normals."""
        out = self.model(
            torch.as_tensor(pose, dtype=torch.float32),
            torch.as_tensor(betas, dtype=torch.float32),
            torch.as_tensor(trans, dtype=torch.float32),
        )
        verts = out["vertices"] * 1000.0
        f = self._faces_t
        a, b, c = verts[:, f[:, 0]], verts[:, f[:, 1]], verts[:, f[:, 2]]
        face_normals = torch.cross(b - a, c - a, dim=-1)  # area-weighted
        normals = torch.zeros_like(verts)
        for corner in range(3):
            normals.index_add_(1, f[:, corner], face_normals)
        normals = torch.nn.functional.normalize(normals, dim=-1)
        return torch.cat([verts, normals], dim=-1).numpy()

    @torch.inference_mode()
    def joints_mm(self, timeline: TrackTimeline) -> np.ndarray:
        """(T, 24, 3) joints in mm, NaN where the track is invalid."""
        out = np.full((len(timeline.valid), 24, 3), np.nan, np.float32)
        rows = np.flatnonzero(timeline.valid)
        if len(rows):
            joints = self.model(
                torch.as_tensor(timeline.pose[rows], dtype=torch.float32),
                torch.as_tensor(timeline.betas[rows], dtype=torch.float32),
                torch.as_tensor(timeline.trans[rows], dtype=torch.float32),
                return_vertices=False,
            )["joints"]
            out[rows] = joints.numpy() * 1000.0
        return out

    def frames(
        self, timelines: Mapping[int, TrackTimeline], num_frames: int, chunk: int = CHUNK_FRAMES
    ) -> Iterator[dict[int, np.ndarray]]:
        """Per output frame, {track id: (V, 6) mesh} of the tracks valid in that frame."""
        for start in range(0, num_frames, chunk):
            stop = min(start + chunk, num_frames)
            rows = [
                (tid, i) for tid, tl in timelines.items() for i in range(start, stop) if tl.valid[i]
            ]
            meshes = None
            if rows:
                meshes = self.pose(
                    *(
                        np.stack([getattr(timelines[tid], name)[i] for tid, i in rows])
                        for name in ("pose", "betas", "trans")
                    )
                )
            per_frame: list[dict[int, np.ndarray]] = [{} for _ in range(stop - start)]
            for k, (tid, i) in enumerate(rows):
                per_frame[i - start][tid] = meshes[k]
            yield from per_frame
