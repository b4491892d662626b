"""A textured static world seen by a moving camera, with light human-sized figures walking in it.

Ray-cast in NumPy (no GPU, no GL): the world is a room of axis-aligned textured rectangles
(floor, ceiling, walls, boxes); figures are 1.7 m billboards that turn towards the camera.
Everything static is dark (every channel below 90) and richly textured so that SIFT finds
features; the figures are light, so the weightless synthetic tracking and semseg backends
(`services.common.frames.light_mask`, gray > 100) find them.

Units: metres. Camera convention as in `nlfpipe.cameras/1`: x right, y down, z forward; world
up is -y, the floor is the plane y = FLOOR_Y.
"""

from dataclasses import dataclass, field
from pathlib import Path

import av
import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from services.common.formats.cameras import CameraTrack, intrinsics_from_fov

FLOOR_Y = 1.6
CEILING_Y = -2.4
FIGURE_HEIGHT_M = 1.7
FIGURE_WIDTH_M = 0.5
DARKEST, BRIGHTEST_STATIC = 8, 86
_TEXTURE_SIZE = 512
_TEXEL_M = 0.012


@dataclass(frozen=True)
class Rect:
    """An axis-aligned rectangle: coordinate `axis` equals `offset`; the two other coordinates
    (in increasing axis order) span [lo, hi]."""

    axis: int
    offset: float
    lo: tuple[float, float]
    hi: tuple[float, float]
    texture: int
    brightness: float = 1.0


def _texture(rng: np.random.Generator) -> np.ndarray:
    """A dark, detailed RGB texture (uint8, channels in DARKEST..BRIGHTEST_STATIC)."""
    size = _TEXTURE_SIZE
    gray = np.zeros((size, size), np.float32)
    for cells, amplitude in ((4, 18.0), (16, 14.0), (64, 10.0)):
        noise = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
        gray += amplitude * cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)
    canvas = np.zeros((size, size), np.float32)
    for _ in range(260):
        value = float(rng.uniform(-30, 30))
        x, y = (int(v) for v in rng.integers(0, size, 2))
        r = int(rng.integers(3, 18))
        if rng.random() < 0.5:
            cv2.circle(canvas, (x, y), r, value, -1, cv2.LINE_AA)
        else:
            cv2.rectangle(canvas, (x, y), (x + r, y + int(rng.integers(3, 18))), value, -1)
    gray = 46 + gray + canvas
    gray = cv2.GaussianBlur(gray, (0, 0), 1.0)
    tint = rng.uniform(0.85, 1.1, 3).astype(np.float32)
    rgb = gray[..., None] * tint
    return np.clip(rgb, DARKEST, BRIGHTEST_STATIC / 1.05).astype(np.uint8)


def _box(x: float, z: float, size: tuple[float, float, float], texture: int) -> list[Rect]:
    """The five visible faces of a box standing on the floor (centre x, z; size w, h, d)."""
    w, h, d = size
    x0, x1, z0, z1, top = x - w / 2, x + w / 2, z - d / 2, z + d / 2, FLOOR_Y - h
    return [
        Rect(0, x0, (top, z0), (FLOOR_Y, z1), texture, 0.9),
        Rect(0, x1, (top, z0), (FLOOR_Y, z1), texture, 0.85),
        Rect(2, z0, (x0, top), (x1, FLOOR_Y), texture, 1.0),
        Rect(2, z1, (x0, top), (x1, FLOOR_Y), texture, 0.95),
        Rect(1, top, (x0, z0), (x1, z1), texture, 1.05),
    ]


@dataclass
class World:
    """The static room, its textures, and the figures' floor positions per frame."""

    rects: list[Rect]
    textures: list[np.ndarray]  # float32 (S, S, 3)
    figure_paths: list[np.ndarray] = field(default_factory=list)  # each (T, 2): x, z on floor

    @classmethod
    def room(cls, seed: int = 0) -> "World":
        rng = np.random.default_rng(seed)
        textures = [_texture(rng).astype(np.float32) for _ in range(6)]
        rects = [
            Rect(1, FLOOR_Y, (-6, -4), (6, 14), 0),
            Rect(1, CEILING_Y, (-6, -4), (6, 14), 1, 0.9),
            Rect(0, -6, (CEILING_Y, -4), (FLOOR_Y, 14), 2),
            Rect(0, 6, (CEILING_Y, -4), (FLOOR_Y, 14), 3),
            Rect(2, 14, (-6, CEILING_Y), (6, FLOOR_Y), 4),
            Rect(2, -4, (-6, CEILING_Y), (6, FLOOR_Y), 5),
        ]
        for _ in range(5):
            x, z = rng.uniform(-4.5, 4.5), rng.uniform(7, 12)
            size = tuple(rng.uniform([0.6, 0.5, 0.6], [1.6, 1.8, 1.4]))
            rects += _box(x, z, size, int(rng.integers(0, 6)))
        return cls(rects, textures)

    def figure_centres(self, frame: int) -> np.ndarray:
        """(n, 3) centres of the figures' billboards in world coordinates (m)."""
        if not self.figure_paths:
            return np.zeros((0, 3))
        xz = np.stack([p[frame] for p in self.figure_paths])
        y = np.full(len(xz), FLOOR_Y - FIGURE_HEIGHT_M / 2)
        return np.stack([xz[:, 0], y, xz[:, 1]], axis=1)


