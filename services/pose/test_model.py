"""A stand-in for the NLF multi-person TorchScript, for tests and benchmarks (no weights needed).

It has NLF's exported methods with their exact argument names and output keys, and its outputs
are a known function of the boxes and cameras: the canonical points (metres, as given to
``get_weights_for_canonical_points``) scaled to mm and placed so that their origin lies on the
camera ray through the box centre, at depth ``f_y * BODY_HEIGHT_MM / box height``; then moved to
world coordinates with the inverse extrinsics when those are given. Uncertainty (m) of every
point is ``UNCERTAINTY_SCALE / box height``. Its detector returns fixed boxes (``detected_boxes``).

The logic lives in module-level functions: exceptions inside inlined TorchScript methods can
crash torch after freezing (docs/models.md), so the methods only delegate.
"""

import math
from pathlib import Path

import numpy as np
import torch

from services.pose.nlf import torchscript_api

BODY_HEIGHT_MM = 1700.0
UNCERTAINTY_SCALE = 20.0  # uncertainty in m = UNCERTAINTY_SCALE / box height in px


def default_intrinsics(height: int, width: int, fov_degrees: float) -> torch.Tensor:
    """NLF's default camera: the FOV along the larger side, principal point at the centre."""
    focal = max(height, width) / 2.0 / math.tan(math.radians(fov_degrees) / 2.0)
    k = torch.eye(3)
    k[0, 0] = focal
    k[1, 1] = focal
    k[0, 2] = (width - 1) / 2.0
    k[1, 2] = (height - 1) / 2.0
    return k


def place_template(template_mm: torch.Tensor, boxes: torch.Tensor, k: torch.Tensor,
                   extrinsics: torch.Tensor | None, body_height_mm: float,
                   uncertainty_scale: float):
    """Points (n, N, 3) in mm, 2-D projections (n, N, 2) and uncertainties (n, N) for boxes."""
    n = boxes.shape[0]
    center_x = boxes[:, 0] + boxes[:, 2] / 2.0
    center_y = boxes[:, 1] + boxes[:, 3] / 2.0
    depth = k[1, 1] * body_height_mm / boxes[:, 3]
    anchor = torch.stack(
        [(center_x - k[0, 2]) / k[0, 0] * depth, (center_y - k[1, 2]) / k[1, 1] * depth, depth],
        dim=1,
    )
    points_cam = anchor[:, None, :] + template_mm[None, :, :]
    projected = points_cam @ k.T
    poses2d = projected[:, :, :2] / projected[:, :, 2:3]
    uncertainties = (uncertainty_scale / boxes[:, 3])[:, None].expand(n, template_mm.shape[0])
    if extrinsics is None:
        return points_cam, poses2d, uncertainties.contiguous()
    rotation = extrinsics[:3, :3]
    translation = extrinsics[:3, 3]
    points_world = (points_cam - translation) @ rotation
    return points_world, poses2d, uncertainties.contiguous()


def estimate_batch(template_mm: torch.Tensor, images: torch.Tensor, boxes: list[torch.Tensor],
                   intrinsic_matrix: torch.Tensor | None,
                   extrinsic_matrix: torch.Tensor | None,
                   default_fov_degrees: float, body_height_mm: float,
                   uncertainty_scale: float) -> dict[str, list[torch.Tensor]]:
    height = images.shape[2]
    width = images.shape[3]
    poses3d: list[torch.Tensor] = []
    poses2d: list[torch.Tensor] = []
    uncertainties: list[torch.Tensor] = []
    for i in range(len(boxes)):
        if intrinsic_matrix is None:
            k = default_intrinsics(height, width, default_fov_degrees).to(images.device)
        else:
            k = intrinsic_matrix[i if intrinsic_matrix.shape[0] > 1 else 0].float()
        extrinsics: torch.Tensor | None = None
        if extrinsic_matrix is not None:
            extrinsics = extrinsic_matrix[i if extrinsic_matrix.shape[0] > 1 else 0].float()
        p3, p2, unc = place_template(template_mm, boxes[i][:, :4].float(), k, extrinsics,
                                      body_height_mm, uncertainty_scale)
        poses3d.append(p3)
        poses2d.append(p2)
        uncertainties.append(unc)
    return {"poses3d": poses3d, "poses2d": poses2d, "uncertainties": uncertainties}


def detect_boxes(detected: torch.Tensor, num_images: int, detector_threshold: float,
                 max_detections: int) -> list[torch.Tensor]:
    keep = detected[detected[:, 4] >= detector_threshold]
    if max_detections >= 0:
        keep = keep[:max_detections]
    return [keep.clone() for _ in range(num_images)]


