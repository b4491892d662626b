"""Interpolation stage: the video at twice its frame rate (RIFE v4.18 or weightless DIS flow)."""
