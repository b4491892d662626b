"""The pose stage's algorithm with the NLF stand-in: exact geometry, ids, batching, bad input."""

import numpy as np
import pytest
import torch
from rlemasklib import RLEMask
from scipy.spatial.transform import Rotation

from services.common.errors import ModelNotReady, PreconditionFailed
from services.common.formats.cameras import CameraTrack, intrinsics_from_fov
from services.common.formats.masks import write_track_masks
from services.common.formats.predictions import PredictionsReader, read_tracks
from services.pose.inference import PoseJob, estimate_video
from services.pose.nlf import InferenceOptions, NlfModel, load_torchscript, torchscript_api
from tests.support.fake_nlf import (
    BODY_HEIGHT_MM,
    UNCERTAINTY_SCALE,
    canonical_points,
    make_fake_nlf,
)
from tests.support.videos import make_test_video

W, H = 320, 240  # video
MW, MH = 160, 120  # masks at half resolution
V, J = 40, 24
FRAMES = 11

# Per frame: track id -> mask rectangle (x0, y0, x1, y1) in mask pixels. Track 5 appears late and
# leaves early, frame 6 has nobody, track 3 has a 1-pixel mask in frame 2 and touches the edges.
PRESENCE = {
    0: {1: (10, 20, 40, 100), 3: (100, 30, 130, 110)},
    1: {1: (12, 20, 42, 100), 3: (100, 30, 130, 110)},
    2: {1: (14, 22, 44, 101), 3: (150, 60, 151, 61)},
    3: {1: (16, 22, 46, 101), 3: (0, 0, 20, 120), 5: (60, 40, 90, 119)},
    4: {1: (18, 20, 48, 100), 5: (62, 40, 92, 119)},
    5: {5: (64, 40, 94, 119)},
    6: {},
    7: {1: (20, 20, 50, 100), 3: (140, 0, 160, 120)},
    8: {1: (22, 20, 52, 100), 3: (140, 10, 160, 110)},
    9: {1: (24, 20, 54, 100)},
    10: {1: (26, 20, 56, 100), 3: (120, 30, 150, 110)},
}


def _mask(rect) -> RLEMask:
    x0, y0, x1, y1 = rect
    a = np.zeros((MH, MW), np.uint8)
    a[y0:y1, x0:x1] = 1
    return RLEMask.from_array(a)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "v.mp4"
    make_test_video(path, seconds=FRAMES / 10, width=W, height=H, fps=10, figures=1)
    return path


@pytest.fixture(scope="module")
def masks(tmp_path_factory):
    path = tmp_path_factory.mktemp("masks") / "masks.jsonl.zst"
    frames = [{t: _mask(r) for t, r in PRESENCE[i].items()} for i in range(FRAMES)]
    write_track_masks(path, frames, MH, MW)
    return path


@pytest.fixture
def model():
    verts, joints = canonical_points(V, J)
    return NlfModel(make_fake_nlf(), np.concatenate([verts, joints]), V, "cpu")


def _expected_points(box, k, rotation=None, center=None):
    """The stand-in's known output for a box (x, y, w, h) and a camera, in world mm."""
    rotation = np.eye(3) if rotation is None else rotation
    center = np.zeros(3) if center is None else center
    verts, joints = canonical_points(V, J)
    template = np.concatenate([verts, joints]).astype(np.float64) * 1000
    depth = k[1, 1] * BODY_HEIGHT_MM / box[3]
    cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
    anchor = np.array([(cx - k[0, 2]) / k[0, 0] * depth, (cy - k[1, 2]) / k[1, 1] * depth, depth])
    return (anchor + template) @ rotation + center


def _box_of(rect):
    x0, y0, x1, y1 = rect
    return np.array([x0 * 2, y0 * 2, (x1 - x0) * 2, (y1 - y0) * 2], np.float64)


