"""Synthetic scenes with known truth for the fitting stage.

People walk on circles on a tilted ground plane (their lower foot joint touches the plane in
every frame) in front of a slowly moving camera. `predictions_for` turns the truth into
NLF-like predictions (mm, world frame) with optional noise: Gaussian noise per point (its level
may vary smoothly over time, with the uncertainties scaled to match), outlier frames shifted by a
fixed distance, and per-frame scale jitter about the camera centre.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from services.common.formats.cameras import CameraTrack, intrinsics_from_fov
from services.common.formats.predictions import FrameCamera, PredictionFrame, PredictionsWriter

WORLD_UP = np.array([0.0, -1.0, 0.0])


@dataclass
class Person:
    track_id: int
    betas: np.ndarray  # (10,)
    pose: np.ndarray  # (T, 72) rad
    trans: np.ndarray  # (T, 3) m
    present: np.ndarray  # (T,) bool


@dataclass
class Scene:
    fps: float
    cameras: CameraTrack
    up: np.ndarray  # true ground normal (unit, pointing up)
    # Height along `up` of the plane the lower foot joint touches (the foot-joint plane of the
    # ground file; the floor under the soles is the body model's sole offset lower).
    ground_height_mm: float
    people: list[Person] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return len(self.cameras)


def _walk_pose(t: np.ndarray, phase: float, amp: float, heading_rot: np.ndarray) -> np.ndarray:
    """(T, 72) SMPL rotation vectors of a walking person; heading_rot (T, 3, 3) maps SMPL's
    canonical axes (y up, z forward) to the world."""
    n = len(t)
    phi = 2 * np.pi * 0.9 * t + phase
    rv = np.zeros((n, 24, 3))
    rv[:, 1, 0] = -amp * 0.5 * np.sin(phi)
    rv[:, 2, 0] = amp * 0.5 * np.sin(phi)
    rv[:, 4, 0] = 0.15 + amp * 0.35 * (1 + np.sin(phi + np.pi / 2))
    rv[:, 5, 0] = 0.15 + amp * 0.35 * (1 - np.sin(phi + np.pi / 2))
    rv[:, 7, 0] = -0.1 * np.sin(phi)
    rv[:, 8, 0] = 0.1 * np.sin(phi)
    rv[:, 3, 1] = 0.08 * np.sin(phi)
    rv[:, 6, 1] = 0.05 * np.sin(phi)
    rv[:, 15, 0] = 0.1 * np.sin(0.3 * phi)
    for side, joint in ((1, 16), (-1, 17)):
        lower = Rotation.from_rotvec(np.array([0, 0, -side * 1.2]))
        swing = Rotation.from_rotvec(np.outer(side * amp * 0.4 * np.sin(phi), [1, 0, 0]))
        rv[:, joint] = (swing * lower).as_rotvec()
    rv[:, 18, 1] = 0.4
    rv[:, 19, 1] = -0.4
    rv[:, 0] = Rotation.from_matrix(heading_rot).as_rotvec()
    return rv.reshape(n, 72)


def make_scene(
    body_model,
    num_frames: int = 150,
    fps: float = 30.0,
    num_people: int = 3,
    tilt_degrees: float = 8.0,
    image_size: tuple[int, int] = (1280, 720),
    seed: int = 0,
) -> Scene:
    """People walking on circles on a tilted plane, 5-6 m in front of a moving camera."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_frames) / fps
    tilt = Rotation.from_rotvec(np.radians(tilt_degrees) * np.array([0.6, 0.0, 0.8]))
    up = tilt.apply(WORLD_UP)
    e1 = np.cross(up, [0.0, 0.0, 1.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(e1, up)
    centre = np.array([0.0, 0.0, 5.5])
    origin = centre - up * (1.5 + np.dot(centre, up))  # plane 1.5 m below the camera at origin

    people = []
    for k in range(num_people):
        radius = rng.uniform(1.2, 2.2)
        speed = rng.uniform(0.9, 1.3) * rng.choice([-1, 1])
        angle0 = 2 * np.pi * k / num_people + rng.uniform(-0.3, 0.3)
        angle = angle0 + speed / radius * t
        offset = rng.uniform(-0.6, 0.6, 2)
        a = offset[0] + radius * np.cos(angle)
        b = offset[1] + radius * np.sin(angle)
        heading = np.sign(speed) * (-np.sin(angle)[:, None] * e1 + np.cos(angle)[:, None] * e2)
        y_axis = np.broadcast_to(up, heading.shape)
        x_axis = np.cross(y_axis, heading)
        heading_rot = np.stack([x_axis, y_axis, heading], axis=-1)
        pose = _walk_pose(t, rng.uniform(0, 2 * np.pi), rng.uniform(0.8, 1.1), heading_rot)
        betas = rng.normal(0, 1, 10)
        with torch.no_grad():
            joints0 = body_model(
                torch.as_tensor(pose, dtype=torch.float32),
                torch.as_tensor(np.tile(betas, (num_frames, 1)), dtype=torch.float32),
                return_vertices=False,
            )["joints"].numpy()
        pelvis = joints0[:, 0]
        on_plane = origin + a[:, None] * e1 + b[:, None] * e2
        lift = -np.min(joints0[:, [10, 11]] @ up, axis=1)
        trans = on_plane - (pelvis - (pelvis @ up)[:, None] * up) + lift[:, None] * up
        people.append(
            Person(k + 1, betas, pose, trans, np.ones(num_frames, bool))
        )

    cam_pos = np.stack(
        [0.4 * np.sin(0.25 * t), -0.1 * np.sin(0.15 * t), 0.3 * np.sin(0.2 * t)], axis=1
    )
    look = centre + np.stack([0.3 * np.sin(0.1 * t), 0 * t, 0 * t], axis=1)
    z = look - cam_pos
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    x = np.cross(z, WORLD_UP)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.cross(z, x)
    width, height = image_size
    cameras = CameraTrack(
        intrinsics=np.repeat(intrinsics_from_fov(55.0, width, height)[None], num_frames, 0),
        rotation=np.stack([x, y, z], axis=1),
        optical_center=cam_pos * 1000,
        distortion=np.zeros((num_frames, 5)),
        world_up=WORLD_UP.copy(),
        image_size=(width, height),
    )
    return Scene(fps, cameras, up, float(origin @ up * 1000), people)


def truth(body_model, person: Person, frames=None) -> dict[str, np.ndarray]:
    """True vertices and joints (m) of a person at `frames` (default: all)."""
    frames = np.arange(len(person.pose)) if frames is None else np.asarray(frames)
    with torch.no_grad():
        out = body_model(
            torch.as_tensor(person.pose[frames], dtype=torch.float32),
            torch.as_tensor(np.tile(person.betas, (len(frames), 1)), dtype=torch.float32),
            torch.as_tensor(person.trans[frames], dtype=torch.float32),
        )
    return {"vertices": out["vertices"].numpy(), "joints": out["joints"].numpy()}


@dataclass
class Noise:
    point_sigma_mm: float = 0.0
    outlier_fraction: float = 0.0
    outlier_mm: float = 500.0
    scale_jitter: float = 0.0  # per-frame scale uniform in [1 - s, 1 + s] about the camera
    # The point noise and the uncertainties are multiplied by a level that swings smoothly
    # between these bounds with this period (a constant 1 by default).
    level_range: tuple[float, float] = (1.0, 1.0)
    level_period_s: float = 4.0

    def levels(self, frames: np.ndarray, fps: float) -> np.ndarray:
        """The noise level multiplier at each of `frames`."""
        low, high = self.level_range
        phase = 2 * np.pi * np.asarray(frames) / (fps * self.level_period_s)
        return low + (high - low) * 0.5 * (1 - np.cos(phase))


def predictions_for(
    body_model, scene: Scene, person: Person, noise: Noise | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """NLF-like per-frame predictions of one person over the frames where it is present:
    frame_indices (n,), vertices (n, 6890, 3) mm, joints (n, 24, 3) mm, uncertainties (m), and
    the truth of the noise: scale_jitter (n,) (the factor applied about the camera centre),
    noise_level (n,) and outlier (n,) (the frames shifted by `outlier_mm`)."""
    noise = noise or Noise()
    rng = np.random.default_rng(seed)
    frames = np.flatnonzero(person.present)
    gt = truth(body_model, person, frames)
    verts = gt["vertices"] * 1000
    joints = gt["joints"] * 1000
    n = len(frames)
    level = noise.levels(frames, scene.fps)
    s = np.ones(n)
    if noise.scale_jitter:
        centres = scene.cameras.optical_center[frames][:, None]
        s = rng.uniform(1 - noise.scale_jitter, 1 + noise.scale_jitter, n)
        verts = centres + s[:, None, None] * (verts - centres)
        joints = centres + s[:, None, None] * (joints - centres)
    if noise.point_sigma_mm:
        sigma = noise.point_sigma_mm * level[:, None, None]
        verts = verts + sigma * rng.normal(0, 1, verts.shape)
        joints = joints + sigma * rng.normal(0, 1, joints.shape)
    bad = np.zeros(n, bool)
    if noise.outlier_fraction:
        bad = rng.random(n) < noise.outlier_fraction
        direction = rng.normal(size=(n, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        shift = np.where(bad[:, None], direction * noise.outlier_mm, 0)[:, None]
        verts = verts + shift
        joints = joints + shift
    vert_unc = (0.05 + 0.02 * rng.random(verts.shape[:2])) * level[:, None]
    joint_unc = (0.04 + 0.02 * rng.random(joints.shape[:2])) * level[:, None]
    return {
        "frame_indices": frames,
        "vertices": verts.astype(np.float32),
        "joints": joints.astype(np.float32),
        "vertex_uncertainties": vert_unc.astype(np.float32),
        "joint_uncertainties": joint_unc.astype(np.float32),
        "scale_jitter": s,
        "noise_level": level,
        "outlier": bad,
    }


def write_predictions(
    path: Path, cameras: CameraTrack, per_track: dict[int, dict[str, np.ndarray]], num_frames: int
) -> None:
    """A predictions file of `per_track` (track id -> `predictions_for(...)` dict) seen by
    `cameras`; a frame where no track is present gets an empty record."""
    row_of = {
        tid: {int(t): i for i, t in enumerate(p["frame_indices"])} for tid, p in per_track.items()
    }
    with PredictionsWriter(path, num_frames=num_frames, num_vertices=6890, num_joints=24) as w:
        for t in range(num_frames):
            rows = [(tid, row_of[tid][t]) for tid in per_track if t in row_of[tid]]
            w.append(_prediction_frame(t, rows, per_track, cameras))


def _prediction_frame(
    t: int,
    rows: list[tuple[int, int]],
    per_track: dict[int, dict[str, np.ndarray]],
    cameras: CameraTrack,
) -> PredictionFrame:
    """Frame t's record of the (track id, row in that track's predictions) pairs `rows`."""

    def stack(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if not rows:
            return np.zeros((0, *shape), np.float32)
        return np.stack([per_track[tid][name][i] for tid, i in rows])

    return PredictionFrame(
        t,
        np.array([tid for tid, _ in rows], np.int64),
        np.tile(np.float32([10, 10, 50, 100]), (len(rows), 1)),
        np.ones(len(rows), np.float32),
        stack("vertices", (6890, 3)),
        stack("joints", (24, 3)),
        stack("vertex_uncertainties", (6890,)),
        stack("joint_uncertainties", (24,)),
        FrameCamera(cameras.intrinsics[t], cameras.rotation[t], cameras.optical_center[t]),
    )
