"""Keyframes by feature motion, and static-camera detection, from KLT tracks on the
unmasked pixels of the keyframe candidates.

Corners of the last keyframe are tracked (pyramidal Lucas-Kanade, forward-backward checked)
into each later candidate, always from the keyframe itself, so the measured displacement does
not drift with the number of candidates. A candidate becomes a keyframe when the median
displacement exceeds `keyframe_flow` of the image width, when fewer than `min_tracked` of the
corners survive, or when `max_gap` candidates passed. The camera is static when no candidate
ever moved the median corner by more than `static_px` from the first frame: any rotation or
translation that shows in the image keeps it moving. When people hide most of the first
frame's corners, the test starts again from the current candidate and adds the displacement
measured so far (a bound on the true one, so a moving camera is never declared static).
"""

from dataclasses import dataclass, field

import cv2
import numpy as np

_LK = {
    "winSize": (21, 21),
    "maxLevel": 4,
    "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01),
}


@dataclass(frozen=True)
class KeyframeRules:
    """When a candidate becomes a keyframe, and when the camera counts as static."""

    keyframe_flow: float = 0.02  # median displacement as a fraction of the image width
    min_tracked: float = 0.5  # fraction of the keyframe's corners that must survive
    max_gap: int = 3  # candidates between keyframes at most
    static_px: float = 1.0  # largest median displacement of a static camera, pixels
    min_keyframes: int = 5  # a moving camera gets at least this many (evenly spread)
    # ... and this many when the focal length is refined: on a 2 s forward walk the focal
    # refinement was up to 5° off with the 8 keyframes of the flow rule, within 1° with 20
    min_keyframes_unknown_focal: int = 20
    max_corners: int = 400


@dataclass
class MotionAnalysis:
    """What the candidates showed."""

    keyframes: list[int]  # frame indices, increasing, the first and last candidates included
    static: bool
    max_static_displacement_px: float  # largest median displacement from the first frame
    candidates: int
    median_flow_px: list[float] = field(default_factory=list)  # per candidate, from its keyframe
    textured: bool = True  # the first frame had enough corners to track


class KeyframeSelector:
    """Feed the candidates in order with `add`; `finish` gives the analysis."""

    def __init__(self, rules: KeyframeRules = KeyframeRules()):
        self.rules = rules
        self._key: _Reference | None = None
        self._first: _Reference | None = None  # the static test's reference while it may hold
        self._since_key = 0
        self._keyframes: list[int] = []
        self._candidates: list[int] = []
        self._flows: list[float] = []
        self._from_first = 0.0
        self._static_offset = 0.0
        self._textured = True

    def add(self, frame: int, gray: np.ndarray, mask: np.ndarray) -> bool:
        """Takes candidate `frame` (uint8 gray, bool person mask); True when it is a keyframe."""
        self._candidates.append(frame)
        if self._key is None:
            self._key = self._first = _Reference.of(gray, mask, self.rules.max_corners)
            self._textured = len(self._key.corners) >= 20
            self._keyframes.append(frame)
            return True
        flow, survived = self._key.track(gray, mask)
        self._flows.append(flow)
        if self._first is not None:
            if self._first is self._key:
                from_first, kept = flow, survived
            else:
                from_first, kept = self._first.track(gray, mask)
            self._from_first = max(self._from_first, self._static_offset + from_first)
            if self._from_first > self.rules.static_px:
                self._first = None  # moving: no need to compare with the first frame again
            elif kept < self.rules.min_tracked:  # people hide the corners: start again here,
                self._static_offset += from_first  # carrying the displacement so far
                self._first = _Reference.of(gray, mask, self.rules.max_corners)
        self._since_key += 1
        if (
            flow > self.rules.keyframe_flow * gray.shape[1]
            or survived < self.rules.min_tracked
            or self._since_key >= self.rules.max_gap
        ):
            self._key = _Reference.of(gray, mask, self.rules.max_corners)
            self._since_key = 0
            self._keyframes.append(frame)
            return True
        return False

    def finish(self) -> MotionAnalysis:
        """The keyframes (last candidate included) and the static verdict."""
        static = self._textured and self._first is not None
        keyframes = list(self._keyframes)
        if not static and self._candidates and keyframes[-1] != self._candidates[-1]:
            keyframes.append(self._candidates[-1])
        if not static and len(keyframes) < self.rules.min_keyframes:
            spread = np.linspace(0, len(self._candidates) - 1, self.rules.min_keyframes)
            keyframes = sorted({*keyframes, *(self._candidates[int(round(i))] for i in spread)})
        return MotionAnalysis(
            keyframes=keyframes,
            static=bool(static),
            max_static_displacement_px=float(self._from_first),
            candidates=len(self._candidates),
            median_flow_px=self._flows,
            textured=self._textured,
        )


@dataclass
class _Reference:
    """A reference frame, its corners and their latest positions (the next search's guess)."""

    gray: np.ndarray
    corners: np.ndarray  # (N, 1, 2) float32
    guess: np.ndarray

    @classmethod
    def of(cls, gray: np.ndarray, mask: np.ndarray, count: int) -> "_Reference":
        allowed = np.where(mask, 0, 255).astype(np.uint8)
        found = cv2.goodFeaturesToTrack(
            gray, maxCorners=count, qualityLevel=0.01, minDistance=8, mask=allowed, blockSize=7
        )
        corners = np.zeros((0, 1, 2), np.float32) if found is None else found.astype(np.float32)
        return cls(gray, corners, corners.copy())

    def track(self, gray: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
        """Median displacement (px) and surviving fraction of the corners in `gray`; corners
        that land on masked pixels or fail the forward-backward check do not count."""
        if len(self.corners) == 0:
            return 0.0, 0.0
        moved, status, _ = cv2.calcOpticalFlowPyrLK(
            self.gray, gray, self.corners, self.guess.copy(),
            flags=cv2.OPTFLOW_USE_INITIAL_FLOW, **_LK,
        )  # fmt: skip
        back, status_back, _ = cv2.calcOpticalFlowPyrLK(gray, self.gray, moved, None, **_LK)
        ok = (status[:, 0] == 1) & (status_back[:, 0] == 1)
        ok &= np.linalg.norm(back - self.corners, axis=-1)[:, 0] < 1.0
        height, width = gray.shape
        xy = np.round(moved[:, 0]).astype(int)
        inside = (xy[:, 0] >= 0) & (xy[:, 0] < width) & (xy[:, 1] >= 0) & (xy[:, 1] < height)
        ok &= inside
        ok[inside] &= ~mask[xy[inside, 1], xy[inside, 0]]
        self.guess = np.where(ok[:, None, None], moved, self.guess)
        if not ok.any():
            return 0.0, 0.0
        displacement = np.linalg.norm(moved[ok] - self.corners[ok], axis=-1)[:, 0]
        return float(np.median(displacement)), float(ok.mean())
