"""Unit tests of the fitting algorithms, including regressions for the reference's defects."""

import json
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from services.common.formats.cameras import CameraTrack, intrinsics_from_fov
from services.common.formats.ground import load_ground, save_ground
from services.common.formats.predictions import UNTRACKED
from services.fitting import robust_filter as rf
from services.fitting.doubling import double_frames
from services.fitting.pipeline import TrackInput, _fit_tracks, along_ray_offset
from services.fitting.service import read_tracks
from services.fitting.viewer_camera import look_at, viewer_trajectory
from tests.support.scenes import write_predictions


def test_half_kernels_read_exactly_their_own_side():
    # Reference defect: the right half-kernel read frames t+1..t+h+1 instead of t..t+h.
    left, right = rf.half_kernels(np.float32([1, 2, 3, 4, 5]))
    impulse = np.zeros(9, np.float32)
    impulse[4] = 1
    reads_right = rf.moving_sum(impulse, right)  # out[t] = sum_j k_j x[t + j - h]
    reads_left = rf.moving_sum(impulse, left)
    assert np.flatnonzero(reads_right).tolist() == [2, 3, 4]  # frame 4 seen from t = 2..4
    assert reads_right[4] == 3  # the centre tap reads frame t itself
    assert np.flatnonzero(reads_left).tolist() == [4, 5, 6]


def test_single_outlier_frame_is_pulled_back_to_the_trend():
    t = np.arange(40, dtype=np.float32)
    x = np.stack([0.03 * t, 0 * t, 4 + 0 * t], 1)[:, None]
    x[20, 0] += [0.5, 0, 0]
    y, _ = rf.robust_smooth(x, np.ones((40, 1), np.float32), np.float32(rf.ROOT_KERNEL_LOW_FPS),
                            0.05)
    assert np.linalg.norm(y[20, 0] - [0.6, 0, 4]) < 0.08


def test_jump_is_split_exactly_where_it_happens_and_missing_frames_do_not_split():
    c = np.zeros((60, 3), np.float32)
    c[30:, 0] = 2.0
    w = np.ones(60, np.float32)
    w[10:14] = 0  # a gap: no split there
    kernel = np.float32(rf.ROOT_KERNEL_LOW_FPS)
    assert rf.detect_splits(c, w, kernel, 1.0, 0.05, 10, 2.0 / 30) == [30]
    assert rf.segments_from_splits(w > 0, [30]) == [(0, 30), (30, 60)]


def test_two_sided_support_fills_only_inside_the_radius():
    observed = np.ones(30, bool)
    observed[5:7] = False  # 2 frames: filled with radius 2
    observed[12:15] = False  # 3 frames: not all filled
    observed[25:] = False  # trailing: never extrapolated
    ok = rf.two_sided_support(observed, 2)
    assert ok[5:7].all() and not ok[12:15].all() and not ok[25:].any()


def test_post_fit_offset_moves_along_the_ray_from_the_camera_centre():
    # Reference defect: the offset was (sigma - 1) * root, wrong unless the camera is at 0.
    cam = np.array([[10.0, 1.0, -3.0]])
    raw = np.array([[12.0, 1.5, 2.0]])
    filtered = cam + 1.1 * (raw - cam) + np.array([[0.0, 0.2, 0.0]])
    moved = raw + along_ray_offset(raw, filtered, cam)
    ray = (raw - cam) / np.linalg.norm(raw - cam)
    assert np.linalg.norm(np.cross(moved - cam, ray)) < 1e-9  # still on the camera ray
    assert np.isclose((moved - cam) @ ray[0], (filtered - cam) @ ray[0])


def test_doubling_averages_valid_neighbours_and_never_half_weights():
    values = np.arange(6, dtype=np.float32)[:, None] * [1.0, 2.0]
    valid = np.array([True, True, False, True, True, True])
    out, out_valid, segments = double_frames(values, valid, [(0, 2), (3, 6)])
    assert len(out) == 12
    np.testing.assert_allclose(out[1], 0.5 * (values[0] + values[1]))
    assert not out_valid[3] and np.isnan(out[3]).all()  # next to an invalid frame
    assert not out_valid[5]  # across the split
    np.testing.assert_allclose(out[-1], values[-1])  # the last frame repeats, like the video
    assert segments == [(0, 3), (6, 12)]


