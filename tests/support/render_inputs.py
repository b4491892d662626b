"""Inputs of the render stage with known truth: the fitting stage's outputs (fits, ground,
display and viewer cameras) for people walking in a synthetic scene, and a matching video
(optionally with an audio track)."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from services.common.formats import fits as fits_format
from services.common.formats import ground as ground_format
from services.fitting.viewer_camera import viewer_trajectory
from tests.support.scenes import Scene, make_scene


@dataclass
class RenderFiles:
    scene: Scene
    video: Path
    fits: Path
    ground: Path
    display_cameras: Path
    viewer_cameras: Path
    invalid: dict[int, np.ndarray]  # track id -> output frames where the track is invalid


def write_video(
    path: Path,
    num_frames: int,
    width: int,
    height: int,
    fps: float,
    audio: bool = False,
    seed: int = 0,
) -> Path:
    """An H.264 yuv420p mp4 of slowly moving dark texture; with `audio`, a 440 Hz AAC tone
    lasting as long as the video."""
    rng = np.random.default_rng(seed)
    base = rng.integers(20, 70, (height // 16 + 2, width // 16 + 2, 3)).astype(np.uint8)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23"}
        sound = None
        if audio:
            sound = container.add_stream("aac", rate=48000)
            sound.layout = "mono"
        for t in range(num_frames):
            tile = np.roll(base, t // 4, axis=1)
            img = np.kron(tile, np.ones((16, 16, 1), np.uint8))[:height, :width]
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode())
        if sound is not None:
            samples = int(48000 * num_frames / fps)
            tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(samples) / 48000)).astype(np.float32)
            for start in range(0, samples, 1024):
                chunk = tone[start : start + 1024][None]
                frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
                frame.sample_rate = 48000
                frame.pts = start
                container.mux(sound.encode(frame))
            container.mux(sound.encode())
    return path


def write_render_inputs(
    folder: Path,
    body_model,
    *,
    num_frames: int = 24,
    width: int = 320,
    height: int = 180,
    fps: float = 30.0,
    num_people: int = 2,
    invalid: dict[int, slice] | None = None,
    audio: bool = False,
    video_frame_repeat: int = 1,
    seed: int = 0,
) -> RenderFiles:
    """Fitting-stage outputs for `num_frames` output frames and a video of
    num_frames / video_frame_repeat frames; `invalid` marks frames of a track as invalid (NaN,
    as the fitting stage writes them)."""
    folder.mkdir(parents=True, exist_ok=True)
    scene = make_scene(
        body_model,
        num_frames=num_frames,
        fps=fps,
        num_people=num_people,
        image_size=(width, height),
        seed=seed,
    )
    invalid_frames = {}
    tracks = []
    for person in scene.people:
        valid = np.ones(num_frames, bool)
        if invalid and person.track_id in invalid:
            valid[invalid[person.track_id]] = False
        invalid_frames[person.track_id] = np.flatnonzero(~valid)
        nan = np.where(valid[:, None], 1.0, np.nan)
        tracks.append(
            fits_format.TrackFits(
                person.track_id,
                (person.pose * nan).astype(np.float32),
                (person.trans * nan).astype(np.float32),
                person.betas[None].astype(np.float32),
                np.array([[0, num_frames]], np.int64),
                np.where(valid, 1.0, np.nan).astype(np.float32),
                valid,
            )
        )
    files = RenderFiles(
        scene,
        folder / "video.mp4",
        folder / "fits.npz",
        folder / "ground.json",
        folder / "display_cameras.npz",
        folder / "viewer_cameras.npz",
        invalid_frames,
    )
    fits_format.save_fits(
        files.fits,
        tracks,
        {
            "fps": fps,
            "fps_factor": video_frame_repeat,
            "num_frames": num_frames,
            "body_model": "smpl",
            "gender": "neutral",
            "units": {"trans": "m", "pose_rotvecs": "rad"},
        },
    )
    ground_format.save_ground(files.ground, scene.up, scene.ground_height_mm, 100, 100, True)
    scene.cameras.save(files.display_cameras)
    people = np.stack([p.trans * 1000 for p in scene.people], axis=1)
    viewer_trajectory(scene.cameras, people, fps, scene.up, start_s=0.2, ease_s=0.4).save(
        files.viewer_cameras
    )
    write_video(
        files.video,
        num_frames // video_frame_repeat,
        width,
        height,
        fps / video_frame_repeat,
        audio=audio,
        seed=seed,
    )
    return files
