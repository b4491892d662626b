"""Tracking algorithms that need no trained weights: cleanup, selection, init frame, pass
plans, the memory bank, and masks through the artifact format."""

import math

import numpy as np
import pytest
import torch
from rlemasklib import RLEMask

from services.common.errors import InvalidInput, PreconditionFailed
from services.common.formats.masks import read_track_masks, write_track_masks
from services.tracking.detection import person_candidates
from services.tracking.memory import MemoryBank
from services.tracking.morph import cleanup_mask
from services.tracking.propagation import PassPlan, label_map_to_masks, propagate
from services.tracking.selection import (
    Candidate,
    no_person_error,
    resolve_init_frame,
    select_subjects,
)


def box_mask(shape, x0, y0, x1, y1) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


# --- morphological cleanup -------------------------------------------------------------


def test_cleanup_removes_far_specks_and_fills_small_holes():
    body = box_mask((100, 120), 30, 20, 60, 80)  # 30 x 60 blob
    specked = body.copy()
    specked[40, 45] = specked[41, 45] = False  # a 2-pixel hole
    specked[5, 110] = specked[95, 2] = True  # far specks
    specked[85:87, 40:42] = True  # a speck within 15% of the box height below it
    cleaned = cleanup_mask(RLEMask.from_array(specked)).to_array().astype(bool)
    # The far specks are outside the grown box of the largest component and disappear.
    assert not cleaned[5, 110] and not cleaned[95, 2]
    # The hole is closed; the main blob is kept whole.
    assert cleaned[body].all()
    # The near speck lies inside the box grown by 15% (9 px below), so it survives the cut.
    assert cleaned[85:87, 40:42].all()
    # Nothing outside the grown box: x in [25.5, 64.5), y in [11, 89).
    rows, cols = np.nonzero(cleaned)
    assert cols.min() >= 25 and cols.max() <= 64 and rows.min() >= 11 and rows.max() <= 88


def test_cleanup_equals_closing_limited_to_the_grown_box_of_the_main_blob():
    rng = np.random.default_rng(0)
    mask = box_mask((64, 64), 20, 10, 40, 50) & (rng.random((64, 64)) > 0.05)
    mask[2, 60] = True
    closed = RLEMask.from_array(mask).dilate5x5().dilate5x5().erode5x5().erode5x5()
    x, y, w, h = closed.largest_connected_component().bbox()
    box = RLEMask.from_bbox([x - 0.15 * w, y - 0.15 * h, 1.3 * w, 1.3 * h], imshape=(64, 64))
    expected = (closed & box).to_array()
    np.testing.assert_array_equal(cleanup_mask(RLEMask.from_array(mask)).to_array(), expected)
    assert not expected[2, 60] and expected[10:50, 20:40].all()


def test_cleanup_keeps_an_empty_mask_empty():
    assert cleanup_mask(RLEMask.zeros((10, 10))).area() == 0


# --- candidates and subject selection ---------------------------------------------------


def candidates() -> list[Candidate]:
    shape = (60, 90)
    boxes = [(5, 5, 25, 55), (35, 10, 55, 50), (65, 20, 85, 40)]
    scores = [0.9, 0.8, 0.6]
    return [
        Candidate(i, s, RLEMask.from_array(box_mask(shape, *b)))
        for i, (b, s) in enumerate(zip(boxes, scores, strict=True))
    ]


def test_select_by_score_takes_the_best_max_persons():
    assert [c.index for c in select_subjects(candidates(), max_persons=2)] == [0, 1]
    assert [c.index for c in select_subjects(candidates())] == [0, 1, 2]
    assert [c.index for c in select_subjects(candidates(), max_persons=10)] == [0, 1, 2]


def test_select_by_index_keeps_the_given_order():
    chosen = select_subjects(candidates(), indices=[2, 0])
    assert [c.index for c in chosen] == [2, 0]
    assert [c.index for c in select_subjects(candidates(), indices=[1, 1])] == [1]


def test_select_by_points_in_video_pixels():
    # Masks are at half the video's resolution: point (140, 60) in the video is (70, 30).
    chosen = select_subjects(candidates(), points=[(140, 60), (20, 40)], point_scale=(0.5, 0.5))
    assert [c.index for c in chosen] == [2, 0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"indices": [3]}, "init frame has 3 candidates"),
        ({"points": [(95, 10)]}, r"outside the 90x60 frame \(x from 0 to 89, y from 0 to 59\)"),
        ({"points": [(30, 2)]}, "on no person candidate"),
        ({"points": [(-1, 10)]}, "outside the 90x60 frame"),
        ({"indices": [0], "points": [(10, 10)]}, "not both"),
        ({"indices": [0], "max_persons": 1}, "cannot be combined"),
    ],
)
def test_bad_selections_are_explained(kwargs, message):
    with pytest.raises(InvalidInput, match=message):
        select_subjects(candidates(), **kwargs)


