"""Structure from motion of a sequence of keyframes with pycolmap (COLMAP 4.x).

SIFT on the unmasked pixels only (person pixels are blacked out and excluded by per-image
masks), sequential matching, then global mapping (GLOMAP) with bundle adjustment. Consecutive
video frames have small baselines, which COLMAP's two-view classification would label
"planar or panoramic" and drop; that classification is switched off
(`max_H_inlier_ratio` = 1), which the measured walking scenes need (0.2-0.7% ATE instead
of several percent with the incremental mapper's defaults). The global positioning
starts from random positions and on a forward walk sometimes settles in a bent solution
(ATE 1.5-2.5% instead of 0.1-0.3%, measured); the bent ones always had the higher mean
reprojection error, so `auto` maps from `global_seeds` random starts on the same matches and
keeps the one registering most keyframes with the lowest reprojection error; the incremental
mapper runs only when no global run registered every keyframe.

Repeatable: the images are numbered in name order, every RANSAC and mapper is seeded, and
mapping runs on one thread (see `SfmOptions.mapping_threads`); extraction and matching stay
parallel. The same keyframes gave the same poses bit for bit in one developer's runs, but two
runs in a fresh checkout's suite differed by 0.5 mm on a 1 m walk and 0.06% in focal length
with focal refinement (tests/test_slam_colmap.py bounds it at 0.1% of the path).
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

    max_features: int = 1500
    first_octave: int | None = None  # -1 doubles the image first (3x slower); None: -1 below
    small_width: int = 480  # ... this width, else 0
    overlap: int = 6  # each keyframe is matched with this many following ones
    min_e_f_inlier_ratio: float = 0.7
    mapper: str = "auto"  # "global" (GLOMAP), "incremental", or "auto" (see the module)
    global_seeds: int = 3  # global mapping runs from different random starts; the best is kept
    small_problem: int = 40  # up to this many keyframes, twice the seeds (they are cheap)
    threads: int = 0  # feature extraction and matching; 0: every core
    # Bundle adjustment and global positioning on several threads sum in a varying order, so
    # the same matches gave trajectories differing by up to 0.3 mm per 4 m; one thread removes
    # that part of the spread (speed: docs/benchmarks.md, slam).
    mapping_threads: int = 1

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

    pycolmap.logging.minloglevel = 2  # errors only: COLMAP's progress lines flood the log
    pycolmap.set_random_seed(0)
    width, height = _image_size(image_dir / names[0])
    workdir.mkdir(parents=True, exist_ok=True)
    database = workdir / "database.db"
    database.unlink(missing_ok=True)  # a retry in the same folder starts afresh
    threads = options.thread_count()
    camera_params = [focal, width / 2, height / 2]  # COLMAP: pixel centres at +0.5
    _register_images_in_order(pycolmap, database, names, width, height, camera_params)
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = "SIMPLE_PINHOLE"
    reader.camera_params = ",".join(str(v) for v in camera_params)
    reader.mask_path = mask_dir
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = threads
    extraction.sift.max_num_features = options.max_features
    extraction.sift.first_octave = options.first_octave if options.first_octave is not None \
        else (-1 if width < options.small_width else 0)  # fmt: skip
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
    verification.ransac.random_seed = 0  # each pair seeded alike, whichever thread runs it
    verification.max_H_inlier_ratio = 1.0  # never "planar or panoramic": small video baselines
    # With the focal prior, a pair is calibrated (relative pose from E) unless F explains far
    # more matches than E; COLMAP's 0.95 leaves most short-baseline video pairs uncalibrated.
    verification.min_E_F_inlier_ratio = options.min_e_f_inlier_ratio
    pycolmap.match_sequential(
        database, matching_options=matching, pairing_options=pairing,
        verification_options=verification, device=pycolmap.Device.cpu,
    )  # fmt: skip
    check_cancelled()
    if refine_focal:
        calibration = pycolmap.ViewGraphCalibrationOptions()
        calibration.random_seed = 0
        pycolmap.calibrate_view_graph(database, calibration)
    results = []
    if options.mapper in ("auto", "global"):
        seeds = options.global_seeds * (2 if len(names) <= options.small_problem else 1)
        for seed in range(seeds):
            models = _map(pycolmap, "global", database, image_dir, workdir / f"global-{seed}",
                          refine_focal, options.mapping_threads, seed)  # fmt: skip
            results.append(_result(models, names, focal, "global"))
            check_cancelled()
    best = _best(results)
    if options.mapper == "incremental" or (
        options.mapper == "auto" and (best is None or not best.registered.all())
    ):
        models = _map(pycolmap, "incremental", database, image_dir, workdir / "incremental",
                      refine_focal, options.mapping_threads, 0)  # fmt: skip
        results.append(_result(models, names, focal, "incremental"))
    return _best(results)


def _register_images_in_order(pycolmap, database: Path, names: list[str], width: int,
                              height: int, params: list[float]) -> None:  # fmt: skip
    """One camera, one rig and the images (with their frames) written in name order before
    extraction, which reuses the rows: COLMAP's parallel extraction would otherwise number the
    images in the order its threads finish, and the ids order the pairs of the two-view
    verification and the mapping, so the same video gave different trajectories."""
    db = pycolmap.Database.open(database)
    try:
        camera = pycolmap.Camera(model="SIMPLE_PINHOLE", width=width, height=height,
                                 params=params)  # fmt: skip
        camera.has_prior_focal_length = True
        camera_id = db.write_camera(camera)
        sensor = pycolmap.sensor_t(pycolmap.SensorType.CAMERA, camera_id)
        rig = pycolmap.Rig()
        rig.add_ref_sensor(sensor)
        rig_id = db.write_rig(rig)
        for name in names:
            image_id = db.write_image(pycolmap.Image(name=name, camera_id=camera_id))
            frame = pycolmap.Frame()
            frame.rig_id = rig_id
            frame.add_data_id(pycolmap.data_t(sensor, image_id))
            db.write_frame(frame)
    finally:
        db.close()


def _best(results: list["SfmResult"]) -> "SfmResult | None":
    """The result registering most keyframes, then with the lowest reprojection error."""
    if not results:
        return None
    return min(results, key=lambda r: (-int(r.registered.sum()), _error_key(r)))


def _error_key(result: "SfmResult") -> float:
    error = result.reprojection_error_px
    return error if np.isfinite(error) else float("inf")


def _image_size(path: Path) -> tuple[int, int]:
    height, width = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).shape
    return width, height


def _map(pycolmap, mapper, database, image_dir, out, refine_focal, threads, seed):
    out.mkdir(parents=True, exist_ok=True)
    if mapper == "global":
        options = pycolmap.GlobalPipelineOptions()
        options.num_threads = threads
        options.random_seed = seed
        options.mapper.num_threads = threads
        options.mapper.random_seed = seed
        options.mapper.bundle_adjustment.refine_focal_length = refine_focal
        options.mapper.bundle_adjustment.refine_principal_point = False
        options.mapper.bundle_adjustment.refine_extra_params = False
        return pycolmap.global_mapping(database, image_dir, out, options)
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = threads
    options.random_seed = seed
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
        registered,
        rotation,
        centre,
        float(camera.params[0]),
        float(model.compute_mean_reprojection_error()),
        np.asarray(points, np.float64).reshape(-1, 3),
        views,
        mapper,
    )
