"""Loading and calling the NLF multi-person TorchScript (pipeline-reference C.1).

Inputs are validated here before every call: an exception raised inside an optimized
TorchScript method can crash the process instead of raising.
"""

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from services.common.errors import ModelNotReady

log = logging.getLogger(__name__)

REQUIRED_METHODS = {
    "get_weights_for_canonical_points": ("canonical_points",),
    "estimate_poses_batched": (
        "images", "boxes", "weights", "intrinsic_matrix", "distortion_coeffs",
        "extrinsic_matrix", "world_up_vector", "default_fov_degrees", "internal_batch_size",
        "antialias_factor", "num_aug",
    ),
    "detect_poses_batched": (
        "images", "weights", "intrinsic_matrix", "distortion_coeffs", "extrinsic_matrix",
        "world_up_vector", "default_fov_degrees", "internal_batch_size", "antialias_factor",
        "num_aug", "detector_threshold", "detector_nms_iou_threshold", "max_detections",
        "detector_flip_aug", "suppress_implausible_poses",
    ),
}


@dataclass(frozen=True)
class BatchCameras:
    """Cameras of the frames of one model call, in the model's units (px, mm)."""

    intrinsics: np.ndarray  # (B, 3, 3)
    distortion: np.ndarray  # (B, 5)
    extrinsics: np.ndarray  # (B, 4, 4) world->camera, mm
    world_up: np.ndarray  # (3,)


@dataclass(frozen=True)
class PersonOutputs:
    """The model's output for one frame: n people, N canonical points."""

    points: np.ndarray  # (n, N, 3) mm, world
    uncertainties: np.ndarray  # (n, N) m
    boxes: np.ndarray | None = None  # (n, 5) x, y, w, h, score; detector mode only


# Options that only NLF's own person detector reads (detector mode; masks mode gives boxes).
DETECTOR_OPTIONS = (
    "suppress_implausible_poses",
    "detector_threshold",
    "detector_nms_iou_threshold",
    "max_detections",
    "detector_flip_aug",
)


@dataclass(frozen=True)
class InferenceOptions:
    """NLF's call options (names as in NLF)."""

    num_aug: int = 5
    antialias_factor: int = 2
    internal_batch_size: int = 8
    suppress_implausible_poses: bool = True
    detector_threshold: float = 0.15
    detector_nms_iou_threshold: float = 0.8
    max_detections: int = -1
    detector_flip_aug: bool = True

    def used(self, detector: bool) -> dict:
        """The options a call in that mode reads (the detector's only in detector mode)."""
        options = asdict(self)
        if not detector:
            for name in DETECTOR_OPTIONS:
                del options[name]
        return options


