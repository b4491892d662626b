"""The tracking computation end to end on generated videos, with the synthetic backend
(threshold detection, overlap association), whose masks can be checked against the truth."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from services.common.errors import InvalidInput, PreconditionFailed
from services.common.formats.masks import read_track_masks
from services.common.stagerun import StageRun
from services.tracking.backends import synthetic_backend
from services.tracking.pipeline import TrackingParams, compute_tracking
from tests.support.videos import make_test_video

WIDTH, HEIGHT, FPS, SECONDS = 128, 96, 15, 1.0
SCALE = 0.5  # short_side 48 on a 96-pixel-high video


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> tuple[Path, list]:
    path = tmp_path_factory.mktemp("video") / "figures.mp4"
    truths = make_test_video(path, seconds=SECONDS, width=WIDTH, height=HEIGHT, fps=FPS)
    return path, truths


def track(video_path: Path, tmp_path: Path, **params):
    tmp_path.mkdir(parents=True, exist_ok=True)
    run = StageRun(tmp_path, {"video": video_path}, {}, None, None)
    return compute_tracking(run, TrackingParams(short_side=48, **params), synthetic_backend())


def box_iou(a, b) -> float:
    ax0, ay0, aw, ah = a
    bx0, by0, bw, bh = b
    iw = max(0.0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    ih = max(0.0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
    return iw * ih / (aw * ah + bw * bh - iw * ih)


def test_masks_follow_every_figure_in_every_frame(video, tmp_path):
    path, truths = video
    outputs = track(path, tmp_path, passes=2, permute_frames=True)
    masks = read_track_masks(outputs.files["masks"].path)
    assert (masks.num_frames, masks.height, masks.width) == (15, 48, 64)
    assert masks.track_ids == [0, 1]
    # Candidates are ordered by score (relative area); match tracks to figures at frame 0.
    first = masks.frame(0)
    order = [
        max(range(2), key=lambda f: box_iou(first[t].bbox() / SCALE, truths[f].boxes[0]))
        for t in (0, 1)
    ]
    assert sorted(order) == [0, 1]
    ious = [
        box_iou(masks.frame(i)[t].bbox() / SCALE, truths[order[t]].boxes[i])
        for i in range(15)
        for t in (0, 1)
    ]
    assert min(ious) > 0.55 and np.mean(ious) > 0.7  # boxes of 6 x 29 px masks
    tracks = outputs.extra["tracks"]
    assert [t["frames_present"] for t in tracks] == [15, 15]
    assert [(t["first_frame"], t["last_frame"]) for t in tracks] == [(0, 14), (0, 14)]
    expected_area = (0.6 * 48) * (0.22 * 0.6 * 48) * 0.8  # figure box x fill ratio
    assert all(0.6 * expected_area < t["mean_area_px"] < 1.4 * expected_area for t in tracks)
    assert outputs.extra["init_frame"] == 7
    assert masks.meta["tracks"] == tracks


def test_candidates_preview_and_json_describe_the_init_frame(video, tmp_path):
    path, truths = video
    outputs = track(path, tmp_path, init_time_seconds=0.2, preview_only=True)
    assert set(outputs.files) == {"candidates", "candidates_preview"}
    document = json.loads(outputs.files["candidates"].path.read_text())
    assert document["format"] == "nlfpipe.candidates/1" and document["init_frame"] == 3
    assert [c["index"] for c in document["candidates"]] == [0, 1]
    scores = [c["score"] for c in document["candidates"]]
    assert scores == sorted(scores, reverse=True)
    for candidate in document["candidates"]:  # boxes are in video pixels
        assert max(box_iou(candidate["box_xywh"], t.boxes[3]) for t in truths) > 0.7
    preview = cv2.imdecode(
        np.frombuffer(outputs.files["candidates_preview"].path.read_bytes(), np.uint8),
        cv2.IMREAD_COLOR,
    )
    assert preview.shape == (HEIGHT, WIDTH, 3)
    # Outlines are drawn in saturated colours that the grey-ish test video does not have.
    saturation = cv2.cvtColor(preview, cv2.COLOR_BGR2HSV)[..., 1]
    assert (saturation > 200).sum() > 100


def test_subjects_by_index_and_by_point_fix_the_track_ids(video, tmp_path):
    path, truths = video
    by_score = read_track_masks(track(path, tmp_path / "a", passes=1).files["masks"].path)
    by_index = track(path, tmp_path / "b", passes=1, candidate_indices=(1,))
    masks = read_track_masks(by_index.files["masks"].path)
    assert masks.track_ids == [0]
    np.testing.assert_array_equal(masks.frame(5)[0].to_array(), by_score.frame(5)[1].to_array())
    # A point in video pixels at the centre of figure 1 on the init frame (frame 7).
    x, y, w, h = truths[1].boxes[7]
    by_point = track(path, tmp_path / "c", passes=1, select_points=((x + w / 2, y + 0.6 * h),))
    picked = read_track_masks(by_point.files["masks"].path).frame(7)[0].bbox() / SCALE
    assert box_iou(picked, truths[1].boxes[7]) > 0.75


@pytest.mark.parametrize(
    ("params", "error", "message"),
    [
        ({"init_time_seconds": 1.5}, InvalidInput, "outside the video"),
        ({"init_frame_index": 15}, InvalidInput, "outside the video"),
        ({"select_points": ((WIDTH + 3.0, 10.0),)}, InvalidInput, "outside the 128x96 frame"),
        ({"select_points": ((2.0, 2.0),)}, InvalidInput, "on no person candidate"),
        ({"candidate_indices": (2,)}, InvalidInput, "has 2 candidates"),
        ({"passes": 0}, InvalidInput, "passes=0"),
    ],
)
def test_bad_requests_are_explained(video, tmp_path, params, error, message):
    with pytest.raises(error, match=message):
        track(video[0], tmp_path, **params)


def test_no_person_on_the_init_frame_suggests_another_init_time(tmp_path):
    make_test_video(tmp_path / "empty.mp4", seconds=0.4, width=64, height=48, fps=10, figures=0)
    with pytest.raises(PreconditionFailed, match="no person was found at the init frame 2"):
        track(tmp_path / "empty.mp4", tmp_path)


def test_masks_are_never_upscaled_beyond_the_video(video, tmp_path):
    path, _ = video
    run = StageRun(tmp_path, {"video": path}, {}, None, None)
    outputs = compute_tracking(run, TrackingParams(short_side=320), synthetic_backend())
    masks = read_track_masks(outputs.files["masks"].path)
    assert (masks.height, masks.width) == (HEIGHT, WIDTH)
