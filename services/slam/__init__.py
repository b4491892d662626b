"""Slam stage: per-frame cameras (COLMAP on the CPU, masked DROID-SLAM on a GPU)."""