@contextmanager
def torchscript_api() -> Iterator[None]:
    """Our calls of torch.jit (load, script, optimize_for_inference), without torch's
    deprecation FutureWarning: NLF is published only as TorchScript, so the warning asks for
    something we cannot do. Other warnings, and other code's torch.jit calls, still warn."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning
        )
        yield


def load_torchscript(path: Path, device: str) -> torch.jit.ScriptModule:
    """Loads an NLF TorchScript file and checks its interface; ModelNotReady says what is wrong."""
    try:
        with torchscript_api():
            module = torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelNotReady(f"{path} is not a TorchScript file ({first_line}); delete it and "
                            f"fetch it again with `nlfpipe models fetch`") from None
    for method, arguments in REQUIRED_METHODS.items():
        if not hasattr(module, method):
            raise ModelNotReady(f"{path} lacks the NLF method {method}(); it is not an NLF "
                                f"multi-person TorchScript")
        names = {a.name for a in getattr(module, method).schema.arguments}
        missing = [a for a in arguments if a not in names]
        if missing:
            raise ModelNotReady(f"{path}: {method}() has no argument(s) {', '.join(missing)}; "
                                f"it is not a compatible NLF multi-person TorchScript")
    module.eval()
    if device.startswith("cuda"):
        module = _optimize(module, path)
    return module


def _optimize(module: torch.jit.ScriptModule, path: Path) -> torch.jit.ScriptModule:
    try:
        with torchscript_api():
            return torch.jit.optimize_for_inference(module, other_methods=list(REQUIRED_METHODS))
    except RuntimeError as e:
        log.warning("optimize_for_inference failed for %s (%s); using the model as loaded",
                    path, e)
        return module


def load_canonical_points(data_dir: Path, body_model: str = "smpl") -> tuple[np.ndarray, int]:
    """Canonical vertices then joints (N, 3) and the number of vertices, from nlf-data."""
    verts_path = data_dir / "canonical_verts" / f"{body_model}.npy"
    joints_path = data_dir / "canonical_joints" / f"{body_model}.npy"
    try:
        verts = np.load(verts_path, allow_pickle=False)
        joints = np.load(joints_path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ModelNotReady(f"cannot read the canonical points in {data_dir}: {e}; run "
                            f"`nlfpipe models fetch nlf-data`") from None
    for name, array in (("vertices", verts), ("joints", joints)):
        if array.ndim != 2 or array.shape[1] != 3 or not np.isfinite(array).all():
            raise ModelNotReady(f"canonical {name} in {data_dir} have shape {array.shape}; "
                                f"expected (N, 3) finite values")
    return np.concatenate([verts, joints]).astype(np.float32), len(verts)


class NlfModel:
    """An NLF TorchScript with its canonical-point weights, ready to run on one device."""

    def __init__(self, module: torch.jit.ScriptModule, canonical: np.ndarray, num_vertices: int,
                 device: str, fp16: bool = True):
        self.module = module
        self.device = torch.device(device)
        self.num_points = len(canonical)
        self.num_vertices = num_vertices
        self.half = fp16 and self.device.type == "cuda"
        with torch.inference_mode():
            self.weights = module.get_weights_for_canonical_points(
                torch.from_numpy(canonical).to(self.device)
            )

    @property
    def num_joints(self) -> int:
        return self.num_points - self.num_vertices

    def _images(self, frames: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 RGB -> NCHW on the device (fp16 in [0, 1] on the GPU)."""
        images = torch.from_numpy(frames).to(self.device, non_blocking=True)
        if self.half:
            images = images.half().div_(255.0)
        return images.permute(0, 3, 1, 2)

    def _camera_args(self, cameras: BatchCameras) -> dict:
        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(self.device)

        return {
            "intrinsic_matrix": tensor(cameras.intrinsics),
            "distortion_coeffs": tensor(cameras.distortion),
            "extrinsic_matrix": tensor(cameras.extrinsics),
            "world_up_vector": tensor(cameras.world_up),
        }

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.float16, enabled=self.half)

    def estimate(self, frames: np.ndarray, boxes: list[np.ndarray], cameras: BatchCameras,
                 options: InferenceOptions) -> list[PersonOutputs]:
        """Poses for given boxes (x, y, w, h px), one list entry per frame."""
        _check_batch(frames, cameras, len(boxes))
        for b in boxes:
            if b.ndim != 2 or b.shape[1] != 4 or not np.isfinite(b).all() or (b[:, 2:] <= 0).any():
                raise ValueError(f"boxes must be (n, 4) finite x, y, w, h with w, h > 0: {b}")
        with torch.inference_mode(), self._autocast():
            out = self.module.estimate_poses_batched(
                self._images(frames),
                [torch.from_numpy(np.ascontiguousarray(b, np.float32)).to(self.device)
                 for b in boxes],
                self.weights,
                **self._camera_args(cameras),
                internal_batch_size=options.internal_batch_size,
                antialias_factor=options.antialias_factor,
                num_aug=options.num_aug,
            )
        return self._outputs(out, [len(b) for b in boxes], with_boxes=False)

    def detect(self, frames: np.ndarray, cameras: BatchCameras,
               options: InferenceOptions) -> list[PersonOutputs]:
        """Detector mode: NLF's built-in person detector, then poses."""
        _check_batch(frames, cameras, len(frames))
        with torch.inference_mode(), self._autocast():
            out = self.module.detect_poses_batched(
                self._images(frames),
                self.weights,
                **self._camera_args(cameras),
                internal_batch_size=options.internal_batch_size,
                antialias_factor=options.antialias_factor,
                num_aug=options.num_aug,
                detector_threshold=options.detector_threshold,
                detector_nms_iou_threshold=options.detector_nms_iou_threshold,
                max_detections=options.max_detections,
                detector_flip_aug=options.detector_flip_aug,
                suppress_implausible_poses=options.suppress_implausible_poses,
            )
        return self._outputs(out, None, with_boxes=True)

    def _outputs(self, out: dict, counts: list[int] | None, with_boxes: bool
                 ) -> list[PersonOutputs]:
        results = []
        for i, (points, unc) in enumerate(zip(out["poses3d"], out["uncertainties"], strict=True)):
            boxes = out["boxes"][i].float().cpu().numpy() if with_boxes else None
            n = len(boxes) if boxes is not None else counts[i]
            points = points.float().cpu().numpy()
            unc = unc.float().cpu().numpy()
            if points.shape != (n, self.num_points, 3) or unc.shape != (n, self.num_points):
                raise RuntimeError(
                    f"the model returned poses3d {points.shape} and uncertainties {unc.shape} "
                    f"for {n} people; expected ({n}, {self.num_points}, 3) and ({n}, "
                    f"{self.num_points})"
                )
            results.append(PersonOutputs(points, unc, boxes))
        return results


def _check_batch(frames: np.ndarray, cameras: BatchCameras, count: int) -> None:
    b = len(frames)
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (B, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    if count != b or cameras.intrinsics.shape != (b, 3, 3) or cameras.extrinsics.shape != (
        b, 4, 4
    ) or cameras.distortion.shape != (b, 5):
        raise ValueError("boxes and cameras must have one entry per frame of the batch")
