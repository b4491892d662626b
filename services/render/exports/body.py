"""The SMPL body model as the exports need it: rest shapes per betas, skinning influences, and
posed joints (smplfitter's forward kinematics)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from services.common.errors import InvalidInput, ModelNotReady
from services.fitting.smpl_fit import GENDER_TOKENS, body_model_files

SMPL_NOTICE = (
    "Bodies made with the SMPL body model (https://smpl.is.tue.mpg.de). SMPL and meshes, "
    "skeletons and animations derived from it are licensed for non-commercial scientific "
    "research only; commercial use needs a licence from the SMPL licensors (Max Planck "
    "Institute for Intelligent Systems / Meshcapade)."
)
INFLUENCES = 4  # one glTF JOINTS_0/WEIGHTS_0 set: what every glTF viewer and Unity support


class ExportBody:
    """smplfitter's SMPL model loaded from `body_model_dir` (the folder with the SMPL files)."""

    def __init__(self, body_model_dir: Path, gender: str):
        from smplfitter.pt import BodyModel

        if gender not in GENDER_TOKENS["smpl"]:
            raise InvalidInput(
                f"gender={gender!r} must be one of {', '.join(GENDER_TOKENS['smpl'])}"
            )
        missing = [
            p for p in body_model_files(Path(body_model_dir), "smpl", gender) if not p.is_file()
        ]
        if missing:
            raise ModelNotReady(
                f"SMPL ({gender}) is not ready: missing {', '.join(str(p) for p in missing)}. "
                "Register at https://smpl.is.tue.mpg.de, then run `nlfpipe models fetch smpl`."
            )
        self.model = BodyModel("smpl", gender, model_root=str(body_model_dir))
        self.parents = np.asarray(self.model.kintree_parents, np.int64)
        self.parents[0] = -1
        self.joint_names = list(self.model.joint_names)
        self.faces = np.asarray(self.model.faces, np.int64)
        self.weights = self.model.weights.numpy().astype(np.float64)

    @property
    def num_joints(self) -> int:
        return len(self.parents)

    @torch.inference_mode()
    def rest(self, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Joints (24, 3) and vertices (V, 3) in metres of shape `betas` in the rest pose (SMPL's
        canonical frame: y up, facing +z), without translation."""
        out = self.model(
            torch.zeros((1, 3 * self.num_joints)),
            torch.as_tensor(np.asarray(betas, np.float32)[None]),
        )
        return out["joints"][0].numpy().astype(np.float64), out["vertices"][0].numpy()

    @torch.inference_mode()
    def posed_joints(self, pose: np.ndarray, betas: np.ndarray, trans: np.ndarray) -> np.ndarray:
        """(T, 24, 3) joints in metres for per-frame pose (T, 72), betas (T, 10), trans (T, 3)."""
        out = self.model(
            torch.as_tensor(pose, dtype=torch.float32),
            torch.as_tensor(betas, dtype=torch.float32),
            torch.as_tensor(trans, dtype=torch.float32),
            return_vertices=False,
        )
        return out["joints"].numpy()

    def sole_depth(self) -> float:
        """How far (m) the lowest vertex of the mean shape's rest pose lies below its foot joints
        (SMPL 10 and 11, the joints the ground plane is fitted to)."""
        joints, vertices = self.rest(np.zeros(10))
        return float(joints[[10, 11], 1].mean() - vertices[:, 1].min())

    def influences(self) -> tuple[np.ndarray, np.ndarray, float]:
        """Per vertex the INFLUENCES strongest joints (V, 4) uint8 and their weights (V, 4)
        float32 renormalised to sum to 1 (unused slots: joint 0, weight 0), and the largest
        weight mass dropped from a vertex (0 when no vertex has more than 4)."""
        order = np.argsort(-self.weights, axis=1, kind="stable")
        kept = np.take_along_axis(self.weights, order[:, :INFLUENCES], axis=1).clip(0, None)
        dropped = float((self.weights.clip(0, None).sum(1) - kept.sum(1)).max())
        weights = (kept / kept.sum(1, keepdims=True)).astype(np.float32)
        # Exact float32 sums: the largest weight takes up the rounding.
        weights[:, 0] = np.float32(1) - weights[:, 1:].sum(1, dtype=np.float32)
        joints = np.where(weights > 0, order[:, :INFLUENCES], 0).astype(np.uint8)
        return joints, weights, dropped
