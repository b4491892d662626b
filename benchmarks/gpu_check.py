"""GPU check: every learned stage on CUDA against its CPU path, with throughputs.

Each learned stage's own model code (the classes its service loads) runs with random weights
of the real architectures, built once on the CPU and copied to both devices, on the same
synthetic frames (smooth light figures on a gradient) at the reference resolutions of a
1920x1080 video:

- tracking: Mask R-CNN R50-FPN (`MaskRCNNDetector`, float32, torchvision's 800-pixel resize)
  on a frame at the working short side 320: its FPN features are compared; STCN
  (`STCNPropagator`, fp16 autocast on CUDA) propagating 2 masks: per-pixel label agreement;
- semseg: DeepLabV3 ResNet-101 and MobileNetV3-Large (`DeepLabPersonSegmenter`, float32) at
  short side 520: person probabilities;
- pose: the NLF stand-in (services/pose/test_model.py) saved as TorchScript and loaded the way
  the service loads NLF (`load_torchscript`, which freezes and optimizes on CUDA; `NlfModel`,
  fp16 images and autocast on CUDA), 3 boxes per 1920x1080 frame: points and uncertainties;
- interpolation: our IFNet (RIFE v4.18) through `RifeInterpolator` (fp16 on CUDA) at 720p and
  1080p: the middle frames;
- slam depth model: Depth Anything V2 Small metric (`TransformersMetricDepth`, float32) on a
  frame at the SLAM resolution (384x512 pixels): depth in metres (DROID-SLAM itself needs its
  CUDA extensions, which no machine here builds: not checked);
- render: moderngl through EGL (`CameraView`): the silhouette of a 6889-vertex mesh against
  its analytic projection (the render stage has no CPU-side twin to compare with); on CUDA it
  is skipped unless EGL gives a hardware renderer.

Tolerances (limits below): the relative difference is max |device - cpu| / max |cpu|.
- fp16 paths (STCN keys, NLF stand-in, RIFE): fp16 keeps 11 significant bits (unit roundoff
  4.9e-4); tens of layers, each rounding its inputs and outputs, give errors of a few 1e-3
  relative to the output's range, so 2e-2 passes precision noise and fails any real mistake
  (a wrong layout, normalization or dtype is off by O(1)).
- float32 paths on CUDA (Mask R-CNN, DeepLab, the depth model): cuDNN convolutions use TF32
  by default (torch.backends.cudnn.allow_tf32; 11 significant bits, float32 sums), so the same
  reasoning holds at a smaller depth of rounding: 1e-2.
- STCN labels: random weights give near-equal object probabilities, so fp16 rounding flips
  pixels at the ties; a real mistake gives agreement near chance (1 in 3 labels): at least 0.9.
- RIFE middle frames (uint8): random flows move pixels, so rounding shows as level changes
  where the smooth frames have gradients: mean at most 1.5 levels, 99th percentile at most 8.
- render: silhouette IoU at least 0.98 (as tests/test_render_geometry.py).

`--device cpu` runs the "device" side on the CPU too (a CPU-against-CPU comparison: the
comparison logic and every stage's code path without a GPU); `--quick` uses small resolutions
and few frames. Without a CUDA device, `--device cuda` (the default) prints
{"skipped": "no CUDA device"} and exits 0. The exit status is 1 when a check fails.

    .venv/bin/python benchmarks/gpu_check.py [--device cuda|cpu] [--quick] [--budget-s 420]
        [--stages tracking,semseg,pose,interpolation,depth,render]

The last line printed is one JSON object: frames/s per stage, device name, torch version,
every check with its value and limit, and "checks_passed".
"""

import argparse
import copy
import json
import math
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STAGES = ("tracking", "semseg", "pose", "interpolation", "depth", "render")
FP16_REL = 2e-2
FP32_REL = 1e-2
LABEL_AGREEMENT = 0.9
RIFE_MEAN_LEVELS = 1.5
RIFE_P99_LEVELS = 8.0
RENDER_IOU = 0.98


@dataclass(frozen=True)
class Sizes:
    """Resolutions and frame counts of one run."""

    video: tuple[int, int]  # (height, width) of the source video
    tracking_short_side: int
    semseg_short_side: int
    slam_pixels: int
    depth_short_side: int
    interpolation: tuple[tuple[int, int], ...]
    maskrcnn_options: dict = field(default_factory=dict)
    compare_frames: int = 3  # frames computed on both devices
    timed_frames: int = 32  # frames timed on the device
    warm_calls: int = 2  # untimed calls before timing
    torch_threads: int = 0  # 0: every usable core (the CPU references are the slow part)