def test_viewer_camera_starts_at_the_original_is_smooth_and_keeps_people_framed():
    n, fps = 450, 30.0
    t = np.arange(n) / fps
    pos = np.stack([300 * np.sin(0.3 * t), 0 * t, 200 * np.sin(0.2 * t)], 1)
    target = np.array([0.0, 0.0, 6000.0])
    rot = look_at(pos, np.broadcast_to(target, pos.shape), np.array([0.0, -1.0, 0.0]))
    display = CameraTrack(np.repeat(intrinsics_from_fov(55, 1280, 720)[None], n, 0), rot, pos,
                          np.zeros((n, 5)), np.array([0.0, -1.0, 0.0]), (1280, 720))
    people = np.stack([
        np.stack([1500 * np.cos(0.5 * t + k) + 500 * k, 200 + 0 * t,
                  6000 + 1500 * np.sin(0.5 * t + k)], 1) for k in range(3)], 1)
    people[100:130, 1] = np.nan  # one person not visible for a while
    view = viewer_trajectory(display, people, fps, np.array([0.0, -1.0, 0.0]))
    np.testing.assert_allclose(view.rotation[0], display.rotation[0], atol=1e-6)
    np.testing.assert_allclose(view.optical_center[0], display.optical_center[0], atol=1e-3)
    np.testing.assert_allclose(view.intrinsics[0], display.intrinsics[0], atol=1e-3)
    step = np.linalg.norm(np.diff(view.optical_center, axis=0), axis=1)
    cos = np.einsum("tij,tij->t", view.rotation[1:], view.rotation[:-1])
    angle = np.degrees(np.arccos(np.clip((cos - 1) / 2, -1, 1)))
    assert step.max() < 250 and angle.max() < 1.5  # mm and degrees per frame
    eased = np.arange(n) >= 8 * fps
    for i in np.flatnonzero(eased):
        for p in people[i][np.isfinite(people[i]).all(1)]:
            u, v = view.project(p, i)
            assert abs(u - 640) <= 0.4 * 1280 and abs(v - 360) <= 0.4 * 720


def test_filtering_in_point_blocks_equals_filtering_all_points_at_once():
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1, (60, 300, 3)).astype(np.float32)
    w = rng.uniform(0.5, 2, (60, 300)).astype(np.float32)
    w[20:30, :100] = 0  # missing frames for some points
    kernel = np.float32(rf.POINT_KERNEL_LOW_FPS)
    whole = rf.robust_smooth(x, w, kernel, 0.05, block=300)
    for block in (1, 7, 128):
        blocked = rf.robust_smooth(x, w, kernel, 0.05, block=block)
        np.testing.assert_array_equal(blocked[0], whole[0])
        np.testing.assert_array_equal(blocked[1], whole[1])
    # No data within the kernel's radius (2) only at frames 22..27 of the first 100 points.
    empty = np.zeros((60, 300), bool)
    empty[22:28, :100] = True
    np.testing.assert_array_equal(np.isnan(whole[0]).any(-1), empty)
    np.testing.assert_array_equal(whole[1] == 0, empty)


class _StubFitter:
    """Stands in for TrackFitter: track 1 finishes only once track 2 has run beside it."""

    def __init__(self):
        self.second_ran = threading.Event()
        self.started: list[int] = []

    def fit(self, track: TrackInput, cam: np.ndarray, num_frames: int) -> SimpleNamespace:
        self.started.append(track.track_id)
        if track.track_id == 1 and not self.second_ran.wait(timeout=10):
            raise TimeoutError("track 2 never ran beside track 1")
        if track.track_id == 2:
            self.second_ran.set()
        return SimpleNamespace(track_id=track.track_id)


def _tracks(ids) -> list[TrackInput]:
    return [TrackInput(k, np.arange(2), np.zeros((2, 1, 3)), np.ones((2, 1))) for k in ids]


def test_tracks_run_in_parallel_and_are_reported_in_input_order():
    reported = []
    fits = _fit_tracks(_StubFitter(), _tracks([1, 2, 3, 4]), np.zeros((2, 3)), 2, 2,
                       reported.append)  # fmt: skip
    assert [f.track_id for f in fits] == reported == [1, 2, 3, 4]


def test_a_cancelled_run_starts_no_further_tracks():
    fitter = _StubFitter()

    def cancel(track_id: int) -> None:
        raise RuntimeError(f"cancelled after track {track_id}")

    with pytest.raises(RuntimeError, match="cancelled after track 1"):
        _fit_tracks(fitter, _tracks(range(1, 9)), np.zeros((2, 3)), 2, 2, cancel)
    assert sorted(fitter.started) == [1, 2]  # the two in flight; nothing submitted after


