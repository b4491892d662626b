"""Metric monocular depth (transformers' Depth Anything metric architecture) for the SLAM scale.

The model folder holds `config.json` and `model.safetensors` as transformers saves them
(`save_pretrained`); it is loaded offline, weights only (safetensors: no pickle). Tests build
the same architecture from a small config with random weights.
"""

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from services.common.frames import IMAGENET_MEAN, IMAGENET_STD

PATCH = 14


class MetricDepthModel(Protocol):
    """Predicts metric depth for an image."""

    def predict(self, image: np.ndarray) -> np.ndarray:
        """RGB uint8 (H, W, 3) -> depth in metres (H, W)."""


class TransformersMetricDepth:
    """A `MetricDepthModel` around `DepthAnythingForDepthEstimation` (metric head)."""

    def __init__(self, model: torch.nn.Module, device: str, input_short_side: int = 518):
        self.model = model.eval().to(device)
        self.device = device
        self.input_short_side = input_short_side
        self._mean = torch.tensor(IMAGENET_MEAN, device=device)[:, None, None]
        self._std = torch.tensor(IMAGENET_STD, device=device)[:, None, None]

    @classmethod
    def load(cls, folder: Path, device: str) -> "TransformersMetricDepth":
        from transformers import DepthAnythingForDepthEstimation

        model = DepthAnythingForDepthEstimation.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True
        )
        return cls(model, device)

    @torch.inference_mode()
    def predict(self, image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        scale = self.input_short_side / min(height, width)
        size = [max(PATCH, int(round(d * scale / PATCH)) * PATCH) for d in (height, width)]
        x = torch.from_numpy(image).to(self.device).permute(2, 0, 1)[None].float() / 255
        x = torch.nn.functional.interpolate(x, size=size, mode="bicubic", align_corners=False)
        x = (x - self._mean) / self._std
        depth = self.model(pixel_values=x).predicted_depth[:, None]
        depth = torch.nn.functional.interpolate(depth, size=(height, width), mode="bilinear",
                                                align_corners=False)  # fmt: skip
        return depth[0, 0].float().cpu().numpy()