def test_tracks_boxes_static_camera_and_batching(tmp_path, video, masks, model):
    out = tmp_path / "p.bcz"
    options = InferenceOptions(num_aug=3, antialias_factor=1, internal_batch_size=16)
    summary = estimate_video(model, PoseJob(video=video, output=out, masks=masks, batch_size=4,
                                            options=options, model_info={"name": "fake"}))
    k = intrinsics_from_fov(55.0, W, H)
    frames = list(PredictionsReader(out))
    assert [f.frame_index for f in frames] == list(range(FRAMES))
    for f in frames:
        want = PRESENCE[f.frame_index]
        assert f.track_ids.tolist() == sorted(want)
        for row, track_id in enumerate(f.track_ids):
            box = _box_of(want[track_id])
            np.testing.assert_allclose(f.boxes[row], box)
            points = _expected_points(box, k)
            np.testing.assert_allclose(f.vertices[row], points[:V], atol=0.3)
            np.testing.assert_allclose(f.joints[row], points[V:], atol=0.3)
            np.testing.assert_allclose(f.vertex_uncertainties[row], UNCERTAINTY_SCALE / box[3],
                                       atol=3e-4)
        np.testing.assert_allclose(f.camera.intrinsic_matrix, k)
        np.testing.assert_allclose(f.camera.rot_world_to_cam, np.eye(3), atol=1e-12)
    # Batches of 4 frames; frame 6 (nobody) is written without being sent to the model.
    assert model.module.batch_sizes == [4, 3, 3]
    assert model.module.last_options == {"num_aug": 3.0, "antialias_factor": 1.0,
                                         "internal_batch_size": 16.0}
    assert summary.frames == FRAMES
    assert summary.person_frames == sum(len(p) for p in PRESENCE.values()) == 19
    assert summary.tracks == 3 and summary.model_calls == 3
    per_track = read_tracks(out)
    assert per_track.tracks[5].frame_indices.tolist() == [3, 4, 5]
    assert per_track.tracks[3].frame_indices.tolist() == [0, 1, 2, 3, 7, 8, 10]
    meta = per_track.metadata
    assert meta["mode"] == "masks" and meta["track_ids"] == [1, 3, 5]
    # What was used, and only that: no detector options in masks mode.
    assert meta["params"] == {"batch_size": 4, "num_aug": 3, "antialias_factor": 1,
                              "internal_batch_size": 16}
    assert meta["cameras"]["source"] == "static" and meta["cameras"]["fov_degrees"] == 55.0
    assert meta["model"] == {"name": "fake"}
    assert meta["video"] == {"width": W, "height": H, "fps": 10.0}


def test_moving_camera_gives_world_coordinates(tmp_path, video, masks, model):
    angles = np.linspace(0, 30, FRAMES)[:, None]
    rotations = Rotation.from_euler("y", angles, degrees=True).as_matrix()
    centers = np.stack([np.linspace(0, 2000, FRAMES), np.full(FRAMES, -100.0),
                        np.linspace(0, 500, FRAMES)], axis=1)
    k_cam = np.array([[500.0, 0, 319.5], [0, 510.0, 239.5], [0, 0, 1]])  # for 640x480
    track = CameraTrack(np.repeat(k_cam[None], FRAMES, 0), rotations, centers,
                        np.zeros((FRAMES, 5)), np.array([0.0, -1, 0]), (2 * W, 2 * H))
    cameras = tmp_path / "cams.npz"
    track.save(cameras)
    out = tmp_path / "p.bcz"
    estimate_video(model, PoseJob(video=video, output=out, masks=masks, cameras=cameras,
                                  batch_size=3))
    k = np.array([[250.0, 0, 159.5], [0, 255.0, 119.5], [0, 0, 1]])  # scaled to 320x240
    for f in PredictionsReader(out):
        i = f.frame_index
        np.testing.assert_allclose(f.camera.intrinsic_matrix, k)
        np.testing.assert_allclose(f.camera.rot_world_to_cam, rotations[i], atol=1e-9)
        np.testing.assert_allclose(f.camera.optical_center, centers[i])
        for row, track_id in enumerate(f.track_ids):
            points = _expected_points(_box_of(PRESENCE[i][track_id]), k, rotations[i], centers[i])
            np.testing.assert_allclose(f.vertices[row], points[:V], atol=0.3)
    assert model.module.batch_sizes == [3, 3, 2, 2]
    cameras_meta = PredictionsReader(out).metadata["cameras"]
    assert cameras_meta["source"] == "cameras" and "fov_degrees" not in cameras_meta
    out_k = tmp_path / "pk.bcz"
    estimate_video(model, PoseJob(video=video, output=out_k, masks=masks, intrinsics=k))
    static_meta = PredictionsReader(out_k).metadata["cameras"]
    assert static_meta["source"] == "static" and "fov_degrees" not in static_meta
    np.testing.assert_allclose(static_meta["intrinsic_matrix"], k)