class FixedDetector:
    def __init__(self, soft: np.ndarray, scores: np.ndarray):
        self.soft, self.scores = soft, scores

    def detect(self, image):
        return self.soft, self.scores


def test_candidates_are_exclusive_thresholded_and_clean():
    soft = np.zeros((2, 40, 40), np.float32)
    soft[0, 5:30, 5:20] = 0.9
    soft[1, 5:30, 15:35] = 0.7  # overlaps the first in columns 15..19, where it loses
    soft[1, 0, 39] = 0.6  # a far speck
    found = person_candidates(np.zeros((40, 40, 3), np.uint8), FixedDetector(soft, [0.95, 0.7]))
    assert [c.index for c in found] == [0, 1]
    first, second = (c.mask.to_array().astype(bool) for c in found)
    assert first.sum() == 25 * 15 and second.sum() == 25 * 15
    assert not (first & second).any() and not second[0, 39]
    assert (
        person_candidates(
            np.zeros((8, 8, 3), np.uint8),
            FixedDetector(np.zeros((0, 8, 8), np.float32), np.zeros(0)),
        )
        == []
    )


# --- init frame -------------------------------------------------------------------------


def test_init_frame_by_index_time_or_middle():
    assert resolve_init_frame(101, 25.0) == 50
    assert resolve_init_frame(101, 25.0, index=7) == 7
    assert resolve_init_frame(101, 25.0, time_s=2.0) == 50
    assert resolve_init_frame(101, 25.0, time_s=1.999) == 49
    assert resolve_init_frame(101, 25.0, time_s=0.0) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"time_s": 4.04}, "outside the video"),
        ({"time_s": -0.5}, "outside the video"),
        ({"time_s": math.nan}, "outside the video"),
        ({"index": 101}, "outside the video"),
        ({"index": 3, "time_s": 1.0}, "not both"),
    ],
)
def test_bad_init_frames_are_explained(kwargs, message):
    with pytest.raises(InvalidInput, match=message):
        resolve_init_frame(101, 25.0, **kwargs)


def test_no_person_error_suggests_another_init_time():
    error = no_person_error(50, 25.0, 101)
    assert isinstance(error, PreconditionFailed)
    assert "no person was found at the init frame 50 (2.00 s)" in str(error)
    assert "choose another init time" in str(error)


# --- pass plans and frame order ---------------------------------------------------------


