"""The NLF stand-in for tests (the generator lives in services/pose/test_model.py for the CLI)."""

from services.pose.test_model import (
    BODY_HEIGHT_MM,
    DEFAULT_DETECTIONS,
    UNCERTAINTY_SCALE,
    canonical_points,
    install_test_models,
    make_fake_nlf,
)

__all__ = [
    "BODY_HEIGHT_MM",
    "DEFAULT_DETECTIONS",
    "UNCERTAINTY_SCALE",
    "canonical_points",
    "install_test_models",
    "make_fake_nlf",
]
