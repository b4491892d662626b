"""Helpers of the slam tests: a generated moving-camera video with its masks, the slam
computation run on it, and evo's trajectory metrics against the truth."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from evo.core import geometry
from scipy.spatial.transform import Rotation

from services.common.formats.cameras import CameraTrack
from services.common.stagerun import StageOutputs, StageRun
from tests.support.world import MovingCameraTruth, make_moving_camera_video, write_truth_masks


@dataclass
class Scene:
    video: Path
    track_masks: Path
    truth: MovingCameraTruth


def make_scene(folder: Path, **video_args) -> Scene:
    """Renders a moving-camera video and writes its true figure masks as track masks."""
    folder.mkdir(parents=True, exist_ok=True)
    video = folder / "video.mp4"
    truth = make_moving_camera_video(video, keep_masks=True, **video_args)
    masks = folder / "track_masks.jsonl.zst"
    write_truth_masks(masks, truth, short_side=min(truth.cameras.image_size))
    return Scene(video, masks, truth)


def stage_run(folder: Path, inputs: dict[str, Path]) -> StageRun:
    folder.mkdir(parents=True, exist_ok=True)
    return StageRun(folder, inputs, {}, None, None)


@dataclass
class TrajectoryError:
    ate_pct_of_path: float  # RMSE after Sim(3) alignment, % of the true path length
    rotation_median_deg: float
    scale: float  # Sim(3) scale from the estimate to the truth


def trajectory_error(estimate: CameraTrack, truth: CameraTrack) -> TrajectoryError:
    """ATE (evo's Umeyama Sim(3) alignment of the camera centres) and per-frame rotation
    error after the alignment's rotation."""
    est = estimate.optical_center.T / 1000
    gt = truth.optical_center.T / 1000
    rotation, translation, scale = geometry.umeyama_alignment(est, gt, True)
    aligned = scale * rotation @ est + translation[:, None]
    rmse = float(np.sqrt((np.linalg.norm(aligned - gt, axis=0) ** 2).mean()))
    path = float(np.linalg.norm(np.diff(gt, axis=1), axis=0).sum())
    # rotations relative to each trajectory's first camera (independent of the alignment)
    est_rel = estimate.rotation @ estimate.rotation[0].T
    gt_rel = truth.rotation @ truth.rotation[0].T
    errors = [
        Rotation.from_matrix(a @ b.T).magnitude() for a, b in zip(est_rel, gt_rel, strict=True)
    ]
    return TrajectoryError(100 * rmse / path, float(np.degrees(np.median(errors))), float(scale))


def cameras_of(outputs: StageOutputs) -> CameraTrack:
    return CameraTrack.load(outputs.files["cameras"].path)
