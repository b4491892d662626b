"""Pose predictions: a bodycompress (zstd) stream with one record per video frame (docs/formats.md).

Every record keeps the track id of each person, its box, vertices and joints (mm, world frame of
the cameras) and their uncertainties (m), plus the camera of that frame. Frames where a track is
absent have no entry for it; a frame with nobody has an empty record, so record i is frame i.

The reader never unpickles: msgpack-numpy would turn an object array into ``pickle.loads``, so
records are decoded with a hook that refuses them (a writable bucket must not run code).
"""

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import msgpack_numpy
import numpy as np
from bodycompress import BodyCompressor
from bodycompress.backends import detect_backend
from bodycompress.bodycompress import decompress
from bodycompress.vertex_order import get_inverse_vertex_order, parse_vertex_order_header
from scipy.spatial.transform import Rotation

from services.common.errors import InvalidInput

FORMAT_NAME = "nlfpipe.predictions"
FORMAT_VERSION = 1
MEDIA_TYPE = "application/x-bodycompress"
QUANTIZATION_MM = 0.5
UNTRACKED = -1  # track id of detector-mode detections (no tracking without masks)

_HEADER_MAX_BYTES = 4 * 1024 * 1024
_METADATA_MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class FrameCamera:
    """One frame's camera: pixels, millimetres, world->camera rotation; x right, y down."""

    intrinsic_matrix: np.ndarray  # (3, 3), pixels of the full-resolution video
    rot_world_to_cam: np.ndarray  # (3, 3)
    optical_center: np.ndarray  # (3,), camera position in world coordinates, mm
    world_up: np.ndarray = field(default_factory=lambda: np.array([0.0, -1.0, 0.0]))
    distortion_coeffs: np.ndarray | None = None  # OpenCV order (k1 k2 p1 p2 k3 ...), or None

    def extrinsic_matrix(self) -> np.ndarray:
        """The 4x4 world->camera transform [R | -R t] in millimetres."""
        extrinsics = np.eye(4)
        extrinsics[:3, :3] = self.rot_world_to_cam
        extrinsics[:3, 3] = -self.rot_world_to_cam @ self.optical_center
        return extrinsics

    def to_dict(self) -> dict:
        """The bodycompress camera layout (``bodycompress.dict_to_cam`` reads it too)."""
        out = {
            "rotvec_w2c": Rotation.from_matrix(self.rot_world_to_cam).as_rotvec(),
            "loc": np.asarray(self.optical_center, np.float64),
            "intr": np.asarray(self.intrinsic_matrix, np.float64)[:2],
            "up": np.asarray(self.world_up, np.float64),
        }
        if self.distortion_coeffs is not None and np.any(self.distortion_coeffs):
            out["distcoef"] = np.asarray(self.distortion_coeffs, np.float64)
        return out

    @staticmethod
    def from_dict(d: Mapping) -> "FrameCamera":
        intrinsics = np.concatenate([np.asarray(d["intr"], np.float64), [[0.0, 0.0, 1.0]]])
        dist = d.get("distcoef")
        return FrameCamera(
            intrinsic_matrix=intrinsics,
            rot_world_to_cam=Rotation.from_rotvec(
                np.array(d["rotvec_w2c"], np.float64)
            ).as_matrix(),
            optical_center=np.asarray(d["loc"], np.float64),
            world_up=np.asarray(d.get("up", (0.0, -1.0, 0.0)), np.float64),
            distortion_coeffs=None if dist is None else np.asarray(dist, np.float64),
        )


@dataclass
class PredictionFrame:
    """Everyone estimated in one frame; row k of every array belongs to ``track_ids[k]``."""

    frame_index: int
    track_ids: np.ndarray  # (n,) int64, sorted ascending; UNTRACKED (-1) in detector mode
    boxes: np.ndarray  # (n, 4) float32, x, y, width, height in video pixels
    box_scores: np.ndarray  # (n,) float32: 1 for mask boxes, the detector score otherwise
    vertices: np.ndarray  # (n, V, 3) float32, mm, world frame
    joints: np.ndarray  # (n, J, 3) float32, mm, world frame
    vertex_uncertainties: np.ndarray  # (n, V) float32, m
    joint_uncertainties: np.ndarray  # (n, J) float32, m
    camera: FrameCamera

    @property
    def num_people(self) -> int:
        return len(self.track_ids)


