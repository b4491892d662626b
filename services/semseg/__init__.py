"""Semseg stage: per-frame semantic person masks (DeepLabV3) for camera estimation."""
