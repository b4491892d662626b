"""The render stage's gRPC servicer: validates a request, renders and exports through run_stage."""

import contextlib
import logging
from functools import partial
from pathlib import Path

import numpy as np
import torch

from nlfpipe.render.v1 import render_pb2, render_pb2_grpc
from services.common.body_models import GENDER_TOKENS, BodyModels, file_identities
from services.common.errors import InvalidInput, ModelNotReady
from services.common.identity import ModelIdentity, with_identity
from services.common.server import (
    StageService,
    artifact_to_proto,
    stream_cached_run,
    summary_to_proto,
)
from services.common.settings import Settings
from services.common.stagerun import OutputFile, StageOutputs, StageResult, StageRun
from services.common.store import ArtifactStore
from services.render.bodies import BodyMeshes
from services.render.exports import write_exports
from services.render.gl import RendererInfo, renderer_info
from services.render.pipeline import RenderSettings, load_inputs, render

VERSION = "1"
BODY_MODEL = "smpl"
VIEW_NAMES = {render_pb2.VIEW_CAMERA: "camera", render_pb2.VIEW_WORLD: "world"}
EXPORT_NAMES = {
    render_pb2.EXPORT_FORMAT_GLB: "glb",
    render_pb2.EXPORT_FORMAT_BVH: "bvh",
    render_pb2.EXPORT_FORMAT_NPZ: "npz",
}
EXPORT_MEDIA_TYPES = {
    ".glb": "model/gltf-binary",
    ".bvh": "application/x-bvh",
    ".npz": "application/x-npz",
    ".json": "application/json",
}
EXPORT_PREFIX = "exports_"
INPUTS = ("video", "fits", "ground", "display_cameras", "viewer_cameras")
# The meshes are many small torch ops: one thread does them for about half the CPU time of two
# and leaves the cores to the rasterizer and the encoders.
TORCH_THREADS = 1
log = logging.getLogger(__name__)


def load_body_meshes(folder: Path, gender: str) -> BodyMeshes:
    from smplfitter.pt import BodyModel

    return BodyMeshes(BodyModel(BODY_MODEL, gender, model_root=str(folder)))


def validate(request: render_pb2.RunRequest) -> dict:
    """The canonical parameters of a request; InvalidInput names the bad field."""
    for name in INPUTS:
        if not request.HasField(name) or not getattr(request, name).uri:
            raise InvalidInput(f"{name}: the reference is required")
    views = []
    for view in request.views or VIEW_NAMES:
        if view not in VIEW_NAMES:
            raise InvalidInput(f"views: {view} is not VIEW_CAMERA or VIEW_WORLD")
        views.append(VIEW_NAMES[view])
    formats = []
    if not request.skip_exports:
        for fmt in request.export_formats or EXPORT_NAMES:
            if fmt not in EXPORT_NAMES:
                raise InvalidInput(f"export_formats: {fmt} is not GLB, BVH or NPZ")
            formats.append(EXPORT_NAMES[fmt])
    repeat = request.video_frame_repeat or 1
    if repeat not in (1, 2):
        raise InvalidInput(f"video_frame_repeat={request.video_frame_repeat} must be 1 or 2")
    for name in ("width", "height"):
        value = getattr(request, name)
        if value % 2 or (value and not 16 <= value <= 8192):
            raise InvalidInput(f"{name}={value} must be even and between 16 and 8192 (or 0)")
    opacity = request.mesh_opacity or 0.75
    if not (np.isfinite(opacity) and 0 < opacity <= 1):
        raise InvalidInput(f"mesh_opacity={request.mesh_opacity} must be in (0, 1]")
    crf = request.crf or 15
    if not 1 <= crf <= 51:
        raise InvalidInput(f"crf={request.crf} must be between 1 and 51")
    return {
        "views": sorted(set(views)),
        "width": int(request.width),
        "height": int(request.height),
        "video_frame_repeat": int(repeat),
        "mesh_opacity": float(opacity),
        "crf": int(crf),
        "preset": RenderSettings.preset,
        "export_formats": sorted(set(formats)),
    }


def _media_type(name: str) -> str:
    return EXPORT_MEDIA_TYPES.get(Path(name).suffix, "application/octet-stream")