class PredictionsWriter:
    """Writes a predictions file frame by frame; the final name appears only on a clean close.

    Frames must come in order 0, 1, 2, ... and ``close()`` checks that ``num_frames`` were
    written, so a frame can never be dropped silently. On an error (or ``abort()``) nothing is
    left under ``path``.
    """

    def __init__(
        self,
        path: Path,
        *,
        num_frames: int,
        num_vertices: int,
        num_joints: int,
        metadata: Mapping | None = None,
        compression_level: int | None = None,
    ):
        self.path = Path(path)
        self.num_frames = num_frames
        self.num_vertices = num_vertices
        self.num_joints = num_joints
        self.frames_written = 0
        self._partial = self.path.with_name(self.path.name + ".partial")
        full_metadata = {
            **(metadata or {}),
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "num_frames": num_frames,
            "num_vertices": num_vertices,
            "num_joints": num_joints,
            "units": {"points": "mm", "uncertainties": "m", "boxes": "px"},
        }
        self._compressor = BodyCompressor(
            str(self._partial),
            metadata=full_metadata,
            quantization_mm=QUANTIZATION_MM,
            compression="zstd",
            compression_level=compression_level,
            n_threads=1,
        )

    def append(self, frame: PredictionFrame) -> None:
        """Adds the next frame's record (raises ValueError on a wrong index, shape or value)."""
        if frame.frame_index != self.frames_written:
            raise ValueError(
                f"frame {frame.frame_index} given where frame {self.frames_written} was expected"
            )
        self._check(frame)
        self._compressor.append(
            frame_index=int(frame.frame_index),
            track_ids=np.asarray(frame.track_ids, np.int64),
            boxes=np.asarray(frame.boxes, np.float32).reshape(-1, 4),
            box_scores=np.asarray(frame.box_scores, np.float32),
            vertices=np.asarray(frame.vertices, np.float32),
            joints=np.asarray(frame.joints, np.float32),
            vertex_uncertainties=np.asarray(frame.vertex_uncertainties, np.float32),
            joint_uncertainties=np.asarray(frame.joint_uncertainties, np.float32),
            camera=frame.camera.to_dict(),
        )
        self.frames_written += 1

    def _check(self, frame: PredictionFrame) -> None:
        n = len(frame.track_ids)
        expected = {
            "boxes": (n, 4),
            "box_scores": (n,),
            "vertices": (n, self.num_vertices, 3),
            "joints": (n, self.num_joints, 3),
            "vertex_uncertainties": (n, self.num_vertices),
            "joint_uncertainties": (n, self.num_joints),
        }
        for name, shape in expected.items():
            value = np.asarray(getattr(frame, name))
            if value.shape != shape:
                raise ValueError(
                    f"frame {frame.frame_index}: {name} has shape {value.shape}, expected {shape}"
                )
            if not np.all(np.isfinite(value)):
                raise ValueError(f"frame {frame.frame_index}: {name} has non-finite values")
        ids = np.asarray(frame.track_ids)
        tracked = ids[ids != UNTRACKED]
        if len(np.unique(tracked)) != len(tracked):
            raise ValueError(f"frame {frame.frame_index}: repeated track ids {ids.tolist()}")

    def close(self) -> None:
        """Finalizes the file and moves it to ``path``; fails if frames are missing."""
        if self.frames_written != self.num_frames:
            self.abort()
            raise ValueError(
                f"{self.frames_written} frames were written but the video has {self.num_frames}"
            )
        self._compressor.close()
        os.replace(self._partial, self.path)

    def abort(self) -> None:
        """Stops writing and removes the partial file."""
        self._compressor.forceful_close()
        self._partial.unlink(missing_ok=True)

    def __enter__(self) -> "PredictionsWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _safe_decode(obj):
    if obj.get(b"nd") is True and obj.get(b"kind") == b"O":
        raise InvalidInput("predictions file holds a pickled object array; refusing to load it")
    return msgpack_numpy.decode(obj)