def test_pass_orders_burn_in_permuted_then_temporal():
    plan = PassPlan(num_frames=10, init_index=4, passes=3, permute=True, seed=1)
    orders = plan.orders()
    assert len(orders) == 3
    for order in orders:
        assert order[0] == 4 and sorted(order) == list(range(10))
    assert list(orders[0]) != list(orders[1])  # two different random burn-in orders
    assert list(orders[2]) == [4, 0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert plan.permanent_frames == 1 + 2 * 10
    single = PassPlan(10, 4, passes=1, permute=True, seed=1).orders()
    assert single[0][0] == 4 and list(single[0][1:]) != [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert list(PassPlan(5, 0, passes=1, permute=False).orders()[0]) == [0, 1, 2, 3, 4]


class IndexEcho:
    """Checks that frame `index` is what it is given, and marks index + 1 pixels."""

    def __init__(self):
        self.visits: list[tuple[int, bool]] = []
        self.wrong_frames: list[int] = []

    def start(self, init_frame, init_masks, permanent_frames):
        self.permanent_frames = permanent_frames

    def step(self, index, frame, temporary):
        if round(frame.mean() / 8) != index:
            self.wrong_frames.append(index)
        self.visits.append((index, temporary))
        label_map = np.zeros(frame.shape[:2], np.uint8)
        label_map.flat[: index + 1] = 1
        return label_map


@pytest.mark.parametrize(("passes", "permute"), [(1, True), (2, True), (3, True), (2, False)])
def test_frame_order_is_restored_after_permuted_passes(tmp_path, passes, permute):
    n = 20
    frames = [np.full((16, 24, 3), 8 * i, np.uint8) for i in range(n)]
    echo = IndexEcho()
    plan = PassPlan(n, init_index=7, passes=passes, permute=permute, seed=3)
    result = propagate(
        plan, echo, frames[7], np.ones((1, 16, 24), bool), lambda: iter(frames), tmp_path
    )
    assert echo.wrong_frames == []
    assert len(result) == n
    assert [int(f[0].area()) for f in result] == [i + 1 for i in range(n)]
    # Burn-in visits write permanent memory; the final pass writes temporary memory.
    assert [t for _, t in echo.visits] == [False] * (passes - 1) * n + [passes > 1] * n
    assert echo.permanent_frames == 1 + max(passes - 1, 1) * n


def test_label_maps_become_per_object_masks_without_empty_ones():
    label_map = np.array([[0, 1, 1], [2, 2, 0]], np.uint8)
    masks = label_map_to_masks(label_map, 3)
    assert sorted(masks) == [0, 1]
    np.testing.assert_array_equal(masks[0].to_array(), label_map == 1)
    np.testing.assert_array_equal(masks[1].to_array(), label_map == 2)


def test_masks_survive_the_artifact_format(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [[rng.random((30, 40)) > 0.5 for _ in range(2)] for _ in range(3)]
    frames = [{t: RLEMask.from_array(a) for t, a in enumerate(f)} for f in arrays]
    frames[1].pop(0)  # track 0 absent from frame 1
    write_track_masks(tmp_path / "m", frames, 30, 40, {"stage": "tracking"})
    back = read_track_masks(tmp_path / "m")
    assert (back.num_frames, back.height, back.width, back.track_ids) == (3, 30, 40, [0, 1])
    assert sorted(back.frame(1)) == [1]
    for i, f in enumerate(frames):
        for t, mask in f.items():
            np.testing.assert_array_equal(back.frame(i)[t].to_array(), mask.to_array())


# --- memory bank ------------------------------------------------------------------------


def dense_readout(keys, values, query, top_k):
    """The reference formula: dense affinity, top-k softmax, weighted sum of values."""
    affinity = (2 * keys.T @ query - keys.pow(2).sum(0)[:, None]) / math.sqrt(keys.shape[0])
    top, idx = affinity.topk(top_k, dim=0)
    weights = torch.zeros_like(affinity).scatter_(0, idx, top.softmax(0))
    return torch.einsum("ocm,mq->ocq", values, weights)


def test_memory_readout_matches_the_dense_formula_and_chunks_agree():
    torch.manual_seed(0)
    bank = MemoryBank(capacity=4, temp_capacity=2, top_k=5, query_chunk_bytes=3000)
    keys, values = [], []
    for i in range(5):
        k, v = torch.randn(8, 3, 4), torch.randn(2, 6, 3, 4)
        bank.add(k, v, temporary=i == 4)
        keys.append(k.flatten(1))
        values.append(v.flatten(2))
    query = torch.randn(1, 8, 3, 4)
    expected = dense_readout(torch.cat(keys, 1), torch.cat(values, 2), query[0].flatten(1), 5)
    got = bank.readout(query)
    assert got.shape == (2, 1, 6, 3, 4)
    torch.testing.assert_close(got[:, 0].flatten(2), expected, atol=1e-5, rtol=1e-5)


def test_memory_stays_within_its_capacity():
    bank = MemoryBank(capacity=3, temp_capacity=2, top_k=4, generator=torch.Generator())
    pixels, ck, n_obj, cv = 12, 8, 2, 6
    for i in range(10):
        bank.add(torch.full((ck, 3, 4), float(i)), torch.zeros(n_obj, cv, 3, 4))
        assert bank.frames == min(i + 1, 3)
    allocated = bank.nbytes()
    assert allocated == (3 + 2) * pixels * (ck + 1 + n_obj * cv) * 4  # keys, |k|^2, values
    keys = bank._memory()[0]
    # Full memory: new frames overwrite random slots, so recent frames dominate.
    assert (keys[0] >= 3).float().mean() > 0.7
    for _ in range(5):
        bank.add(torch.ones(ck, 3, 4), torch.zeros(n_obj, cv, 3, 4), temporary=True)
    assert (bank.frames, bank.temp_frames, bank.stored_frames) == (3, 2, 5)
    assert bank.nbytes() == allocated
    bank.add(torch.ones(ck, 3, 4), torch.zeros(n_obj, cv, 3, 4))
    assert bank.temp_frames == 0  # a permanent write ends the temporary memory's pass
