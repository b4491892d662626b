"""Person candidates on the init frame: a detector's soft masks made exclusive and clean."""

from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from rlemasklib import RLEMask
from torchvision.models.detection import maskrcnn_resnet50_fpn

from services.tracking.morph import cleanup_mask
from services.tracking.selection import Candidate

COCO_PERSON = 1


class PersonDetector(Protocol):
    """Finds persons in one image."""

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """RGB uint8 [H, W, 3] -> (soft masks float [n, H, W] in 0..1, scores [n]), persons
        only, in descending score order."""


def person_candidates(image: np.ndarray, detector: PersonDetector) -> list[Candidate]:
    """Candidates in descending score order: each pixel goes to the instance with the highest
    soft mask value, then masks are thresholded at 0.5 and cleaned (reference B.12 step 3).
    Instances left empty are dropped."""
    soft, scores = detector.detect(image)
    if len(scores) == 0:
        return []
    exclusive = np.where(soft == soft.max(0, keepdims=True), soft, 0)
    candidates = []
    for mask, score in zip(exclusive > 0.5, scores, strict=True):
        cleaned = cleanup_mask(RLEMask.from_array(mask))
        if cleaned.area() > 0:
            candidates.append(Candidate(len(candidates), float(score), cleaned))
    return candidates


def build_maskrcnn(**options) -> torch.nn.Module:
    """torchvision's Mask R-CNN ResNet-50 FPN for the 91 COCO classes, without weights;
    `options` go to torchvision (e.g. min_size, rpn_post_nms_top_n_test)."""
    return maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, **options)


class MaskRCNNDetector:
    """A `PersonDetector` on torchvision's COCO Mask R-CNN; keeps persons above a score."""

    def __init__(self, model: torch.nn.Module, device: str, score_threshold: float = 0.5):
        self.model = model.eval().to(device)
        self.device = device
        self.score_threshold = score_threshold

    @classmethod
    def load(
        cls, weights: Path, device: str, score_threshold: float = 0.5, **options
    ) -> "MaskRCNNDetector":
        """Loads a state dict file (weights only, no pickled code)."""
        model = build_maskrcnn(**options)
        model.load_state_dict(torch.load(weights, weights_only=True, map_location="cpu"))
        return cls(model, device, score_threshold)

    @torch.inference_mode()
    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tensor = torch.from_numpy(image).to(self.device).permute(2, 0, 1).float() / 255
        prediction = self.model([tensor])[0]
        keep = (prediction["labels"] == COCO_PERSON) & (prediction["scores"] > self.score_threshold)
        scores = prediction["scores"][keep]
        order = torch.argsort(scores, descending=True)
        masks = prediction["masks"][keep][order, 0]
        return masks.float().cpu().numpy(), scores[order].float().cpu().numpy()
