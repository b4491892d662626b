"""The weightless backend: OpenCV's DIS optical flow, both ways, backward warping of both
frames to the middle instant and an occlusion-aware blend.

For each pair (I0, I1), on grayscale frames shrunk to at most WORK_SIDE pixels:
1. DIS flows F01 (I0 -> I1) and F10 (I1 -> I0).
2. The flow from the middle instant back to I0, Fm0 (and Fm1 = -Fm0 to I1), chosen per pixel
   among (F10 - F01) / 4 (Super SloMo's linear approximation at t = 1/2), -F01 / 2, F10 / 2
   and 0 as the one whose two samples agree best: flows bleed across motion boundaries, and
   near one the candidates from the frame that shows the background there are right.
3. Occlusion scores from forward-backward consistency: C0(p) = |F01(p) + F10(p + F01(p))| is
   large where pixel p of I0 has no match in I1 (it gets covered), likewise C1 for I1.
4. The middle frame samples I0 at x + Fm0(x) and I1 at x + Fm1(x) (full resolution, bilinear,
   replicated borders) and blends them with weights (1 + a C0) : (1 + a C1), read at the
   sampled positions: a pixel that only one frame shows comes from that frame.
"""

from functools import lru_cache

import cv2
import numpy as np

WORK_SIDE = 640
OCCLUSION_GAIN = 2.0  # per pixel of forward-backward mismatch at the working resolution
VERSION = "dis-fast-1"


@lru_cache(maxsize=4)
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel x and y coordinates (shared, read-only)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return xs, ys


def _sample(image: np.ndarray, xs: np.ndarray, ys: np.ndarray, flow: np.ndarray) -> np.ndarray:
    return cv2.remap(
        image, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )  # fmt: skip


def _most_consistent(g0, g1, xs, ys, candidates) -> np.ndarray:
    """Per pixel, the candidate middle->I0 flow whose two samples agree best (5x5 mean of
    the absolute difference); the middle->I1 flow is its negative."""
    costs = []
    for fm0 in candidates:
        diff = cv2.absdiff(_sample(g0, xs, ys, fm0), _sample(g1, xs, ys, -fm0))
        costs.append(cv2.blur(diff.astype(np.float32), (5, 5)))
    best = np.argmin(np.stack(costs), axis=0)
    return np.take_along_axis(np.stack(candidates), best[None, ..., None], axis=0)[0]


class FlowInterpolator:
    """Middle frames from DIS optical flow; needs no weights and runs on the CPU."""

    name = "flow"
    batch_size = 4
    identity = {"backend": f"flow-{VERSION}", "device": "cpu", "precision": "fp32"}

    def __init__(self, work_side: int = WORK_SIDE):
        self.work_side = work_side

    def middles(self, firsts: np.ndarray, seconds: np.ndarray, flow_scale: float) -> np.ndarray:
        """The frames halfway between each pair: uint8 [B, H, W, 3] RGB in and out.

        `flow_scale` is RIFE's and is ignored: the flow is always estimated at WORK_SIDE.
        """
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
        return np.stack([self.middle(a, b, dis) for a, b in zip(firsts, seconds, strict=True)])

    def middle(self, first: np.ndarray, second: np.ndarray, dis: cv2.DISOpticalFlow) -> np.ndarray:
        height, width = first.shape[:2]
        factor = max(1.0, max(height, width) / self.work_side)
        small = (max(8, round(width / factor)), max(8, round(height / factor)))
        g0, g1 = (
            cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), small, interpolation=cv2.INTER_AREA)
            for f in (first, second)
        )
        f01 = dis.calc(g0, g1, None)
        f10 = dis.calc(g1, g0, None)
        xs, ys = _grid(small[1], small[0])
        c0 = np.linalg.norm(f01 + _sample(f10, xs, ys, f01), axis=-1)
        c1 = np.linalg.norm(f10 + _sample(f01, xs, ys, f10), axis=-1)
        fm0 = _most_consistent(g0, g1, xs, ys, (0.25 * (f10 - f01), -0.5 * f01, 0.5 * f10,
                                                np.zeros_like(f01)))  # fmt: skip
        o0 = _sample(c0, xs, ys, fm0)
        o1 = _sample(c1, xs, ys, -fm0)
        w0 = (1 + OCCLUSION_GAIN * o0) / (2 + OCCLUSION_GAIN * (o0 + o1))

        size = (width, height)
        fm0 = cv2.resize(fm0, size, interpolation=cv2.INTER_LINEAR) * np.float32(
            [width / small[0], height / small[1]]
        )
        w0 = cv2.resize(w0, size, interpolation=cv2.INTER_LINEAR)
        fx, fy = _grid(height, width)
        warped0 = _sample(first, fx, fy, fm0)
        warped1 = _sample(second, fx, fy, -fm0)
        return cv2.blendLinear(warped0, warped1, w0, 1 - w0)
