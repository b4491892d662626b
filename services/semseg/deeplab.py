"""DeepLabV3 ResNet-101 (torchvision, COCO with VOC labels): person probability per pixel."""

from pathlib import Path

import numpy as np
import torch
from torchvision.models.segmentation import deeplabv3_resnet101

from services.common.frames import IMAGENET_MEAN, IMAGENET_STD

VOC_PERSON = 15


def build_deeplabv3() -> torch.nn.Module:
    """The architecture of torchvision's COCO_WITH_VOC_LABELS_V1 weights, without weights."""
    return deeplabv3_resnet101(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)


class DeepLabPersonSegmenter:
    """A `PersonSegmenter`: softmax probability of the VOC person class.

    The model runs channels-last, the layout the frames arrive in ([B, H, W, 3]): on the CPU
    a 520x924 frame takes about 15% less time than channels-first, with the same output.
    """

    def __init__(self, model: torch.nn.Module, device: str):
        self.model = model.eval().to(device, memory_format=torch.channels_last)
        self.device = device
        self._mean = torch.tensor(IMAGENET_MEAN, device=device)[:, None, None]
        self._std = torch.tensor(IMAGENET_STD, device=device)[:, None, None]

    @classmethod
    def load(cls, weights: Path, device: str) -> "DeepLabPersonSegmenter":
        """Loads a state dict file (weights only, no pickled code)."""
        model = build_deeplabv3()
        model.load_state_dict(torch.load(weights, weights_only=True, map_location="cpu"))
        return cls(model, device)

    @torch.inference_mode()
    def person_probability(self, frames: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2).float() / 255
        batch = (batch - self._mean) / self._std
        logits = self.model(batch)["out"]
        return logits.softmax(1)[:, VOC_PERSON].float().contiguous().cpu().numpy()
