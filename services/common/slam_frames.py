"""Which video frames the slam stage may use, so that semseg segments only those.

A pure policy (no SLAM imports) shared by the flow, which passes the list to semseg, and by
the slam stage, which takes its keyframe candidates from it. The `colmap` backend (and `auto`,
which is colmap on machines without CUDA) chooses its keyframes among candidates spaced at
about CANDIDATE_RATE_HZ; `droid` tracks every frame, so every frame is segmented. Frames
that semseg skipped get, in the slam stage, the mask of the nearest segmented frame (dilated
for the motion in between) united with that frame's own track masks.
"""

CANDIDATE_RATE_HZ = 10.0
BACKENDS = ("auto", "colmap", "droid")


def candidate_stride(fps: float) -> int:
    """Frames between keyframe candidates: about CANDIDATE_RATE_HZ candidates per second."""
    return max(1, int(round(fps / CANDIDATE_RATE_HZ))) if fps > 0 else 1


def slam_frames(num_frames: int, fps: float, backend: str = "auto") -> list[int]:
    """The frames slam may use (and semseg must segment), increasing; the last frame included."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown slam backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if num_frames <= 0:
        return []
    stride = 1 if backend == "droid" else candidate_stride(fps)
    frames = list(range(0, num_frames, stride))
    if frames[-1] != num_frames - 1:
        frames.append(num_frames - 1)
    return frames
