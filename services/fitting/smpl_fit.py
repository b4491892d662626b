"""SMPL fitting with smplfitter (torch backend on the CPU): shared shape per track segment,
per-frame pose, translation and (in the preliminary pass) scale.

smplfitter's shared-shape solve costs far more than the per-frame one (it materializes the
stacked design matrix of every frame), so the shape is solved on an evenly spaced subsample of a
segment's frames and the poses of all frames are then fitted with that shape known. The shape
prior is applied once per segment (smplfitter adds its regularizer once per frame of a shared
solve; we divide it by the number of frames solved), so a long clean segment is not pulled
toward the mean shape.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from services.fitting.joint_regressor import fit_joint_regressor, regress_joints

NUM_JOINTS = 24
NUM_BETAS = 10
BODY_MODEL_FILES = {
    "smpl": ("basicmodel_{gender}_lbs_10_207_0_v1.1.0.pkl", "kid_template.npy"),
}
GENDER_TOKENS = {"smpl": {"neutral": "neutral", "female": "f", "male": "m"}}
FOOT_JOINTS = (10, 11)
FOOT_PARTS = (7, 8, 10, 11)  # ankles and feet (toes): the parts whose vertices form the soles
SOLE_PERCENTILE = 2.0


def body_model_files(model_root: Path, body_model: str, gender: str) -> list[Path]:
    """The files smplfitter reads for a body model (under `<body_models>/<model>/`)."""
    token = GENDER_TOKENS[body_model][gender]
    return [model_root / name.format(gender=token) for name in BODY_MODEL_FILES[body_model]]


def farthest_point_subset(points: np.ndarray, count: int) -> np.ndarray:
    """Sorted indices of `count` points spread evenly over the point cloud (farthest-point
    sampling from point 0; deterministic)."""
    chosen = [0]
    dist = np.linalg.norm(points - points[0], axis=1)
    for _ in range(count - 1):
        i = int(dist.argmax())
        chosen.append(i)
        dist = np.minimum(dist, np.linalg.norm(points - points[i], axis=1))
    return np.array(sorted(chosen), np.int64)


@torch.inference_mode()
def sole_offset_m(body_model) -> float:
    """Height of the foot joints (10, 11) above the soles, in metres, for a smplfitter
    BodyModel: in its rest pose with the mean shape (standing, feet flat, y up), the mean
    height of the two foot joints minus the sole height, the 2nd percentile of the heights of
    the vertices skinned to the ankle and foot parts (robust to a stray low vertex)."""
    num_betas = body_model.shapedirs.shape[-1]
    rest = body_model(torch.zeros(1, 72), torch.zeros(1, num_betas))
    verts, joints = rest["vertices"][0].numpy(), rest["joints"][0].numpy()
    part = body_model.weights.numpy().argmax(axis=1)
    sole = np.percentile(verts[np.isin(part, FOOT_PARTS), 1], SOLE_PERCENTILE)
    return float(joints[list(FOOT_JOINTS), 1].mean() - sole)


@dataclass(frozen=True)
class FitSettings:
    num_iter: int = 3
    beta_regularizer: float = 1.0  # per segment, on betas 2..9 (reference: 10 per frame)
    beta_regularizer2: float = 0.0  # per segment, on betas 0..1
    scale_regularizer: float = 1.0  # per frame, on the preliminary scale
    shape_frames: int = 64  # frames of the subsample the shared shape is solved on


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count (process-wide) set to `count` for the block, then
    restored."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class SmplFitter:
    """Body model + fitters for the vertex subset the stage works with.

    Points handed to the fit methods are (n, V_sub + 24, 3) in metres: the subset vertices
    (`vertex_subset`, indices into the full mesh) followed by the 24 joints.
    """

    def __init__(
        self,
        model_dir: Path,
        gender: str = "neutral",
        subset_size: int = 1024,
        prelim_subset_size: int = 256,
        body_model: str = "smpl",
    ):
        from smplfitter.pt import BodyFitter, BodyModel

        self.model_dir = Path(model_dir)
        self.body_model = BodyModel(body_model, gender, model_root=str(self.model_dir))
        subset_file = self.model_dir / f"vertex_subset_{subset_size}.npz"
        if subset_file.exists():
            with np.load(subset_file, allow_pickle=False) as data:
                self.vertex_subset = np.sort(data["i_verts"].astype(np.int64))
        else:
            template = self.body_model.v_template.numpy()
            self.vertex_subset = farthest_point_subset(template, subset_size)
        sub_template = self.body_model.v_template.numpy()[self.vertex_subset]
        self.prelim_subset = farthest_point_subset(sub_template, prelim_subset_size)
        kwargs = dict(model_root=str(self.model_dir), num_betas=NUM_BETAS)
        sub_model = BodyModel(body_model, gender, vertex_subset=self.vertex_subset, **kwargs)
        prelim_model = BodyModel(
            body_model, gender, vertex_subset=self.vertex_subset[self.prelim_subset], **kwargs
        )
        self.fitter = BodyFitter(sub_model)
        self.prelim_fitter = BodyFitter(prelim_model)
        self.prelim_model = prelim_model
        self.joint_regressor = fit_joint_regressor(sub_model)
        self.sole_offset_m = sole_offset_m(self.body_model)
        n_sub = len(self.vertex_subset)
        # The reference's regularizer scaling for fits on a subset of the 6890+24 points.
        self.reg_factor = (n_sub + NUM_JOINTS) / (self.body_model.num_vertices + NUM_JOINTS)

    @property
    def num_points(self) -> int:
        return len(self.vertex_subset) + NUM_JOINTS

    def _split(self, points, weights, prelim: bool):
        verts, joints = points[:, :-NUM_JOINTS], points[:, -NUM_JOINTS:]
        vw, jw = weights[:, :-NUM_JOINTS], weights[:, -NUM_JOINTS:]
        if prelim:
            verts, vw = verts[:, self.prelim_subset], vw[:, self.prelim_subset]
        as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, np.float32))  # noqa: E731
        return as_t(verts), as_t(joints), as_t(vw), as_t(jw)

    @torch.inference_mode()
    def estimate_shape(
        self, points: np.ndarray, weights: np.ndarray, settings: FitSettings, prelim: bool = False
    ) -> np.ndarray:
        """Betas (10,) of one segment: the per-component median of per-frame fits on an evenly
        spaced subsample of its frames (the prior is applied once for the segment)."""
        n = len(points)
        pick = np.unique(np.linspace(0, n - 1, min(n, settings.shape_frames)).round().astype(int))
        verts, joints, vw, jw = self._split(points[pick], weights[pick], prelim=prelim)
        fitter = self.prelim_fitter if prelim else self.fitter
        per_frame = self.reg_factor / len(pick)
        result = fitter.fit(
            verts,
            joints,
            vw,
            jw,
            num_iter=settings.num_iter,
            beta_regularizer=settings.beta_regularizer * per_frame,
            beta_regularizer2=settings.beta_regularizer2 * per_frame,
            final_adjust_rots=False,
            requested_keys=["shape_betas"],
        )
        return np.median(result["shape_betas"].numpy().astype(np.float64), axis=0)

    @torch.inference_mode()
    def frame_scales(self, points: np.ndarray, weights: np.ndarray, betas: np.ndarray):
        """Per-frame factor by which each frame's points must be scaled (about their centroid)
        to match the body of shape `betas` in the pose fitted to them, (n,).

        The target is regressed on the body (k = sum w|m|^2 / sum w<t, m> over the vertices,
        m the fitted body, t the target, both centred): noise in the target then averages out
        instead of inflating the target's size as it would in the regression of the body on
        the target. The pose is fitted to joints regressed from the vertices rather than to
        the predicted joints, whose noise would bend (and so shrink) the fitted body.
        """
        n_verts = points.shape[1] - NUM_JOINTS
        joints = regress_joints(
            self.joint_regressor,
            points[:, :n_verts],
            weights[:, :n_verts],
            points[:, n_verts:],
        )
        verts, _, vw, jw = self._split(points, weights, prelim=True)
        shape = torch.as_tensor(np.tile(betas, (len(points), 1)), dtype=torch.float32)
        fit = self.prelim_fitter.fit_with_known_shape(
            shape, verts, torch.from_numpy(joints), vw, jw, num_iter=1, final_adjust_rots=False,
            requested_keys=["pose_rotvecs"],
        )  # fmt: skip
        model = self.prelim_model(fit["pose_rotvecs"], shape)["vertices"].numpy()
        target = verts.numpy()
        w = vw.numpy()
        wsum = np.maximum(w.sum(1, keepdims=True), 1e-12)
        tc = target - (w[..., None] * target).sum(1, keepdims=True) / wsum[..., None]
        mc = model - (w[..., None] * model).sum(1, keepdims=True) / wsum[..., None]
        num = (w * (mc * mc).sum(-1)).sum(1)
        den = (w * (tc * mc).sum(-1)).sum(1)
        return num / np.maximum(den, 1e-12)

    @torch.inference_mode()
    def fit_poses(
        self,
        points: np.ndarray,
        weights: np.ndarray,
        betas: np.ndarray,
        settings: FitSettings,
        chunk: int = 512,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Pose rotation vectors (n, 72) and translations (n, 3) with the shape known."""
        poses, trans = [], []
        for start in range(0, len(points), chunk):
            sl = slice(start, start + chunk)
            verts, joints, vw, jw = self._split(points[sl], weights[sl], prelim=False)
            shape = torch.as_tensor(np.tile(betas, (len(verts), 1)), dtype=torch.float32)
            fit = self.fitter.fit_with_known_shape(
                shape, verts, joints, vw, jw, num_iter=settings.num_iter,
                final_adjust_rots=True, requested_keys=["pose_rotvecs"],
            )  # fmt: skip
            poses.append(fit["pose_rotvecs"].numpy())
            trans.append(fit["trans"].numpy())
        return np.concatenate(poses), np.concatenate(trans)

    @torch.inference_mode()
    def joints(self, pose: np.ndarray, betas: np.ndarray, trans: np.ndarray) -> np.ndarray:
        """SMPL joints (n, 24, 3) in metres."""
        out = self.body_model(
            torch.as_tensor(pose, dtype=torch.float32),
            torch.as_tensor(np.tile(betas, (len(pose), 1)), dtype=torch.float32),
            torch.as_tensor(trans, dtype=torch.float32),
            return_vertices=False,
        )
        return out["joints"].numpy()