FULL = Sizes((1080, 1920), 320, 520, 384 * 512, 518, ((720, 1280), (1080, 1920)))
# Quick: tiny frames, few Mask R-CNN proposals, one thread (the test machine is shared).
QUICK = Sizes((72, 128), 48, 64, 48 * 64, 56, ((64, 96),),
              {"min_size": 64, "max_size": 112, "rpn_post_nms_top_n_test": 50,
               "box_detections_per_img": 5},
              compare_frames=2, timed_frames=1, warm_calls=0, torch_threads=1)  # fmt: skip


class StageSkipped(Exception):
    """The stage cannot run here; the message says why."""


# -- comparisons -----------------------------------------------------------------------------


def check(value: float, limit: float, at_most: bool = True) -> dict:
    """One check: `value` against `limit` (at most, or at least); NaN never passes."""
    passed = bool(value <= limit) if at_most else bool(value >= limit)
    return {"value": float(value), "limit": limit, "at_most": at_most,
            "passed": passed and math.isfinite(value)}  # fmt: skip


def relative_difference(reference: np.ndarray, candidate: np.ndarray) -> float:
    """max |candidate - reference| / max |reference| (inf when shapes differ or not finite)."""
    reference = np.asarray(reference, np.float64)
    candidate = np.asarray(candidate, np.float64)
    if reference.shape != candidate.shape or not np.isfinite(candidate).all():
        return math.inf
    scale = max(float(np.abs(reference).max(initial=0.0)), 1e-12)
    return float(np.abs(candidate - reference).max(initial=0.0)) / scale


def label_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """The fraction of pixels with the same label (0 when shapes differ)."""
    if reference.shape != candidate.shape:
        return 0.0
    return float(np.mean(reference == candidate))


def level_differences(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """Mean and 99th percentile of |candidate - reference| in uint8 levels."""
    if reference.shape != candidate.shape:
        return math.inf, math.inf
    diff = np.abs(reference.astype(np.int16) - candidate.astype(np.int16))
    return float(diff.mean()), float(np.percentile(diff, 99))


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


# -- inputs and timing -----------------------------------------------------------------------


def figure_masks(t: int, height: int, width: int) -> np.ndarray:
    """Soft masks (2, H, W) in 0..1 of two upright ellipses moving sideways over frames."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    masks = []
    for k, (x0, speed) in enumerate(((0.3, 0.004), (0.65, -0.003))):
        cx, cy = (x0 + speed * t) * width, (0.55 + 0.02 * k) * height
        rx, ry = 0.07 * width, 0.3 * height
        r = np.sqrt(((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2)
        masks.append(np.clip((1.2 - r) / 0.4, 0.0, 1.0))
    return np.stack(masks)


def scene_frames(count: int, height: int, width: int) -> np.ndarray:
    """Smooth RGB uint8 frames (count, H, W, 3): a gradient with two light figures."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    background = np.stack([0.25 + 0.2 * xs / width, 0.2 + 0.2 * ys / height,
                           0.3 + 0.1 * np.sin(xs / width * 6.0)], -1)  # fmt: skip
    frames = []
    for t in range(count):
        figures = figure_masks(t, height, width)
        frame = background * (1 - figures.max(0))[..., None]
        for mask, colour in zip(figures, ((0.9, 0.75, 0.6), (0.6, 0.8, 0.9)), strict=True):
            frame = frame + mask[..., None] * np.array(colour, np.float32)
        frames.append(np.clip(frame * 255, 0, 255).astype(np.uint8))
    return np.stack(frames)


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def per_second(run: Callable[[object], object], items: list, device: str, warm: int) -> float:
    """Items per second of `run` over `items`, after `warm` untimed calls on the first one."""
    for _ in range(warm):
        run(items[0])
    synchronize(device)
    start = time.perf_counter()
    for item in items:
        run(item)
    synchronize(device)
    return len(items) / (time.perf_counter() - start)


def seeded(build: Callable[[], object]):
    import torch

    torch.manual_seed(0)
    return build().eval()


# -- stages ----------------------------------------------------------------------------------


