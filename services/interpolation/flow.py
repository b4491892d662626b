"""The weightless backend: OpenCV's DIS optical flow, both ways, backward warping of both
frames to the middle instant and an occlusion-aware blend.

For each pair (I0, I1), on the luma shrunk to at most WORK_SIDE pixels:
1. DIS flows F01 (I0 -> I1) and F10 (I1 -> I0).
2. The flow from the middle instant back to I0, Fm0 (and Fm1 = -Fm0 to I1), chosen per pixel
   among (F10 - F01) / 4 (Super SloMo's linear approximation at t = 1/2), -F01 / 2, F10 / 2
   and 0 as the one whose two samples agree best: flows bleed across motion boundaries, and
   near one the candidates from the frame that shows the background there are right.
3. Occlusion scores from forward-backward consistency: C0(p) = |F01(p) + F10(p + F01(p))| is
   large where pixel p of I0 has no match in I1 (it gets covered), likewise C1 for I1.
4. Each image of the frame (the Y plane at full resolution, U and V at half) samples I0 at
   x + Fm0(x) and I1 at x + Fm1(x) (bilinear, replicated borders) and blends them with weights
   (1 + a C0) : (1 + a C1), read at the sampled positions: a pixel that only one frame shows
   comes from that frame.
It works on the decoded planes directly: no colour conversion, no weights, CPU only.
"""

from collections.abc import Sequence
from functools import lru_cache

import cv2
import numpy as np

from services.common.identity import ModelIdentity
from services.interpolation.video import SourceFrame, join_planes

WORK_SIDE = 640
OCCLUSION_GAIN = 2.0  # per pixel of forward-backward mismatch at the working resolution
VERSION = "dis-fast-1"


@lru_cache(maxsize=8)
def _grid(height: int, width: int) -> np.ndarray:
    """Pixel coordinates (x, y), [H, W, 2] float32 (shared, read-only)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack((xs, ys), axis=-1)


def _sample(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """`image` at each pixel plus `flow` (bilinear, replicated borders)."""
    where = _grid(*flow.shape[:2]) + flow
    return cv2.remap(image, where, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _resized_flow(flow: np.ndarray, height: int, width: int) -> np.ndarray:
    scale = np.float32([width / flow.shape[1], height / flow.shape[0]])
    resized = cv2.resize(flow, (width, height), interpolation=cv2.INTER_LINEAR)
    resized *= scale
    return resized


def _mismatch(flow: np.ndarray, back: np.ndarray) -> np.ndarray:
    """|flow(p) + back(p + flow(p))|: how far a round trip misses its start, pixels."""
    error = flow + _sample(back, flow)
    return cv2.magnitude(error[..., 0], error[..., 1])


def _most_consistent(g0, g1, candidates) -> np.ndarray:
    """Per pixel, the candidate middle->I0 flow whose two samples agree best (5x5 mean of
    the absolute difference); the middle->I1 flow is its negative."""
    best, best_cost = None, None
    for fm0 in candidates:
        diff = cv2.absdiff(_sample(g0, fm0), _sample(g1, -fm0))
        cost = cv2.blur(diff.astype(np.float32), (5, 5))
        if best is None:
            best, best_cost = fm0, cost
            continue
        better = cost < best_cost
        best = np.where(better[..., None], fm0, best)
        best_cost = np.minimum(cost, best_cost)
    return best


class FlowInterpolator:
    """Middle frames from DIS optical flow; needs no weights and runs on the CPU."""

    name = f"flow-{VERSION}"
    batch_size = 4
    identity = ModelIdentity()  # no files; always the CPU in float32

    def __init__(self, work_side: int = WORK_SIDE):
        self.work_side = work_side

    def middles(
        self, firsts: Sequence[SourceFrame], seconds: Sequence[SourceFrame], flow_scale: float
    ) -> list[np.ndarray]:
        """The 4:2:0 planes of the frames halfway between each pair. `flow_scale` is RIFE's
        and is ignored: the flow is always estimated at WORK_SIDE."""
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
        out = []
        for a, b in zip(firsts, seconds, strict=True):
            luma, chroma = self.middle(a.luma, b.luma, [a.luma, a.chroma], [b.luma, b.chroma],
                                       dis)  # fmt: skip
            out.append(join_planes(luma, chroma))
        return out

    def middle(
        self,
        luma0: np.ndarray,
        luma1: np.ndarray,
        images0: Sequence[np.ndarray],
        images1: Sequence[np.ndarray],
        dis: cv2.DISOpticalFlow | None = None,
    ) -> list[np.ndarray]:
        """The middle of each pair of images (any sizes: e.g. luma at full resolution and
        chroma at half), from the flow between the two uint8 lumas [H, W]."""
        dis = dis or cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
        height, width = luma0.shape
        factor = max(1.0, max(height, width) / self.work_side)
        small = (max(8, round(width / factor)), max(8, round(height / factor)))
        g0 = cv2.resize(luma0, small, interpolation=cv2.INTER_AREA)
        g1 = cv2.resize(luma1, small, interpolation=cv2.INTER_AREA)
        f01 = dis.calc(g0, g1, None)
        f10 = dis.calc(g1, g0, None)
        c0, c1 = _mismatch(f01, f10), _mismatch(f10, f01)
        fm0 = _most_consistent(g0, g1, (0.25 * (f10 - f01), -0.5 * f01, 0.5 * f10,
                                        np.zeros_like(f01)))  # fmt: skip
        o0, o1 = _sample(c0, fm0), _sample(c1, -fm0)
        w0 = (1 + OCCLUSION_GAIN * o0) / (2 + OCCLUSION_GAIN * (o0 + o1))

        out = []
        for a, b in zip(images0, images1, strict=True):
            h, w = a.shape[:2]
            flow = _resized_flow(fm0, h, w)
            weight = cv2.resize(w0, (w, h), interpolation=cv2.INTER_LINEAR)
            out.append(cv2.blendLinear(_sample(a, flow), _sample(b, -flow), weight, 1 - weight))
        return out