class FakeMultipersonNLF(torch.nn.Module):
    """NLF's TorchScript interface with a geometric stand-in for the network."""

    batch_sizes: list[int]  # images per call, in call order (tests read it to check batching)
    last_options: dict[str, float]

    def __init__(self, detected_boxes: torch.Tensor):
        super().__init__()
        self.detected_boxes = detected_boxes  # (k, 5): x, y, w, h, score, best first
        self.body_height_mm = BODY_HEIGHT_MM
        self.uncertainty_scale = UNCERTAINTY_SCALE
        self.batch_sizes = []
        self.last_options = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def get_weights_for_canonical_points(self, canonical_points: torch.Tensor
                                         ) -> dict[str, torch.Tensor]:
        template = canonical_points.float() * 1000.0
        return {"w_tensor": template, "b_tensor": template.clone(),
                "w_tensor_flipped": template.clone(), "b_tensor_flipped": template.clone()}

    @torch.jit.export
    def estimate_poses_batched(
        self,
        images: torch.Tensor,
        boxes: list[torch.Tensor],
        weights: dict[str, torch.Tensor],
        intrinsic_matrix: torch.Tensor | None = None,
        distortion_coeffs: torch.Tensor | None = None,
        extrinsic_matrix: torch.Tensor | None = None,
        world_up_vector: torch.Tensor | None = None,
        default_fov_degrees: float = 55.0,
        internal_batch_size: int = 64,
        antialias_factor: int = 1,
        num_aug: int = 5,
        rot_aug_max_degrees: float = 25.0,
    ) -> dict[str, list[torch.Tensor]]:
        self.batch_sizes.append(images.shape[0])
        self.last_options = {"num_aug": float(num_aug),
                             "antialias_factor": float(antialias_factor),
                             "internal_batch_size": float(internal_batch_size)}
        return estimate_batch(weights["w_tensor"], images, boxes, intrinsic_matrix,
                              extrinsic_matrix, default_fov_degrees, self.body_height_mm,
                              self.uncertainty_scale)

    @torch.jit.export
    def detect_poses_batched(
        self,
        images: torch.Tensor,
        weights: dict[str, torch.Tensor],
        intrinsic_matrix: torch.Tensor | None = None,
        distortion_coeffs: torch.Tensor | None = None,
        extrinsic_matrix: torch.Tensor | None = None,
        world_up_vector: torch.Tensor | None = None,
        default_fov_degrees: float = 55.0,
        internal_batch_size: int = 64,
        antialias_factor: int = 1,
        num_aug: int = 5,
        rot_aug_max_degrees: float = 25.0,
        detector_threshold: float = 0.3,
        detector_nms_iou_threshold: float = 0.7,
        max_detections: int = 150,
        detector_flip_aug: bool = False,
        detector_both_flip_aug: bool = False,
        suppress_implausible_poses: bool = True,
        extra_boxes: list[torch.Tensor] | None = None,
    ) -> dict[str, list[torch.Tensor]]:
        self.batch_sizes.append(images.shape[0])
        boxes = detect_boxes(self.detected_boxes.to(images.device), images.shape[0],
                             detector_threshold, max_detections)
        out = estimate_batch(weights["w_tensor"], images, boxes, intrinsic_matrix,
                             extrinsic_matrix, default_fov_degrees, self.body_height_mm,
                             self.uncertainty_scale)
        out["boxes"] = boxes
        return out


DEFAULT_DETECTIONS = ((100.0, 50.0, 80.0, 200.0, 0.9), (300.0, 60.0, 60.0, 150.0, 0.1))


def make_fake_nlf(detections=DEFAULT_DETECTIONS) -> torch.jit.ScriptModule:
    """The scripted stand-in; ``detections`` are the (x, y, w, h, score) its detector returns."""
    with torchscript_api():
        return torch.jit.script(
            FakeMultipersonNLF(torch.tensor(detections, dtype=torch.float32))
        )


def canonical_points(num_vertices: int = 6890, num_joints: int = 24, seed: int = 0):
    """A body-sized synthetic template in metres: (vertices (V, 3), joints (J, 3))."""
    rng = np.random.default_rng(seed)
    extent = np.array([0.3, 0.85, 0.15])
    verts = rng.uniform(-1, 1, (num_vertices, 3)) * extent
    joints = rng.uniform(-1, 1, (num_joints, 3)) * extent * 0.8
    return verts.astype(np.float32), joints.astype(np.float32)


def install_test_models(model_cache: Path, num_vertices: int = 6890, num_joints: int = 24,
                        detections=DEFAULT_DETECTIONS,
                        template: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Writes the stand-in under the registry's file names of nlf-l and nlf-s, plus nlf-data.

    ``template`` (vertices, joints in metres) is what the stand-in places at every box: by
    default the random box of ``canonical_points``; `--test-models` runs give it a body
    (``orchestrator.testmodels``), so that fits reproduce the stand-in's people exactly.
    """
    from services.common.models import load_registry

    registry = load_registry()
    module = make_fake_nlf(detections)
    for name in ("nlf-l", "nlf-s"):
        target = model_cache / name / registry[name].files[0].name
        target.parent.mkdir(parents=True, exist_ok=True)
        module.save(str(target))
    verts, joints = canonical_points(num_vertices, num_joints) if template is None else template
    data = model_cache / "nlf-data"
    for rel, array in (("canonical_verts/smpl.npy", verts), ("canonical_joints/smpl.npy", joints)):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(data / rel, array)
