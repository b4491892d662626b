"""Round trip of the predictions format (services/common/formats/predictions.py)."""

import msgpack_numpy
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from services.common.errors import InvalidInput
from services.common.formats.predictions import (
    UNTRACKED,
    FrameCamera,
    PredictionFrame,
    PredictionsReader,
    PredictionsWriter,
    read_tracks,
)

V, J = 6890, 24


def _camera(i: int) -> FrameCamera:
    return FrameCamera(
        intrinsic_matrix=np.array([[1000.0 + i, 0, 640], [0, 1000.0 + i, 360], [0, 0, 1]]),
        rot_world_to_cam=Rotation.from_rotvec([0, 0.01 * i, 0]).as_matrix(),
        optical_center=np.array([10.0 * i, -5.0, 2.0]),
        world_up=np.array([0.0, -1.0, 0.0]),
    )


def _frame(i: int, track_ids: list[int], rng: np.random.Generator, v: int = V) -> PredictionFrame:
    n = len(track_ids)
    return PredictionFrame(
        frame_index=i,
        track_ids=np.array(track_ids, np.int64),
        boxes=rng.uniform(0, 500, (n, 4)).astype(np.float32),
        box_scores=np.ones(n, np.float32),
        vertices=rng.uniform(-1000, 5000, (n, v, 3)).astype(np.float32),
        joints=rng.uniform(-1000, 5000, (n, J, 3)).astype(np.float32),
        vertex_uncertainties=rng.uniform(0.01, 0.3, (n, v)).astype(np.float32),
        joint_uncertainties=rng.uniform(0.01, 0.3, (n, J)).astype(np.float32),
        camera=_camera(i),
    )


def test_round_trip_keeps_track_ids_boxes_points_and_cameras(tmp_path):
    rng = np.random.default_rng(0)
    presence = [[0, 2], [], [2], [0, 1, 2]]  # frame 1 has nobody; track 1 appears late
    frames = [_frame(i, ids, rng) for i, ids in enumerate(presence)]
    path = tmp_path / "preds.bcz"
    with PredictionsWriter(path, num_frames=4, num_vertices=V, num_joints=J,
                           metadata={"model": {"name": "nlf-s"}}) as writer:
        for frame in frames:
            writer.append(frame)

    reader = PredictionsReader(path)
    assert len(reader) == 4
    assert reader.metadata["model"] == {"name": "nlf-s"}
    assert reader.metadata["units"] == {"points": "mm", "uncertainties": "m", "boxes": "px"}
    read = list(reader)
    assert [f.frame_index for f in read] == [0, 1, 2, 3]
    for want, got in zip(frames, read, strict=True):
        assert got.track_ids.tolist() == want.track_ids.tolist()
        np.testing.assert_array_equal(got.boxes, want.boxes)
        np.testing.assert_allclose(got.vertices, want.vertices, atol=0.25 + 1e-3)
        np.testing.assert_allclose(got.joints, want.joints, atol=0.25 + 1e-3)
        np.testing.assert_allclose(got.vertex_uncertainties, want.vertex_uncertainties, atol=3e-4)
        np.testing.assert_allclose(got.joint_uncertainties, want.joint_uncertainties, atol=3e-4)
        np.testing.assert_allclose(got.camera.intrinsic_matrix, want.camera.intrinsic_matrix)
        np.testing.assert_allclose(got.camera.rot_world_to_cam, want.camera.rot_world_to_cam,
                                   atol=1e-12)
        np.testing.assert_allclose(got.camera.optical_center, want.camera.optical_center)
    assert read[1].vertices.shape == (0, V, 3)

    per_track = read_tracks(path)
    assert per_track.num_frames == 4
    assert sorted(per_track.tracks) == [0, 1, 2]
    assert per_track.tracks[0].frame_indices.tolist() == [0, 3]
    assert per_track.tracks[1].frame_indices.tolist() == [3]
    assert per_track.tracks[2].frame_indices.tolist() == [0, 2, 3]
    np.testing.assert_allclose(per_track.tracks[2].joints[1], frames[2].joints[0], atol=0.26)
    np.testing.assert_array_equal(per_track.tracks[0].boxes[1], frames[3].boxes[0])
    assert per_track.cameras.optical_center[:, 0].tolist() == [0, 10, 20, 30]
    dense = per_track.tracks[1].dense(4)
    assert dense["valid"].tolist() == [False, False, False, True]
    assert np.isnan(dense["vertices"][:3]).all() and not np.isnan(dense["vertices"][3]).any()
    assert sorted(read_tracks(path, track_ids=[2]).tracks) == [2]


def test_a_vertex_subset_keeps_only_those_vertices_in_that_order(tmp_path):
    rng = np.random.default_rng(4)
    path = tmp_path / "preds.bcz"
    with PredictionsWriter(path, num_frames=2, num_vertices=V, num_joints=J) as writer:
        writer.append(_frame(0, [3, 5], rng))
        writer.append(_frame(1, [], rng))
    subset = np.array([6889, 0, 17, 4000, 17])
    for full, sub in zip(PredictionsReader(path), PredictionsReader(path, subset), strict=True):
        np.testing.assert_array_equal(sub.vertices, full.vertices[:, subset])
        np.testing.assert_array_equal(sub.vertex_uncertainties,
                                      full.vertex_uncertainties[:, subset])  # fmt: skip
        np.testing.assert_array_equal(sub.joints, full.joints)
        assert sub.vertices.shape == (full.num_people, 5, 3)


def test_writer_refuses_gaps_wrong_shapes_and_missing_frames(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "p.bcz"
    writer = PredictionsWriter(path, num_frames=3, num_vertices=10, num_joints=J)
    with pytest.raises(ValueError, match="frame 1 given where frame 0"):
        writer.append(_frame(1, [0], rng, v=10))
    with pytest.raises(ValueError, match="vertices has shape"):
        writer.append(_frame(0, [0], rng, v=11))
    with pytest.raises(ValueError, match="repeated track ids"):
        writer.append(_frame(0, [3, 3], rng, v=10))
    writer.append(_frame(0, [UNTRACKED, UNTRACKED], rng, v=10))
    with pytest.raises(ValueError, match="1 frames were written but the video has 3"):
        writer.close()
    assert list(tmp_path.iterdir()) == []


def test_error_inside_with_block_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), PredictionsWriter(
        tmp_path / "p.bcz", num_frames=2, num_vertices=10, num_joints=J
    ) as writer:
        writer.append(_frame(0, [0], np.random.default_rng(2), v=10))
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_detector_mode_detections_are_kept_per_frame_but_not_as_tracks(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "p.bcz"
    with PredictionsWriter(path, num_frames=1, num_vertices=10, num_joints=J) as writer:
        writer.append(_frame(0, [UNTRACKED, UNTRACKED], rng, v=10))
    assert list(PredictionsReader(path))[0].track_ids.tolist() == [-1, -1]
    assert read_tracks(path).tracks == {}


def test_reader_rejects_foreign_and_pickled_files(tmp_path):
    junk = tmp_path / "junk.bcz"
    junk.write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 100)
    with pytest.raises(InvalidInput):
        PredictionsReader(junk)

    from bodycompress import BodyCompressor

    evil = tmp_path / "evil.bcz"
    with BodyCompressor(str(evil), metadata={"x": np.array([object()], dtype=object)},
                        compression="zstd"):
        pass
    assert msgpack_numpy  # the hook delegates everything else to msgpack-numpy
    with pytest.raises(InvalidInput, match="pickled"):
        PredictionsReader(evil)
