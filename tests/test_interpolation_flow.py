"""The weightless flow backend against analytic ground truth: a translating texture's middle
frame is the texture shifted by half the motion, and a moving object lands halfway."""

import cv2
import numpy as np
import pytest

from services.interpolation.flow import FlowInterpolator

BORDER = 16  # pixels near the edges see texture that enters or leaves the frame


def texture(height: int, width: int, shift: tuple[float, float], seed: int = 0) -> np.ndarray:
    """A smooth colour texture (a sum of plane waves, periods 10-60 px) moved by `shift`
    pixels, evaluated exactly at every pixel (no resampling)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    xs, ys = xs - shift[0], ys - shift[1]
    image = np.zeros((height, width, 3))
    for _ in range(16):
        k = rng.uniform(2 * np.pi / 60, 2 * np.pi / 10)
        angle = rng.uniform(0, 2 * np.pi)
        phase, amplitude = rng.uniform(0, 2 * np.pi, 3), rng.uniform(0.3, 1.0, 3)
        wave = k * (np.cos(angle) * xs + np.sin(angle) * ys)
        image += amplitude * np.cos(wave[..., None] + phase)
    return np.clip(128 + 100 * image / 8, 0, 255).round().astype(np.uint8)


def middle(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in (first, second)]
    return FlowInterpolator().middle(gray[0], gray[1], [first], [second])[0]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    error = np.mean((a.astype(np.float64) - b) ** 2)
    return float(10 * np.log10(255**2 / error))


@pytest.mark.parametrize("motion", [(6.0, 3.0), (-11.0, 4.5), (0.7, -0.3)])
def test_the_middle_of_a_translating_texture_is_the_texture_moved_halfway(motion):
    height, width = 240, 320
    first = texture(height, width, (0.0, 0.0))
    second = texture(height, width, motion)
    truth = texture(height, width, (motion[0] / 2, motion[1] / 2))
    result = middle(first, second)
    inner = np.s_[BORDER:-BORDER, BORDER:-BORDER]
    assert psnr(result[inner], truth[inner]) >= 30.0
    if np.hypot(*motion) > 2:  # a blend without motion is far off (not for sub-pixel motion)
        average = (first.astype(np.float64) + second) / 2
        assert psnr(average[inner], truth[inner]) < psnr(result[inner], truth[inner]) - 5


def test_a_moving_object_lands_halfway_over_a_static_background():
    background = texture(180, 320, (0.0, 0.0), seed=3)

    def scene(x: int) -> np.ndarray:
        image = background.copy()
        cv2.circle(image, (x, 90), 30, (250, 250, 250), -1, cv2.LINE_AA)
        return image

    result = middle(scene(120), scene(160))
    bright = np.all(result > 240, axis=-1)
    ys, xs = np.nonzero(bright)
    assert abs(xs.mean() - 140) < 1.5 and abs(ys.mean() - 90) < 1.5
    assert abs(bright.sum() - np.pi * 30**2) < 0.1 * np.pi * 30**2  # one disc, not two ghosts
    truth = scene(140)
    far = np.ones(bright.shape, bool)
    far[40:140, 70:210] = False  # away from the disc's path: the background is untouched
    assert psnr(result[far], truth[far]) >= 40.0