def _unpacker(file_like=None) -> msgpack.Unpacker:
    return msgpack.Unpacker(
        file_like,
        object_hook=_safe_decode,
        raw=False,
        strict_map_key=False,
        max_buffer_size=_METADATA_MAX_BYTES,
    )


def _read_first_object(f, backend, max_input: int):
    decompressor = backend.create_decompressor()
    unpacker = _unpacker()
    consumed = 0
    while consumed < max_input:
        chunk = f.read(256 * 1024)
        if not chunk:
            break
        consumed += len(chunk)
        unpacker.feed(decompressor.decompress(chunk))
        for obj in unpacker:
            return obj
        if decompressor.eof:
            break
    raise InvalidInput(f"{f.name}: truncated or not a predictions file")


class PredictionsReader:
    """Reads a predictions file; iterate for ``PredictionFrame`` records in frame order.

    With ``vertex_subset`` (indices into the body model's vertices) the records keep only those
    vertices and their uncertainties, in that order.
    """

    def __init__(self, path: Path, vertex_subset: np.ndarray | None = None):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                self._backend = detect_backend(f.read(16))
                f.seek(0)
                header = _read_first_object(f, self._backend, _HEADER_MAX_BYTES)
                if not isinstance(header, dict) or header.get("metadata_start") is None:
                    raise InvalidInput(f"{self.path}: incomplete predictions file (never closed)")
                f.seek(header["metadata_start"])
                self.metadata = _read_first_object(f, self._backend, _METADATA_MAX_BYTES)
        except ValueError as e:
            if isinstance(e, InvalidInput):
                raise
            raise InvalidInput(f"{self.path}: not a predictions file ({e})") from e
        if not isinstance(self.metadata, dict) or self.metadata.get("format") != FORMAT_NAME:
            raise InvalidInput(f"{self.path}: not an {FORMAT_NAME} file")
        if self.metadata.get("format_version") != FORMAT_VERSION:
            raise InvalidInput(
                f"{self.path}: format version {self.metadata.get('format_version')} is not "
                f"supported (this reader knows version {FORMAT_VERSION})"
            )
        self.num_frames = int(header["length"])
        self.num_vertices = int(self.metadata["num_vertices"])
        self.num_joints = int(self.metadata["num_joints"])
        self._data_start = header["data_start"]
        order = parse_vertex_order_header(header.get("vertex_order"))
        if isinstance(order, np.ndarray):
            self._inverse_order = np.argsort(order)
        elif order is None:
            self._inverse_order = None
        else:
            self._inverse_order = get_inverse_vertex_order(self.num_vertices)
        self._vertex_index = _vertex_index(self._inverse_order, vertex_subset)

    def __len__(self) -> int:
        return self.num_frames

    def __iter__(self) -> Iterator[PredictionFrame]:
        with open(self.path, "rb") as f:
            f.seek(self._data_start)
            with self._backend.open_reader(f) as reader:
                for count, raw in enumerate(_unpacker(reader)):
                    if count >= self.num_frames:
                        break
                    yield self._frame(decompress(dict(raw)))

    def _frame(self, d: dict) -> PredictionFrame:
        vertices = d["vertices"]
        vertex_unc = d["vertex_uncertainties"]
        if self._vertex_index is not None:
            vertices = vertices[..., self._vertex_index, :]
            vertex_unc = vertex_unc[..., self._vertex_index]
        return PredictionFrame(
            frame_index=int(d["frame_index"]),
            track_ids=np.asarray(d["track_ids"], np.int64),
            boxes=np.asarray(d["boxes"], np.float32).reshape(-1, 4),
            box_scores=np.asarray(d["box_scores"], np.float32),
            vertices=vertices.astype(np.float32, copy=False),
            joints=d["joints"].astype(np.float32, copy=False),
            vertex_uncertainties=vertex_unc.astype(np.float32, copy=False),
            joint_uncertainties=d["joint_uncertainties"].astype(np.float32, copy=False),
            camera=FrameCamera.from_dict(d["camera"]),
        )


