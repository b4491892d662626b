"""Non-learned test backend: finds light figures on a dark background (the generated test
videos of tests/support/videos.py). Selected with NLFPIPE_TRACKING_BACKEND=synthetic; it
needs no weights and is meant for tests and first runs, not for real videos."""

import bisect

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from services.common.frames import light_mask

MIN_AREA_FRACTION = 0.002


def light_figures(image: np.ndarray) -> list[np.ndarray]:
    """Masks of the light figures, largest first (tiny ones dropped). Parts of one figure
    separated by a small vertical gap (head and body) are grouped together."""
    mask = light_mask(image).astype(np.uint8)
    gap = max(3, round(0.03 * mask.shape[0])) | 1
    bridged = cv2.dilate(mask, np.ones((gap, 1), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(bridged, connectivity=8)
    figures = [(labels == i) & mask.astype(bool) for i in range(1, count)]
    min_area = MIN_AREA_FRACTION * mask.size
    return sorted((f for f in figures if f.sum() >= min_area), key=lambda f: -f.sum())


class SyntheticPersonDetector:
    """A `PersonDetector`: every light figure is a person; score = its area relative to the
    largest figure's."""

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        figures = light_figures(image)
        if not figures:
            return np.zeros((0, *image.shape[:2]), np.float32), np.zeros(0, np.float32)
        areas = np.array([f.sum() for f in figures], np.float32)
        return np.stack(figures).astype(np.float32), areas / areas.max()


class SyntheticPropagator:
    """A `MaskPropagator`: each frame's light figures are matched to the tracks as seen on the
    temporally nearest frame processed so far (Hungarian matching on box IoU, centre distance
    breaking ties); unmatched figures are background."""

    def __init__(self):
        self._boxes: dict[int, np.ndarray] = {}  # frame index -> [n_objects, 4] x0 y0 x1 y1
        self._seen: list[int] = []  # the keys of _boxes, sorted
        self._init_boxes: np.ndarray | None = None

    def start(self, init_frame: np.ndarray, init_masks: np.ndarray, permanent_frames: int) -> None:
        self._init_boxes = np.stack([_box(m) for m in init_masks])
        self._boxes, self._seen = {}, []

    def step(self, index: int, frame: np.ndarray, temporary: bool) -> np.ndarray:
        if self._init_boxes is None:
            raise RuntimeError("start() must be called before step()")
        reference = self._nearest_boxes(index)
        figures = light_figures(frame)
        label_map = np.zeros(frame.shape[:2], np.uint8)
        boxes = reference.copy()
        if figures:
            found = np.stack([_box(f) for f in figures])
            cost = -_iou(reference, found) + 1e-3 * _centre_distance(reference, found)
            for track, figure in zip(*linear_sum_assignment(cost), strict=True):
                label_map[figures[figure]] = track + 1
                boxes[track] = found[figure]
        if index not in self._boxes:
            bisect.insort(self._seen, index)
        self._boxes[index] = boxes
        return label_map

    def _nearest_boxes(self, index: int) -> np.ndarray:
        if not self._seen:
            return self._init_boxes
        at = bisect.bisect_left(self._seen, index)
        neighbours = self._seen[max(at - 1, 0) : at + 1]
        return self._boxes[min(neighbours, key=lambda i: abs(i - index))]


def _box(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float64)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def _centre_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ca = (a[:, :2] + a[:, 2:]) / 2
    cb = (b[:, :2] + b[:, 2:]) / 2
    return np.linalg.norm(ca[:, None] - cb[None], axis=2)
