"""The `colmap` backend: keyframes by feature motion, SfM of the keyframes with pycolmap
(in overlapping chunks for long videos), every other frame interpolated on SE(3).

Three decoding passes, none holding more than one frame: (1) KLT motion on the keyframe
candidates (keyframes, static test, texture and coverage checks), (2) the keyframes written
as images with their masks, (3) nothing else: the non-keyframes are interpolated.
"""

from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from services.common.errors import PreconditionFailed
from services.slam.backend import (
    ADVICE,
    CameraPrior,
    DepthSamples,
    FrameSource,
    Trajectory,
    static_trajectory,
)
from services.slam.chunks import join_chunks, plan_chunks
from services.slam.colmap_sfm import SfmOptions, SfmResult, reconstruct
from services.slam.geometry import fov_from_focal, interpolate
from services.slam.keyframes import KeyframeRules, KeyframeSelector, MotionAnalysis


@dataclass(frozen=True)
class ColmapSettings:
    """Parameters of the colmap backend."""

    rules: KeyframeRules = KeyframeRules()
    sfm: SfmOptions = SfmOptions()
    chunk_keyframes: int = 150  # keyframes per reconstruction; longer videos are chunked
    chunk_overlap: int = 12
    max_person_fraction: float = 0.85  # mean masked fraction above which SLAM is refused
    max_unregistered_gap: int = 2  # consecutive keyframes a chunk may fail to register