def _vertex_index(
    inverse_order: np.ndarray | None, vertex_subset: np.ndarray | None
) -> np.ndarray | None:
    """Stored positions of the wanted vertices (all, in body-model order, without a subset);
    None when the stored order is already the wanted one."""
    if vertex_subset is None:
        return inverse_order
    subset = np.asarray(vertex_subset, np.int64)
    return subset if inverse_order is None else inverse_order[subset]


@dataclass
class TrackPredictions:
    """One track's predictions over the frames where it is present (T_k of them)."""

    track_id: int
    frame_indices: np.ndarray  # (T_k,) int64, ascending
    boxes: np.ndarray  # (T_k, 4) px
    box_scores: np.ndarray  # (T_k,)
    vertices: np.ndarray  # (T_k, V, 3) mm
    joints: np.ndarray  # (T_k, J, 3) mm
    vertex_uncertainties: np.ndarray  # (T_k, V) m
    joint_uncertainties: np.ndarray  # (T_k, J) m

    def dense(self, num_frames: int) -> dict[str, np.ndarray]:
        """All fields over every frame: NaN where the track is absent, plus a ``valid`` mask."""
        out: dict[str, np.ndarray] = {"valid": np.zeros(num_frames, bool)}
        out["valid"][self.frame_indices] = True
        for name in _TRACK_FIELDS:
            value = getattr(self, name)
            full = np.full((num_frames, *value.shape[1:]), np.nan, np.float32)
            full[self.frame_indices] = value
            out[name] = full
        return out


@dataclass
class PredictionCameras:
    """Per-frame cameras stacked over the T frames of the video."""

    intrinsic_matrix: np.ndarray  # (T, 3, 3) px
    rot_world_to_cam: np.ndarray  # (T, 3, 3)
    optical_center: np.ndarray  # (T, 3) mm
    world_up: np.ndarray  # (T, 3)


@dataclass
class PredictionTracks:
    """A whole predictions file regrouped by track (``read_tracks``)."""

    metadata: dict
    num_frames: int
    cameras: PredictionCameras
    tracks: dict[int, TrackPredictions]


def read_tracks(path: Path, track_ids: list[int] | None = None) -> PredictionTracks:
    """Reads a predictions file into per-track arrays (all tracks, or only ``track_ids``).

    Detector-mode detections (track id -1) belong to no track and are left out.
    """
    reader = PredictionsReader(path)
    wanted = None if track_ids is None else set(track_ids)
    parts: dict[int, dict[str, list]] = {}
    intrinsics, rotations, centers, ups = [], [], [], []
    for frame in reader:
        cam = frame.camera
        intrinsics.append(cam.intrinsic_matrix)
        rotations.append(cam.rot_world_to_cam)
        centers.append(cam.optical_center)
        ups.append(cam.world_up)
        for row, track_id in enumerate(frame.track_ids.tolist()):
            if track_id == UNTRACKED or (wanted is not None and track_id not in wanted):
                continue
            part = parts.setdefault(track_id, {"frame_indices": []})
            part["frame_indices"].append(frame.frame_index)
            for name in _TRACK_FIELDS:
                part.setdefault(name, []).append(getattr(frame, name)[row])
    tracks = {
        track_id: TrackPredictions(
            track_id=track_id,
            frame_indices=np.asarray(part["frame_indices"], np.int64),
            **{name: np.stack(part[name]) for name in _TRACK_FIELDS},
        )
        for track_id, part in sorted(parts.items())
    }
    cameras = PredictionCameras(
        intrinsic_matrix=np.asarray(intrinsics).reshape(-1, 3, 3),
        rot_world_to_cam=np.asarray(rotations).reshape(-1, 3, 3),
        optical_center=np.asarray(centers).reshape(-1, 3),
        world_up=np.asarray(ups).reshape(-1, 3),
    )
    return PredictionTracks(
        metadata=reader.metadata, num_frames=reader.num_frames, cameras=cameras, tracks=tracks
    )


_TRACK_FIELDS = (
    "boxes",
    "box_scores",
    "vertices",
    "joints",
    "vertex_uncertainties",
    "joint_uncertainties",
)