def test_detector_mode_applies_thresholds_and_marks_detections_untracked(tmp_path, video,
                                                                         model):
    out = tmp_path / "p.bcz"
    estimate_video(model, PoseJob(video=video, output=out, batch_size=8))
    frames = list(PredictionsReader(out))
    assert len(frames) == FRAMES
    assert all(f.track_ids.tolist() == [-1] for f in frames)  # score 0.1 < 0.15 is dropped
    np.testing.assert_allclose(frames[0].boxes, [[100, 50, 80, 200]])
    np.testing.assert_allclose(frames[0].box_scores, [0.9])
    assert model.module.batch_sizes == [8, 3]
    params = PredictionsReader(out).metadata["params"]
    assert params["detector_threshold"] == 0.15 and params["max_detections"] == -1
    out2 = tmp_path / "p2.bcz"
    estimate_video(model, PoseJob(video=video, output=out2, batch_size=8,
                                  options=InferenceOptions(detector_threshold=0.05)))
    assert list(PredictionsReader(out2))[5].box_scores.tolist() == pytest.approx([0.9, 0.1])
    out3 = tmp_path / "p3.bcz"
    estimate_video(model, PoseJob(video=video, output=out3, batch_size=8,
                                  options=InferenceOptions(detector_threshold=0.05,
                                                           max_detections=1)))
    assert list(PredictionsReader(out3))[5].num_people == 1


def test_masks_of_another_length_or_shape_are_refused(tmp_path, video, model):
    short = tmp_path / "short.jsonl.zst"
    write_track_masks(short, [{1: _mask((1, 1, 5, 5))}] * (FRAMES - 1), MH, MW)
    with pytest.raises(PreconditionFailed, match="10 frames of masks for a video of 11"):
        estimate_video(model, PoseJob(video=video, output=tmp_path / "p.bcz", masks=short))
    square = tmp_path / "square.jsonl.zst"
    write_track_masks(square, [{}] * FRAMES, 100, 100)
    with pytest.raises(PreconditionFailed, match="aspect ratio"):
        estimate_video(model, PoseJob(video=video, output=tmp_path / "p.bcz", masks=square))
    assert list(tmp_path.glob("p.bcz*")) == []


def test_camera_list_of_wrong_length_is_refused(tmp_path, video, masks, model):
    cameras = tmp_path / "cams.npz"
    CameraTrack.static(FRAMES + 2, W, H).save(cameras)
    with pytest.raises(PreconditionFailed, match="13 cameras for a video of 11 frames"):
        estimate_video(model, PoseJob(video=video, output=tmp_path / "p.bcz", masks=masks,
                                      cameras=cameras))
    assert list(tmp_path.glob("p.bcz*")) == []


def test_model_files_that_are_not_nlf_torchscript_are_refused(tmp_path):
    junk = tmp_path / "junk.torchscript"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelNotReady, match="not a TorchScript file"):
        load_torchscript(junk, "cpu")

    class OnlyForward(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    other = tmp_path / "other.torchscript"
    with torchscript_api():
        torch.jit.script(OnlyForward()).save(str(other))
    with pytest.raises(ModelNotReady, match="lacks the NLF method get_weights_for_canonical"):
        load_torchscript(other, "cpu")
    fake = tmp_path / "fake.torchscript"
    make_fake_nlf().save(str(fake))
    assert hasattr(load_torchscript(fake, "cpu"), "estimate_poses_batched")
