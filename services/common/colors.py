"""The colour of each track id, the same in every picture nlfpipe draws.

Renders, previews, plots, the candidates preview and the exports all call `track_color`, so a
person keeps one colour from the tracking stage to the final video.
"""

#: Distinct, saturated colours that stay readable over video frames and under shading (RGB).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (66, 133, 244),  # blue
    (234, 67, 53),  # red
    (52, 168, 83),  # green
    (251, 188, 5),  # amber
    (171, 71, 188),  # purple
    (0, 172, 193),  # cyan
    (255, 112, 67),  # orange
    (158, 157, 36),  # olive
    (236, 64, 122),  # pink
    (121, 134, 203),  # indigo
)
#: Colour of people without a track (detector-mode detections, track id -1).
UNTRACKED_COLOR = (160, 160, 160)


def track_color(track_id: int) -> tuple[int, int, int]:
    """RGB (0-255) of a track id: the palette repeats every len(PALETTE) ids; negative ids
    (untracked people) are grey."""
    track_id = int(track_id)
    if track_id < 0:
        return UNTRACKED_COLOR
    return PALETTE[track_id % len(PALETTE)]


def track_color_float(track_id: int) -> tuple[float, float, float]:
    """`track_color` scaled to 0-1 (for OpenGL and matplotlib)."""
    return tuple(c / 255 for c in track_color(track_id))  # type: ignore[return-value]