def render(
    world: World,
    k: np.ndarray,
    rotation: np.ndarray,
    centre: np.ndarray,
    frame: int,
    width: int,
    height: int,
    background: bool = True,
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """RGB uint8 (H, W, 3), one bool (H, W) mask per figure and the depth (z, m) of every
    pixel, for a world->camera rotation and camera centre (m). `background=False` leaves the room
    out (figures only, in front of nothing: quick, for tests that need only their boxes)."""
    u, v = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    rays_cam = np.stack(
        [(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], axis=-1
    ).reshape(-1, 3)
    rays = rays_cam @ rotation.astype(np.float32)  # R^T d for each row d
    origin = centre.astype(np.float32)
    with np.errstate(divide="ignore"):
        inverse = [1.0 / rays[:, a] for a in range(3)]
    depth = np.full(len(rays), np.inf, np.float32)
    image = np.zeros((len(rays), 3), np.float32)
    for rect in world.rects if background else []:
        b, c = [a for a in range(3) if a != rect.axis]
        t = (np.float32(rect.offset) - origin[rect.axis]) * inverse[rect.axis]
        idx = np.flatnonzero((t > 1e-3) & (t < depth))
        t = t[idx]
        pb = origin[b] + t * rays[idx, b]
        pc = origin[c] + t * rays[idx, c]
        inside = (pb >= rect.lo[0]) & (pb <= rect.hi[0]) & (pc >= rect.lo[1]) & (pc <= rect.hi[1])
        idx, t, pb, pc = idx[inside], t[inside], pb[inside], pc[inside]
        if not len(idx):
            continue
        depth[idx] = t
        image[idx] = _sample(world.textures[rect.texture], pb, pc) * rect.brightness
    owner = np.full(len(rays), -1)
    centres = world.figure_centres(frame)
    for i, centre_i in enumerate(centres):
        rows = _billboard_rows(k, rotation, centre, centre_i, width, height)
        if rows is None:
            continue
        sub = slice(rows[0] * width, rows[1] * width)
        hit, t = _billboard_hits(rays[sub], origin, centre_i, depth[sub])
        where = np.flatnonzero(hit) + rows[0] * width
        depth[where] = t[hit]
        image[where] = _FIGURE_COLORS[i % len(_FIGURE_COLORS)]
        owner[where] = i
    masks = [owner == i for i in range(len(centres))]
    frame_rgb = np.clip(image, 0, 255).astype(np.uint8).reshape(height, width, 3)
    return frame_rgb, [m.reshape(height, width) for m in masks], depth.reshape(height, width)


_FIGURE_COLORS = [(230, 200, 170), (170, 220, 240), (210, 240, 190), (240, 180, 220)]


def _sample(texture: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Bilinear texture lookup at plane coordinates (m); the texture repeats."""
    size = texture.shape[0]
    x = np.mod(b / _TEXEL_M, size)
    y = np.mod(c / _TEXEL_M, size)
    x0, y0 = np.floor(x).astype(np.intp), np.floor(y).astype(np.intp)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x1, y1 = (x0 + 1) % size, (y0 + 1) % size
    tex = texture
    top = tex[y0, x0] * (1 - fx) + tex[y0, x1] * fx
    bottom = tex[y1, x0] * (1 - fx) + tex[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def _billboard_rows(k, rotation, camera_centre, centre, width, height):
    """Image rows [start, stop) that a figure's billboard can cover, None when off screen."""
    corners = centre + np.array([[dx, dy, dz] for dx in (-0.4, 0.4) for dy in (-1.0, 1.0)
                                 for dz in (-0.4, 0.4)])  # fmt: skip
    cam = (corners - camera_centre) @ rotation.T
    if (cam[:, 2] <= 0.05).any():
        return 0, height
    v = (cam[:, 1] / cam[:, 2]) * k[1, 1] + k[1, 2]
    start, stop = int(max(np.floor(v.min()) - 2, 0)), int(min(np.ceil(v.max()) + 3, height))
    return (start, stop) if stop > start else None


def _billboard_hits(rays, origin, centre, depth):
    """Pixels whose ray meets figure `index`'s silhouette nearer than `depth`."""
    normal = origin - centre
    normal[1] = 0.0
    normal /= max(np.linalg.norm(normal), 1e-6)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = ((centre - origin) @ normal) / (rays @ normal)
    points = origin + t[:, None] * rays
    side = np.array([normal[2], 0.0, -normal[0]], np.float32)
    s = (points - centre) @ side  # horizontal, m
    up = centre[1] - points[:, 1]  # height above the centre, m
    half_h, half_w = FIGURE_HEIGHT_M / 2, FIGURE_WIDTH_M / 2
    head_r = 0.12
    head = (s**2 + (up - (half_h - head_r)) ** 2) <= head_r**2
    rel = (half_h - 2 * head_r - up) / (FIGURE_HEIGHT_M - 2 * head_r)  # 0 at shoulders, 1 at feet
    body = (rel >= 0) & (rel <= 1) & (np.abs(s) <= half_w * (1 - 0.45 * rel))
    return (head | body) & (t > 1e-3) & (t < depth) & np.isfinite(t), t


# ---------------------------------------------------------------------------------------------
# camera paths and the video


def look_rotation(forward: np.ndarray) -> np.ndarray:
    """World->camera rotation of a camera looking along `forward` with zero roll (up = -y)."""
    z = forward / np.linalg.norm(forward)
    x = np.cross(z, [0.0, -1.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z])


def camera_path(kind: str, num_frames: int, fps: float, seed: int = 0, shake: bool = True):
    """(rotations (T, 3, 3) world->camera, centres (T, 3) m) of a named motion.

    forward: a 1 m/s walk along +z with sway and bob (stays in the room for about 8 s); pace:
    walking 4 m forward and back again every 8 s, any length; arc: a sideways arc around the
    room's middle; pan: standing, turning 25 degrees; static: not moving; nudge: 20 cm to the
    right.
    All but static have small handheld shake (accelerations that anchor a metric scale);
    `shake=False` leaves it out (the walk the figures keep pace with).
    """
    t = np.arange(num_frames) / fps
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, 6)
    shake = 0.02 * np.stack([np.sin(2.1 * t + phase[0]), np.sin(2.9 * t + phase[1]),
                             np.sin(1.7 * t + phase[2])], axis=1) * shake  # fmt: skip
    yaw_shake = 0.01 * np.sin(1.3 * t + phase[3])
    if kind == "forward":
        centres = np.stack([0.15 * np.sin(1.2 * t), 0.03 * np.sin(4 * t), 1.0 * t], 1) + shake
        yaw = 0.08 * np.sin(0.7 * t) + yaw_shake
    elif kind == "pace":
        z = 2.0 * (1 - np.cos(2 * np.pi * t / 8.0))
        centres = np.stack([0.3 * np.sin(0.5 * t), 0.03 * np.sin(4 * t), z], 1) + shake
        yaw = 0.08 * np.sin(0.7 * t) + yaw_shake
    elif kind == "arc":
        angle = 0.35 * t / max(t[-1], 1e-6) - 0.175
        centres = np.stack([5.5 * np.sin(angle), 0 * t, 5.5 - 5.5 * np.cos(angle)], 1) + shake
        yaw = angle * 0.5 + yaw_shake
    elif kind == "pan":
        centres = shake * 0.2
        yaw = np.radians(25) * t / max(t[-1], 1e-6) + yaw_shake
    elif kind == "static":
        centres = np.zeros((num_frames, 3))
        yaw = np.zeros(num_frames)
    elif kind == "nudge":
        centres = np.stack([0.2 * t / max(t[-1], 1e-6), 0 * t, 0 * t], 1)
        yaw = np.zeros(num_frames)
    else:
        raise ValueError(f"unknown camera path {kind!r}")
    pitch = np.radians(8) + 0.01 * np.sin(1.1 * t + phase[4]) * (kind != "static")
    rotations = np.stack([
        look_rotation(Rotation.from_euler("yx", [y, -p]).apply([0.0, 0.0, 1.0]))
        for y, p in zip(yaw, pitch, strict=True)
    ])  # fmt: skip
    return rotations, np.asarray(centres, np.float64)


def figure_paths(
    num_frames: int, fps: float, count: int, camera_centres: np.ndarray, seed: int = 0
) -> list[np.ndarray]:
    """Floor positions (T, 2) of `count` figures walking 3.5-5.5 m ahead of the camera, keeping
    pace with `camera_centres` (give the walk without its shake: people do not follow the
    operator's hand, and a figure copying the camera's accelerations would bias the
    people-anchored scale by the fraction it copies)."""
    rng = np.random.default_rng(seed + 1)
    t = np.arange(num_frames) / fps
    paths = []
    for i in range(count):
        ahead = 3.5 + 2.0 * (i + 0.5) / max(count, 1)
        lane = (i + 0.5) / max(count, 1) * 2.4 - 1.2
        speed = rng.uniform(0.5, 0.9) * (1 if i % 2 == 0 else -1)
        x = lane + 0.5 * np.sin(speed * t + rng.uniform(0, 1))
        z = (
            camera_centres[0, 2]
            + ahead
            + 0.6 * (camera_centres[:, 2] - camera_centres[0, 2])
            + 0.3 * np.sin(0.8 * t + i)
        )
        paths.append(np.stack([x, z], axis=1))
    return paths


@dataclass
class MovingCameraTruth:
    """What a generated moving-camera video shows: cameras (mm, `nlfpipe.cameras/1`), per-frame
    figure boxes (x, y, w, h) px, figure centres (m, world), and person masks when kept."""

    cameras: CameraTrack
    boxes: np.ndarray  # (F, T, 4), NaN where a figure is not visible
    centres_m: np.ndarray  # (F, T, 3)
    masks: list[list[np.ndarray]] | None  # per frame, per figure: bool (H, W)

    @property
    def path_length_m(self) -> float:
        steps = np.diff(self.cameras.optical_center, axis=0) / 1000
        return float(np.linalg.norm(steps, axis=1).sum())


def make_moving_camera_video(
    path: Path | None,
    seconds: float = 2.0,
    width: int = 320,
    height: int = 180,
    fps: float = 15,
    figures: int = 2,
    motion: str = "forward",
    fov_deg: float = 60.0,
    seed: int = 0,
    keep_masks: bool = False,
    crf: int = 16,
    background: bool = True,
) -> MovingCameraTruth:
    """Renders the world along `motion` and writes H.264 to `path` (None: render only;
    `background=False`: the figures only, see `render`)."""
    num_frames = int(round(seconds * fps))
    world = World.room(seed)
    rotations, centres = camera_path(motion, num_frames, fps, seed)
    walk = camera_path(motion, num_frames, fps, seed, shake=False)[1]
    world.figure_paths = figure_paths(num_frames, fps, figures, walk, seed)
    k = intrinsics_from_fov(fov_deg, width, height)
    boxes = np.full((figures, num_frames, 4), np.nan)
    masks = [] if keep_masks else None
    container = stream = None
    if path is not None:
        container = av.open(str(path), "w")
        stream = container.add_stream("libx264", rate=int(round(fps)))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": str(crf)}
    try:
        for t in range(num_frames):
            image, figure_masks, _ = render(world, k, rotations[t], centres[t], t, width, height,
                                            background)  # fmt: skip
            for i, m in enumerate(figure_masks):
                ys, xs = np.nonzero(m)
                if len(xs):
                    boxes[i, t] = (xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                   ys.max() - ys.min() + 1)  # fmt: skip
            if masks is not None:
                masks.append(figure_masks)
            if container is not None:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        if container is not None:
            container.mux(stream.encode())
    finally:
        if container is not None:
            container.close()
    cameras = CameraTrack(
        intrinsics=np.repeat(k[None], num_frames, 0),
        rotation=rotations,
        optical_center=centres * 1000,
        distortion=np.zeros((num_frames, 5)),
        world_up=np.array([0.0, -1.0, 0.0]),
        image_size=(width, height),
    )
    all_centres = np.stack([world.figure_centres(t) for t in range(num_frames)], axis=1) \
        if figures else np.zeros((0, num_frames, 3))  # fmt: skip
    return MovingCameraTruth(cameras, boxes, all_centres, masks)


def write_truth_masks(
    path: Path,
    truth: MovingCameraTruth,
    short_side: int = 0,
    frames: list[int] | None = None,
    union: bool = False,
) -> None:
    """The figures' true masks as an `nlfpipe.masks/1` file (track id = figure index, or one
    track 0 with `union`), at `short_side` (0: the video's size); `frames` limits the frames
    that carry masks (the others are empty and `meta.computed_frames` lists the kept ones)."""
    from rlemasklib import RLEMask

    from services.common.formats.masks import write_track_masks
    from services.common.frames import working_shape

    width, height = truth.cameras.image_size
    shape = working_shape(height, width, short_side) if short_side else (height, width)
    records = []
    for t, figure_masks in enumerate(truth.masks):
        record = {}
        if frames is None or t in frames:
            parts = [np.any(figure_masks, axis=0)] if union and figure_masks else figure_masks
            for i, m in enumerate(parts):
                small = cv2.resize(m.astype(np.uint8), (shape[1], shape[0]),
                                   interpolation=cv2.INTER_NEAREST)  # fmt: skip
                if small.any():
                    record[i] = RLEMask.from_array(small)
        records.append(record)
    meta = {"video_width": width, "video_height": height}
    if frames is not None:
        meta["computed_frames"] = sorted(frames)
    write_track_masks(path, records, shape[0], shape[1], meta)
