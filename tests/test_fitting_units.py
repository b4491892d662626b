"""Unit tests of the fitting algorithms, including regressions for the reference's defects."""

import numpy as np

from services.common.formats.cameras import CameraTrack, intrinsics_from_fov
from services.fitting import robust_filter as rf
from services.fitting.doubling import double_frames
from services.fitting.pipeline import along_ray_offset
from services.fitting.viewer_camera import look_at, viewer_trajectory


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