def test_read_tracks_keeps_the_subset_vertices_and_joints_in_metres(tmp_path):
    rng = np.random.default_rng(2)

    def person(frames) -> dict[str, np.ndarray]:
        n = len(frames)
        return {
            "frame_indices": np.asarray(frames),
            "vertices": rng.uniform(-2000, 2000, (n, 6890, 3)).astype(np.float32),
            "joints": rng.uniform(-2000, 2000, (n, 24, 3)).astype(np.float32),
            "vertex_uncertainties": rng.uniform(0.03, 0.1, (n, 6890)).astype(np.float32),
            "joint_uncertainties": rng.uniform(0.03, 0.1, (n, 24)).astype(np.float32),
        }

    people = {2: person([1, 2, 3]), 5: person([0, 3, 4]), UNTRACKED: person([2])}
    write_predictions(tmp_path / "p.bcz", CameraTrack.static(6, 640, 360), people, 6)
    subset = np.array([6889, 0, 17, 4000])
    num_frames, tracks = read_tracks(tmp_path / "p.bcz", subset)
    assert num_frames == 6 and [t.track_id for t in tracks] == [2, 5]
    for track in tracks:
        given = people[track.track_id]
        np.testing.assert_array_equal(track.frame_indices, given["frame_indices"])
        points = np.concatenate([given["vertices"][:, subset], given["joints"]], 1) / 1000
        unc = np.concatenate([given["vertex_uncertainties"][:, subset],
                              given["joint_uncertainties"]], 1)  # fmt: skip
        assert track.points_m.dtype == np.float32 and track.points_m.shape == (3, 28, 3)
        np.testing.assert_allclose(track.points_m, points, atol=0.3e-3)  # 0.5 mm quantization
        np.testing.assert_allclose(track.uncertainties_m, unc, atol=1e-3)


def test_local_quadratic_is_exact_for_constant_acceleration_where_the_mean_lags():
    t = np.arange(30, dtype=np.float32)
    x = np.stack([0.002 * t**2, 0.05 * t, 0 * t + 4], 1)[:, None]  # accelerating along x
    w = np.ones((30, 1), np.float32)
    w[12:14] = 0  # a gap inside the window
    w[20] = 0.3  # and an uneven weight
    kernels = rf.kernels_for_fps(30)
    quadratic, _ = rf.robust_smooth(x, w, kernels.point, 0.05, fit_kernel=kernels.point_fit)
    mean, _ = rf.robust_smooth(x, w, kernels.point, 0.05)
    np.testing.assert_allclose(quadratic[:, 0], x[:, 0], atol=1e-4)  # edges and gap included
    # The kernel-weighted mean is off by half the acceleration times the kernel's variance.
    assert np.abs(mean[5:-5, 0, 0] - x[5:-5, 0, 0]).max() > 1.5e-3


def test_local_quadratic_falls_back_to_the_mean_where_two_frames_are_all_there_is():
    x = np.float32([[[0, 0, 1]], [[0.1, 0, 1]], [[0, 0, 0]], [[0, 0, 0]]])
    w = np.float32([[1], [1], [0], [0]])
    kernels = rf.kernels_for_fps(30)
    y, _ = rf.robust_smooth(x, w, kernels.point, 0.05, fit_kernel=kernels.point_fit)
    assert np.isfinite(y[:2]).all() and 0 <= y[0, 0, 0] <= 0.1 and 0 <= y[1, 0, 0] <= 0.1


def test_window_offset_is_zero_for_symmetric_support_and_the_lag_beside_a_gap():
    kernel = np.float32([1, 2, 0, 2, 1])  # leave-one-out: no centre tap
    w = np.ones(20, np.float32)
    w[8:12] = 0
    offset = rf.window_offset(w, kernel)
    assert offset[4] == 0  # both sides seen
    assert offset[12] == pytest.approx((2 * 1 + 1 * 2) / 3)  # first after the gap: after only
    assert offset[7] == pytest.approx(-(2 * 1 + 1 * 2) / 3)  # last before it: before only
    assert offset[0] > 0 and offset[19] < 0  # the ends of the segment


def test_ground_files_of_version_1_are_read_with_the_foot_joint_plane(tmp_path):
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"format": "nlfpipe.ground/1", "found": True,
                                "world_up": [0, -1, 0], "height_mm": 1500.0, "inliers": 9,
                                "points": 12}))  # fmt: skip
    old = load_ground(path)
    assert old["foot_joint_height_mm"] == 1500.0 and old["sole_offset_mm"] == 0.0
    save_ground(tmp_path / "g2.json", [0, -1, 0], 1460.0, 9, 12, True, sole_offset_mm=40.0)
    new = load_ground(tmp_path / "g2.json")
    assert new["format"] == "nlfpipe.ground/2"
    assert (new["height_mm"], new["foot_joint_height_mm"], new["sole_offset_mm"]) == (
        1460.0, 1500.0, 40.0,
    )  # fmt: skip
    save_ground(tmp_path / "g3.json", [0, -1, 0], np.nan, 0, 2, False, sole_offset_mm=40.0)
    assert load_ground(tmp_path / "g3.json")["height_mm"] is None
