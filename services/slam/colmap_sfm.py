"""Structure from motion of a sequence of keyframes with pycolmap (COLMAP 4.x).

SIFT on the unmasked pixels only (person pixels are blacked out and excluded by per-image
masks), sequential matching, then global mapping (GLOMAP) with bundle adjustment. Consecutive
video frames have small baselines, which COLMAP's two-view classification would label
"planar or panoramic" and drop; that classification is switched off
(`max_H_inlier_ratio` = 1), which the measured walking scenes need (0.2-0.7% ATE instead
of several percent with the incremental mapper's defaults). Neither mapper wins on every
sequence (each sometimes settles in a bent solution with two to three times the reprojection
error of the right one), so `auto` runs both on the same matches and keeps the one that
registers more keyframes, then the one with the lower mean reprojection error.
"""

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SfmOptions:
    """Knobs of the reconstruction (defaults tested on the synthetic walking scenes)."""

    max_features: int = 2048
    overlap: int = 8  # each keyframe is matched with this many following ones
    mapper: str = "auto"  # "global" (GLOMAP), "incremental", or "auto": both, the better kept
    threads: int = 0  # 0: every core

    def thread_count(self) -> int:
        return self.threads or max(os.cpu_count() or 1, 1)


@dataclass
class SfmResult:
    """Keyframe poses (world = the reconstruction's frame, arbitrary scale) and calibration."""

    registered: np.ndarray  # (K,) bool
    rotation: np.ndarray  # (K, 3, 3) world->camera
    centre: np.ndarray  # (K, 3) camera centres
    focal: float  # pixels at the working resolution
    reprojection_error_px: float
    points: np.ndarray  # (P, 3) sparse 3-D points
    point_views: list[list[tuple[int, float, float]]]  # per point: (keyframe, x, y) observations
    mapper: str


def reconstruct(
    image_dir: Path,
    names: list[str],
    mask_dir: Path,
    workdir: Path,
    focal: float,
    refine_focal: bool,
    options: SfmOptions = SfmOptions(),
    check_cancelled=lambda: None,
) -> SfmResult:
    """Reconstructs the keyframe images `names` of `image_dir` (one size; person pixels already
    blacked out) with COLMAP masks `mask_dir/<name>.png` (0 = excluded). `focal` is the prior
    in pixels; it is kept when `refine_focal` is False."""
    import pycolmap

    width, height = _image_size(image_dir / names[0])
    workdir.mkdir(parents=True, exist_ok=True)
    database = workdir / "database.db"
    threads = options.thread_count()
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = "SIMPLE_PINHOLE"
    reader.camera_params = f"{focal},{width / 2},{height / 2}"  # COLMAP: pixel centres at +0.5
    reader.mask_path = mask_dir
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = threads
    extraction.sift.max_num_features = options.max_features
    pycolmap.extract_features(
        database, image_dir, image_names=names, camera_mode=pycolmap.CameraMode.SINGLE,
        reader_options=reader, extraction_options=extraction, device=pycolmap.Device.cpu,
    )  # fmt: skip
    check_cancelled()
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = threads
    pairing = pycolmap.SequentialPairingOptions()
    pairing.overlap = options.overlap
    pairing.quadratic_overlap = False
    pairing.num_threads = threads
    verification = pycolmap.TwoViewGeometryOptions()
    verification.max_H_inlier_ratio = 1.0  # never "planar or panoramic": small video baselines
    pycolmap.match_sequential(
        database, matching_options=matching, pairing_options=pairing,
        verification_options=verification, device=pycolmap.Device.cpu,
    )  # fmt: skip
    check_cancelled()
    mappers = ("incremental", "global") if options.mapper == "auto" else (options.mapper,)
    results = []
    for mapper in mappers:
        models = _map(pycolmap, mapper, database, image_dir, workdir, refine_focal, threads)
        results.append(_result(models, names, focal, mapper))
        check_cancelled()
    return min(results, key=lambda r: (-int(r.registered.sum()), _error_key(r)))


def _error_key(result: "SfmResult") -> float:
    error = result.reprojection_error_px
    return error if np.isfinite(error) else float("inf")


def _image_size(path: Path) -> tuple[int, int]:
    height, width = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).shape
    return width, height


def _map(pycolmap, mapper, database, image_dir, workdir, refine_focal, threads):
    out = workdir / f"sparse-{mapper}"
    out.mkdir(parents=True, exist_ok=True)
    if mapper == "global":
        options = pycolmap.GlobalPipelineOptions()
        options.num_threads = threads
        options.random_seed = 0
        options.mapper.num_threads = threads
        options.mapper.random_seed = 0
        options.mapper.bundle_adjustment.refine_focal_length = refine_focal
        options.mapper.bundle_adjustment.refine_principal_point = False
        options.mapper.bundle_adjustment.refine_extra_params = False
        return pycolmap.global_mapping(database, image_dir, out, options)
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = threads
    options.random_seed = 0
    options.ba_refine_focal_length = refine_focal
    options.ba_refine_principal_point = False
    options.ba_refine_extra_params = False
    return pycolmap.incremental_mapping(database, image_dir, out, options)


def _best_size(models: dict) -> int:
    return max((m.num_reg_images() for m in models.values()), default=0)


def _result(models: dict, names: list[str], focal: float, mapper: str) -> SfmResult:
    count = len(names)
    registered = np.zeros(count, bool)
    rotation = np.tile(np.eye(3), (count, 1, 1))
    centre = np.zeros((count, 3))
    if not models:
        return SfmResult(registered, rotation, centre, focal, float("nan"), np.zeros((0, 3)), [],
                         mapper)  # fmt: skip
    model = max(models.values(), key=lambda m: m.num_reg_images())
    index_of = {name: i for i, name in enumerate(names)}
    image_index = {}
    for image_id, image in model.images.items():
        if not image.has_pose:
            continue
        i = index_of[image.name]
        pose = image.cam_from_world()
        registered[i] = True
        rotation[i] = pose.rotation.matrix()
        centre[i] = image.projection_center()
        image_index[image_id] = i
    camera = next(iter(model.cameras.values()))
    points, views = [], []
    for point in model.points3D.values():
        obs = []
        for element in point.track.elements:
            if element.image_id in image_index:
                xy = model.images[element.image_id].points2D[element.point2D_idx].xy
                obs.append((image_index[element.image_id], float(xy[0]), float(xy[1])))
        points.append(point.xyz)
        views.append(obs)
    return SfmResult(
        registered, rotation, centre, float(camera.params[0]),
        float(model.compute_mean_reprojection_error()),
        np.asarray(points, np.float64).reshape(-1, 3), views, mapper,
    )