class ColmapBackend:
    """SfM on the CPU (pycolmap); see the module docstring."""

    name = "colmap"
    size_multiple = 2

    def __init__(self, settings: ColmapSettings = ColmapSettings()):
        self.settings = settings

    def estimate(self, source: FrameSource, prior: CameraPrior, run) -> Trajectory:
        settings = self.settings
        with run.step("keyframes"):
            motion, person_fraction = self._analyse(source, prior, run)
        details = {
            "candidates": motion.candidates,
            "max_static_displacement_px": round(motion.max_static_displacement_px, 3),
            "mean_person_fraction": round(person_fraction, 4),
        }
        if person_fraction > settings.max_person_fraction:
            raise PreconditionFailed(
                f"people cover {person_fraction:.0%} of the frames on average; too little "
                f"background is left to estimate the camera; {ADVICE}"
            )
        if not motion.textured:
            raise PreconditionFailed(
                "the video's background has too little texture to track the camera; " + ADVICE
            )
        if motion.static:
            return static_trajectory(source.num_frames, prior.focal,
                                     "given" if prior.known else "default", details)  # fmt: skip
        workdir = run.workdir / "colmap"
        with run.step("write keyframes"):
            names = self._write_keyframes(source, motion.keyframes, workdir, run)
        keyframes = motion.keyframes
        chunks = plan_chunks(list(range(len(keyframes))), settings.chunk_keyframes,
                             settings.chunk_overlap)  # fmt: skip
        focal, refine = prior.focal, not prior.known
        parts, errors, chunk_reports, depth_samples = [], [], [], []
        with run.step("reconstruct"):
            for c, chunk in enumerate(chunks):
                run.progress(c, len(chunks), f"{len(chunk)} keyframes", "reconstruct")
                result = reconstruct(
                    workdir / "images", [names[i] for i in chunk], workdir / "masks",
                    workdir / f"chunk-{c}", focal, refine, settings.sfm, run.check_cancelled,
                )  # fmt: skip
                frames, rotations, centres = self._registered(result, [keyframes[i] for i in chunk])
                parts.append((frames, rotations, centres))
                errors.append(result.reprojection_error_px)
                chunk_reports.append({"keyframes": len(chunk), "mapper": result.mapper,
                                      "registered": int(result.registered.sum()),
                                      "reprojection_error_px": round(result.reprojection_error_px,
                                                                     4)})  # fmt: skip
                depth_samples.append(_depth_samples(result, [keyframes[i] for i in chunk]))
                if refine:  # later chunks keep the first chunk's calibration
                    focal, refine = result.focal, False
                    _check_focal(focal, source.shape)
        frames, rotations, centres, scales = join_chunks(parts)
        depth_samples = _in_first_chunk_units(depth_samples, scales)
        order = np.argsort(frames)
        key_frames = np.asarray(frames)[order]
        all_r, all_c = interpolate(key_frames, rotations[order], centres[order],
                                   np.arange(source.num_frames))  # fmt: skip
        details.update(chunks=chunk_reports, chunk_scales=[round(s, 5) for s in scales],
                       keyframes_registered=len(frames))  # fmt: skip
        return Trajectory(
            rotations=all_r,
            centres=all_c,
            keyframes=sorted(int(f) for f in frames),
            focal=focal,
            focal_source="given" if prior.known else "refined by bundle adjustment",
            static=False,
            reprojection_error_px=float(np.nanmean(errors)),
            depth_samples=depth_samples,
            details=details,
        )

    def _analyse(self, source: FrameSource, prior: CameraPrior,
                 run) -> tuple[MotionAnalysis, float]:  # fmt: skip
        rules = self.settings.rules
        if not prior.known:
            most = max(rules.min_keyframes, rules.min_keyframes_unknown_focal)
            rules = replace(rules, min_keyframes=most)
        selector = KeyframeSelector(rules)
        masked = []
        for count, (_, image, mask) in enumerate(source.stream(set(source.candidates))):
            frame = source.candidates[count]
            selector.add(frame, cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), mask)
            masked.append(float(mask.mean()))
            if count % 20 == 0:
                run.progress(count, len(source.candidates), "choosing keyframes", "keyframes")
                run.check_cancelled()
        if len(source.candidates) < 2:
            raise PreconditionFailed(
                f"the video has {source.num_frames} frames; too short to estimate camera "
                f"motion; {ADVICE}"
            )
        return selector.finish(), float(np.mean(masked))

    def _write_keyframes(self, source: FrameSource, keyframes: list[int], workdir: Path,
                         run) -> list[str]:  # fmt: skip
        image_dir, mask_dir = workdir / "images", workdir / "masks"
        image_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        names = []
        for index, image, mask in source.stream(set(keyframes)):
            name = f"{index:07d}.png"
            blacked = np.where(mask[..., None], 0, image).astype(np.uint8)
            cv2.imwrite(str(image_dir / name), cv2.cvtColor(blacked, cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_PNG_COMPRESSION, 1])  # fmt: skip
            cv2.imwrite(str(mask_dir / f"{name}.png"), np.where(mask, 0, 255).astype(np.uint8))
            names.append(name)
            run.check_cancelled()
        return names

    def _registered(self, result: SfmResult, frames: list[int]):
        """The chunk's registered keyframes; PreconditionFailed when it broke apart."""
        missing = np.flatnonzero(~result.registered)
        gap = _longest_run(~result.registered)
        if (
            result.registered.sum() < max(3, len(frames) // 2)
            or gap > self.settings.max_unregistered_gap
            or (0 in missing and gap > 1)
        ):
            raise PreconditionFailed(
                f"the reconstruction broke into pieces: {len(missing)} of {len(frames)} keyframes "
                f"(frames {', '.join(str(frames[i]) for i in missing[:8])}"
                f"{' ...' if len(missing) > 8 else ''}) could not be registered; {ADVICE}"
            )
        keep = np.flatnonzero(result.registered)
        return [frames[i] for i in keep], result.rotation[keep], result.centre[keep]


def _longest_run(flags: np.ndarray) -> int:
    best = run = 0
    for f in flags:
        run = run + 1 if f else 0
        best = max(best, run)
    return best


def _check_focal(focal: float, shape: tuple[int, int]) -> None:
    fov = fov_from_focal(focal, shape[1], shape[0])
    if not 10 <= fov <= 140:
        raise PreconditionFailed(
            f"the focal length could not be estimated (bundle adjustment gave a {fov:.1f}° "
            "field of view); pass the camera's field of view with --fov"
        )


def _depth_samples(result: SfmResult, frames: list[int]) -> list[DepthSamples]:
    """Depths of the sparse points in each registered keyframe, at their observed pixels
    (COLMAP pixel centres are at +0.5)."""
    per_frame: dict[int, list[tuple[float, float, float]]] = {}
    for point, views in zip(result.points, result.point_views, strict=True):
        for k, x, y in views:
            depth = float(result.rotation[k, 2] @ (point - result.centre[k]))
            if depth > 0:
                per_frame.setdefault(k, []).append((x - 0.5, y - 0.5, depth))
    samples = []
    for k, rows in sorted(per_frame.items()):
        array = np.asarray(rows)
        samples.append(DepthSamples(frames[k], array[:, :2], array[:, 2]))
    return samples


def _in_first_chunk_units(per_chunk: list[list[DepthSamples]], scales: list[float]):
    """Depth samples of every chunk in the joined (first chunk's) units, one per keyframe."""
    seen, out = set(), []
    for samples, scale in zip(per_chunk, [1.0, *scales], strict=True):
        for sample in samples:
            if sample.frame not in seen:
                seen.add(sample.frame)
                out.append(DepthSamples(sample.frame, sample.xy, sample.depth * scale))
    return out


def with_chunk_size(settings: ColmapSettings, chunk_keyframes: int) -> ColmapSettings:
    """The same settings with another chunk size (tests force small chunks)."""
    return replace(settings, chunk_keyframes=chunk_keyframes,
                   chunk_overlap=min(settings.chunk_overlap, chunk_keyframes // 2))  # fmt: skip
