"""One colour per track id, the same in every picture and file of a run (render, previews,
plots, exports)."""

# sRGB, 0-255: well separated hues that stay readable over video frames.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (188, 189, 34),
    (23, 190, 207),
    (127, 127, 127),
)


def track_color(track_id: int) -> tuple[int, int, int]:
    """The track's colour as sRGB (r, g, b), each 0-255."""
    return PALETTE[int(track_id) % len(PALETTE)]
