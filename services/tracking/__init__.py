"""Tracking stage: person video object segmentation (Mask R-CNN init + STCN propagation)."""