def check_tracking(device: str, sizes: Sizes) -> dict:
    import torch

    from services.common.frames import working_shape
    from services.tracking.detection import MaskRCNNDetector, build_maskrcnn
    from services.tracking.stcn import STCNPropagator
    from services.tracking.stcn_network import STCN

    height, width = working_shape(*sizes.video, sizes.tracking_short_side)
    frames = scene_frames(max(sizes.compare_frames, sizes.timed_frames) + 1, height, width)
    maskrcnn = seeded(lambda: build_maskrcnn(**sizes.maskrcnn_options))
    detectors = {d: MaskRCNNDetector(copy.deepcopy(maskrcnn), d) for d in ("cpu", device)}

    @torch.inference_mode()
    def fpn_features(detector: MaskRCNNDetector, image: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(image).to(detector.device).permute(2, 0, 1).float() / 255
        images, _ = detector.model.transform([tensor])
        levels = detector.model.backbone(images.tensors)
        return torch.cat([f.flatten() for f in levels.values()]).float().cpu().numpy()

    fpn = [fpn_features(detectors[d], frames[0]) for d in ("cpu", device)]
    checks = {"maskrcnn_fpn_relative_difference": check(relative_difference(*fpn), FP32_REL)}
    fps = {"tracking_maskrcnn": per_second(detectors[device].detect,
                                           list(frames[: sizes.timed_frames]), device,
                                           sizes.warm_calls)}  # fmt: skip

    stcn = seeded(STCN)
    init_masks = (figure_masks(0, height, width) > 0.5).astype(np.float32)

    def propagate(on: str, count: int) -> np.ndarray:
        propagator = STCNPropagator(copy.deepcopy(stcn).to(on), on)
        propagator.start(frames[0], init_masks, count + 1)
        return np.stack([propagator.step(i, frames[i], temporary=False)
                         for i in range(1, count + 1)])  # fmt: skip

    labels = [propagate(d, sizes.compare_frames) for d in ("cpu", device)]
    checks["stcn_label_agreement"] = check(label_agreement(*labels), LABEL_AGREEMENT, False)
    start = time.perf_counter()
    propagate(device, sizes.timed_frames)
    fps["tracking_stcn"] = sizes.timed_frames / (time.perf_counter() - start)
    precision = "maskrcnn float32, stcn " + ("fp16" if device.startswith("cuda") else "float32")
    return {"frames_per_s": fps, "checks": checks, "resolution": f"{width}x{height}",
            "precision": precision}  # fmt: skip


def check_semseg(device: str, sizes: Sizes) -> dict:
    from services.common.frames import working_shape
    from services.semseg.deeplab import MODELS, DeepLabPersonSegmenter, build_deeplabv3

    height, width = working_shape(*sizes.video, sizes.semseg_short_side)
    frames = scene_frames(max(sizes.compare_frames, sizes.timed_frames), height, width)
    fps, checks = {}, {}
    for model in MODELS:
        network = seeded(lambda m=model: build_deeplabv3(m))
        segmenters = {d: DeepLabPersonSegmenter(copy.deepcopy(network), d) for d in ("cpu", device)}
        batch = frames[: sizes.compare_frames]
        probabilities = [segmenters[d].person_probability(batch) for d in ("cpu", device)]
        checks[f"{model}_relative_difference"] = check(relative_difference(*probabilities),
                                                       FP32_REL)  # fmt: skip
        batches = [frames[i : i + 4] for i in range(0, sizes.timed_frames, 4)]
        per_batch = per_second(
            segmenters[device].person_probability, batches, device, sizes.warm_calls
        )
        fps[f"semseg_{model.replace('-', '_')}"] = per_batch * len(batches[0])
    return {"frames_per_s": fps, "checks": checks, "resolution": f"{width}x{height}",
            "precision": "float32"}  # fmt: skip


def check_pose(device: str, sizes: Sizes) -> dict:
    from services.pose.nlf import BatchCameras, InferenceOptions, NlfModel, load_torchscript
    from services.pose.test_model import canonical_points, make_fake_nlf

    height, width = sizes.video
    verts, joints = canonical_points()
    canonical = np.concatenate([verts, joints])
    batch_size = 8
    k = np.array([[1.1 * width, 0, (width - 1) / 2], [0, 1.1 * width, (height - 1) / 2],
                  [0, 0, 1]])  # fmt: skip
    extrinsics = np.eye(4)
    extrinsics[:3, 3] = [120.0, -40.0, 300.0]
    cameras = BatchCameras(
        np.repeat(k[None], batch_size, 0),
        np.zeros((batch_size, 5)),
        np.repeat(extrinsics[None], batch_size, 0),
        np.array([0.0, -1, 0]),
    )
    frames = scene_frames(batch_size, height, width)
    boxes = [np.array([[0.2 * width + 3 * i, 0.2 * height, 0.1 * width, 0.6 * height],
                       [0.55 * width - 2 * i, 0.25 * height, 0.08 * width, 0.5 * height],
                       [0.8 * width, 0.4 * height, 0.05 * width, 0.3 * height]])
             for i in range(batch_size)]  # fmt: skip
    options = InferenceOptions()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "nlf-standin.torchscript"
        make_fake_nlf().save(str(path))
        models = {d: NlfModel(load_torchscript(path, d), canonical, len(verts), d)
                  for d in ("cpu", device)}  # fmt: skip
    outputs = {d: models[d].estimate(frames, boxes, cameras, options) for d in ("cpu", device)}
    points = [np.stack([o.points for o in outputs[d]]) for d in ("cpu", device)]
    uncertainties = [np.stack([o.uncertainties for o in outputs[d]]) for d in ("cpu", device)]
    checks = {
        "points_relative_difference": check(relative_difference(*points), FP16_REL),
        "uncertainties_relative_difference": check(
            relative_difference(*uncertainties), FP16_REL
        ),  # fmt: skip
    }
    calls = max(1, sizes.timed_frames // batch_size)
    rate = per_second(
        lambda _: models[device].estimate(frames, boxes, cameras, options),
        list(range(calls)),
        device,
        warm=12,
    )  # TorchScript re-optimizes early
    return {"frames_per_s": {"pose_standin": rate * batch_size}, "checks": checks,
            "resolution": f"{width}x{height}, 3 boxes, batch {batch_size}",
            "precision": "fp16" if models[device].half else "float32"}  # fmt: skip


def check_interpolation(device: str, sizes: Sizes) -> dict:
    from services.interpolation.ifnet import IFNet
    from services.interpolation.rife import RifeInterpolator

    network = seeded(IFNet)
    fps, checks = {}, {}
    interpolators = {d: RifeInterpolator(copy.deepcopy(network), d, []) for d in ("cpu", device)}
    for height, width in sizes.interpolation:
        frames = scene_frames(2, height, width)
        middles = [interpolators[d].middles_rgb(frames[:1], frames[1:], 0.0)
                   for d in ("cpu", device)]  # fmt: skip
        mean, p99 = level_differences(*middles)
        checks[f"{height}p_mean_levels"] = check(mean, RIFE_MEAN_LEVELS)
        checks[f"{height}p_p99_levels"] = check(p99, RIFE_P99_LEVELS)
        batch = interpolators[device].batch_size
        firsts, seconds = np.repeat(frames[:1], batch, 0), np.repeat(frames[1:], batch, 0)
        calls = max(1, sizes.timed_frames // batch)
        rate = per_second(lambda _, f=firsts, s=seconds: interpolators[device].middles_rgb(f, s, 0),
                          list(range(calls)), device, sizes.warm_calls)  # fmt: skip
        fps[f"interpolation_{height}p_middle_frames"] = rate * batch
    return {"frames_per_s": fps, "checks": checks,
            "precision": "fp16" if interpolators[device].fp16 else "float32"}  # fmt: skip


def depth_anything_small_metric():
    """Depth Anything V2 Small's architecture with the metric head (the registry's
    depth-anything-metric: DINOv2 ViT-S/14 backbone, DPT neck), random weights."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                            intermediate_size=1536, patch_size=14, image_size=518,
                            out_indices=[3, 6, 9, 12], reshape_hidden_states=False)  # fmt: skip
    config = DepthAnythingConfig(backbone_config=backbone, depth_estimation_type="metric",
                                 max_depth=20, neck_hidden_sizes=[48, 96, 192, 384],
                                 fusion_hidden_size=64, head_hidden_size=32,
                                 reassemble_hidden_size=384)  # fmt: skip
    return DepthAnythingForDepthEstimation(config)


def check_depth(device: str, sizes: Sizes) -> dict:
    from services.slam.depth_model import TransformersMetricDepth

    scale = math.sqrt(sizes.slam_pixels / (sizes.video[0] * sizes.video[1]))
    height, width = (int(d * scale) // 8 * 8 for d in sizes.video)
    frames = scene_frames(max(sizes.compare_frames, sizes.timed_frames), height, width)
    network = seeded(depth_anything_small_metric)
    models = {d: TransformersMetricDepth(copy.deepcopy(network), d, sizes.depth_short_side)
              for d in ("cpu", device)}  # fmt: skip
    depths = [np.stack([models[d].predict(f) for f in frames[: sizes.compare_frames]])
              for d in ("cpu", device)]  # fmt: skip
    checks = {"depth_relative_difference": check(relative_difference(*depths), FP32_REL)}
    rate = per_second(
        models[device].predict, list(frames[: sizes.timed_frames]), device, sizes.warm_calls
    )
    return {"frames_per_s": {"slam_depth_model": rate}, "checks": checks,
            "resolution": f"{width}x{height} (network short side {sizes.depth_short_side})",
            "precision": "float32"}  # fmt: skip


def sphere_mesh(rings: int = 83) -> tuple[np.ndarray, np.ndarray]:
    """A latitude-longitude sphere of radius 400 mm, 3 m ahead: (V, 6) positions and normals,
    (F, 3) faces; 83 rings give 6889 vertices, about SMPL's 6890."""
    theta, phi = np.meshgrid(
        np.linspace(0.05, np.pi - 0.05, rings),
        np.linspace(0, 2 * np.pi, rings, endpoint=False),
        indexing="ij",
    )
    normals = np.stack([np.sin(theta) * np.cos(phi), np.cos(theta),
                        np.sin(theta) * np.sin(phi)], -1).reshape(-1, 3)  # fmt: skip
    positions = normals * [300.0, 450.0, 300.0] + [50.0, -30.0, 3000.0]
    i, j = np.meshgrid(np.arange(rings - 1), np.arange(rings), indexing="ij")
    a, b = i * rings + j, i * rings + (j + 1) % rings
    c, d = a + rings, b + rings
    faces = np.concatenate([np.stack([a, b, d], -1), np.stack([a, d, c], -1)]).reshape(-1, 3)
    return np.concatenate([positions, normals], 1).astype(np.float32), faces.astype(np.int32)


def projected_silhouette(
    positions: np.ndarray, faces: np.ndarray, k: np.ndarray, width: int, height: int
) -> np.ndarray:
    """Pixels more than half covered by the projected triangles (camera at the origin)."""
    import cv2

    uv = positions[:, :2] / positions[:, 2:] @ k[:2, :2].T + k[:2, 2]
    fine = 4
    mask = np.zeros((height * fine, width * fine), np.uint8)
    fixed = np.round((fine * (uv + 0.5) - 0.5) * 256).astype(np.int32)
    for triangle in fixed[faces]:
        cv2.fillConvexPoly(mask, triangle, 255, lineType=cv2.LINE_8, shift=8)
    return cv2.resize(mask, (width, height), interpolation=cv2.INTER_AREA) > 127


def check_render(device: str, sizes: Sizes) -> dict:
    from services.common.errors import ModelNotReady
    from services.common.formats.cameras import CameraTrack, intrinsics_from_fov
    from services.render.gl import gl_context, renderer_info
    from services.render.scene import Scene
    from services.render.views import CameraView

    try:
        info = renderer_info()
    except ModelNotReady as e:
        raise StageSkipped(str(e)) from None
    if device.startswith("cuda") and info.is_software:
        raise StageSkipped(f"EGL gives a software renderer ({info.identity}), not the NVIDIA "
                           "driver; see the header of benchmarks/gpu_check.sh")  # fmt: skip
    height, width = sizes.video
    k = intrinsics_from_fov(55.0, width, height)
    camera = CameraTrack(k[None], np.eye(3)[None], np.zeros((1, 3)), np.zeros((1, 5)),
                         np.array([0.0, -1.0, 0.0]), (width, height))  # fmt: skip
    mesh, faces = sphere_mesh()
    with gl_context() as ctx:
        scene = Scene(ctx, faces, len(mesh))
        view = CameraView(scene, camera, width, height, opacity=1.0)
        scene.upload_meshes({0: mesh})
        coverage = view.overlay(0)[..., 3] > 127

        def frame(_) -> None:
            scene.upload_meshes({0: mesh})
            view.overlay(0)

        rate = per_second(frame, list(range(sizes.timed_frames)), "cpu", sizes.warm_calls)
    truth = projected_silhouette(mesh[:, :3], faces, k, width, height)
    return {"frames_per_s": {"render_camera_view": rate},
            "checks": {"silhouette_iou": check(mask_iou(coverage, truth), RENDER_IOU, False)},
            "renderer": info.identity, "resolution": f"{width}x{height}"}  # fmt: skip


CHECKS: dict[str, Callable[[str, Sizes], dict]] = {
    "tracking": check_tracking,
    "semseg": check_semseg,
    "pose": check_pose,
    "interpolation": check_interpolation,
    "depth": check_depth,
    "render": check_render,
}


# -- driver ----------------------------------------------------------------------------------


def run_stage(name: str, device: str, sizes: Sizes) -> dict:
    """One stage's result; a missing package or StageSkipped skips it, other errors fail it."""
    start = time.perf_counter()
    try:
        result = CHECKS[name](device, sizes)
    except StageSkipped as e:
        result = {"skipped": str(e)}
    except ModuleNotFoundError as e:
        result = {"skipped": f"missing Python package {e.name!r} (see the header of "
                             "benchmarks/gpu_check.sh: --fetch)"}  # fmt: skip
    except Exception as e:  # noqa: BLE001 - reported in the JSON line, the other stages go on
        traceback.print_exc()
        result = {"error": f"{type(e).__name__}: {e}"}
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


def device_facts(device: str) -> dict:
    import torch

    facts = {"torch": torch.__version__, "cuda": torch.version.cuda,
             "cudnn_tf32": torch.backends.cudnn.allow_tf32,
             "matmul_tf32": torch.backends.cuda.matmul.allow_tf32}  # fmt: skip
    if device.startswith("cuda"):
        facts["device"] = torch.cuda.get_device_name(device)
    else:
        facts["device"] = "cpu"
    return facts


def summarize(results: dict[str, dict]) -> dict:
    """The JSON line's totals: frames/s of every stage, failed checks and errors."""
    rates, failed = {}, []
    for stage, result in results.items():
        rates.update({k: round(v, 2) for k, v in result.get("frames_per_s", {}).items()})
        failed += [f"{stage}.{name}" for name, c in result.get("checks", {}).items()
                   if not c["passed"]]  # fmt: skip
        if "error" in result:
            failed.append(f"{stage} (error)")
    checked = sum(len(r.get("checks", {})) for r in results.values())
    return {"frames_per_s": rates, "checks_run": checked, "failed": failed,
            "skipped": {s: r["skipped"] for s, r in results.items() if "skipped" in r},
            "checks_passed": not failed and checked > 0}  # fmt: skip


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="small resolutions, few frames")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="stages not started by then are skipped")  # fmt: skip
    parser.add_argument("--stages", default=",".join(STAGES))
    args = parser.parse_args(None if argv is None else list(argv))
    stages = [s for s in args.stages.split(",") if s]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        parser.error(f"unknown stages {unknown}; choose from {', '.join(STAGES)}")
    try:
        import torch
    except ImportError:
        print(json.dumps({"skipped": "torch is not installed"}))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device", "torch": torch.__version__}))
        return 0
    from services.common.threads import usable_cores

    sizes = QUICK if args.quick else FULL
    # The CPU references are the slow part: all cores (the services' CPU default keeps one
    # free for their decoder and writer, which do not run here).
    torch.set_num_threads(sizes.torch_threads or usable_cores())
    start = time.perf_counter()
    results = {}
    for stage in stages:
        if time.perf_counter() - start > args.budget_s:
            results[stage] = {"skipped": f"time budget of {args.budget_s:g} s spent"}
            continue
        results[stage] = run_stage(stage, args.device, sizes)
        print(f"{stage}: {json.dumps(results[stage])}", file=sys.stderr, flush=True)
    summary = {**device_facts(args.device), "quick": args.quick,
               "load_average_1m": round(os.getloadavg()[0], 2),
               "seconds": round(time.perf_counter() - start, 1), **summarize(results),
               "stages": results}  # fmt: skip
    print(json.dumps(summary))
    return 0 if summary["checks_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