def compute_render(run: StageRun, body_models: BodyModels[BodyMeshes]) -> StageOutputs:
    """The stage's compute function."""
    p = run.params
    with run.step("read"):
        inputs = load_inputs(*(run.inputs[name] for name in INPUTS), repeat=p["video_frame_repeat"])
        body_model = inputs.meta.get("body_model", BODY_MODEL)
        gender = inputs.meta.get("gender", "neutral")
        if body_model != BODY_MODEL or gender not in GENDER_TOKENS[BODY_MODEL]:
            raise InvalidInput(f"fits: body model {body_model!r} ({gender}) cannot be rendered")
        meshes = body_models.get(body_model, gender)
    settings = RenderSettings(
        views=tuple(p["views"]),
        width=p["width"],
        height=p["height"],
        video_frame_repeat=p["video_frame_repeat"],
        opacity=p["mesh_opacity"],
        crf=p["crf"],
        preset=p["preset"],
    )
    with run.step("render"):
        out = render(
            inputs,
            meshes,
            settings,
            run.workdir,
            progress=lambda done, total, message: run.progress(done, total, message, "render"),
            check_cancelled=run.check_cancelled,
        )
    files = {"top_view": OutputFile(out.top_view, "image/png")}
    for view in settings.views:
        files[f"{view}_view_video"] = OutputFile(out.videos[view], "video/mp4")
        files[f"{view}_view_stills"] = OutputFile(out.stills[view], "image/png")
        files[f"{view}_view_clip"] = OutputFile(out.clips[view], "image/gif")
    if p["export_formats"]:

        def export_progress(done: int, total: int, message: str) -> None:
            run.check_cancelled()
            run.progress(done, total, message, "export")

        with run.step("export"):
            written = write_exports(
                fits=run.inputs["fits"],
                ground=run.inputs["ground"],
                display_cameras=run.inputs["display_cameras"],
                body_model_dir=body_models.check(body_model, gender),
                gender=gender,
                out_dir=run.workdir / "exports",
                formats=p["export_formats"],
                progress=export_progress,
            )
        for name, path in sorted(written.items()):
            files[EXPORT_PREFIX + name] = OutputFile(Path(path), _media_type(name))
    return StageOutputs(
        files=files,
        counts={
            **out.counts,
            "fps": float(out.fps),
            "exports": sum(k.startswith(EXPORT_PREFIX) for k in files),
        },
    )


class RenderServicer(render_pb2_grpc.RenderServiceServicer):
    """Thin translator between RenderService messages and the render pipeline."""

    def __init__(self, store: ArtifactStore, body_models: BodyModels[BodyMeshes]):
        self.store = store
        self.body_models = body_models
        self.renderer: RendererInfo | None = None

    def load(self) -> None:
        """Checks headless OpenGL and loads the neutral body model (ModelNotReady if missing)."""
        torch.set_num_threads(TORCH_THREADS)
        self.renderer = renderer_info()
        log.info("rendering with %s", self.renderer.identity)
        self.body_models.get(BODY_MODEL, "neutral")

    def identity(self) -> ModelIdentity:
        """The body model files of every gender present (the fits name their gender; hashing
        all of them keeps the key right without reading the fits first) and, as the device,
        the OpenGL driver that rasterizes."""
        files = {}
        for gender in GENDER_TOKENS[BODY_MODEL]:
            with contextlib.suppress(ModelNotReady):
                folder = self.body_models.check(BODY_MODEL, gender)
                files.update((f.file, f) for f in file_identities(folder, BODY_MODEL, gender))
        renderer = self.renderer or renderer_info()
        return ModelIdentity.of(files.values(), device=renderer.identity)

    def Run(self, request, context):
        params = with_identity(validate(request), self.identity())
        yield from stream_cached_run(
            context,
            render_pb2.RunResponse,
            self.store,
            _result_to_proto,
            stage="render",
            version=VERSION,
            inputs={name: getattr(request, name) for name in INPUTS},
            params=params,
            compute=partial(compute_render, body_models=self.body_models),
            force=request.force,
        )


def _result_to_proto(result: StageResult) -> render_pb2.RunResult:
    refs = {
        name: artifact_to_proto(info)
        for name, info in result.outputs.items()
        if not name.startswith(EXPORT_PREFIX)
    }
    exports = {
        name.removeprefix(EXPORT_PREFIX): artifact_to_proto(info)
        for name, info in result.outputs.items()
        if name.startswith(EXPORT_PREFIX)
    }
    counts = result.counts
    return render_pb2.RunResult(
        **refs,
        exports=exports,
        width=int(counts.get("width", 0)),
        height=int(counts.get("height", 0)),
        fps=float(counts.get("fps", 0.0)),
        frame_count=int(counts.get("frames", 0)),
        summary=summary_to_proto(result),
    )


def build(settings: Settings, store: ArtifactStore) -> StageService:
    """The render service; `load()` checks EGL and loads the neutral SMPL model."""
    servicer = RenderServicer(store, BodyModels(settings, load_body_meshes))
    return StageService(
        stage="render",
        servicer=servicer,
        add_to_server=render_pb2_grpc.add_RenderServiceServicer_to_server,
        load=servicer.load,
    )
