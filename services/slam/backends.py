"""Which backend runs a request, and the models the slam service loads.

`droid` needs CUDA, the upstream `droid_slam` package (built in the slam image) and its
weights (registry: droid-slam); `colmap` needs nothing but pycolmap. `auto` takes droid where
it can run, else colmap. The metric depth model (registry: depth-anything-metric) is optional.
"""

import importlib
from dataclasses import dataclass

from services.common.errors import ModelNotReady, PreconditionFailed
from services.common.models import require_model, sha256_of
from services.common.settings import Settings, resolve_device
from services.slam.colmap_backend import ColmapBackend, ColmapSettings
from services.slam.depth_model import MetricDepthModel, TransformersMetricDepth
from services.slam.droid_backend import DroidBackend, DroidSettings

DEPTH_MODEL = "depth-anything-metric"
DROID_MODEL = "droid-slam"
DROID_MODULE = "droid_slam.droid"


@dataclass
class SlamModels:
    """What `load()` found: the DROID engine and weights (if runnable) and the depth model."""

    droid_engine: object | None = None
    droid_weights: str = ""
    droid_sha256: str = ""
    droid_problem: str = "not loaded"
    depth: MetricDepthModel | None = None
    depth_sha256: str = ""
    device: str = "cpu"


def load_models(settings: Settings) -> SlamModels:
    """Finds what can run here; nothing is required (colmap always can)."""
    models = SlamModels(device=resolve_device(settings))
    if models.device == "cuda":
        try:
            module = importlib.import_module(DROID_MODULE)
            weights = require_model(DROID_MODEL, settings)
            models.droid_engine = module.Droid
            models.droid_weights = str(weights)
            models.droid_sha256 = sha256_of(weights)
            models.droid_problem = ""
        except ImportError as err:
            models.droid_problem = f"the DROID-SLAM build is missing ({err}); use the slam image"
        except ModelNotReady as err:
            models.droid_problem = str(err)
    else:
        models.droid_problem = "DROID-SLAM needs a CUDA GPU (NLFPIPE_DEVICE resolved to cpu)"
    try:
        folder = require_model(DEPTH_MODEL, settings)
        models.depth = TransformersMetricDepth.load(folder, models.device)
        models.depth_sha256 = sha256_of(folder / "model.safetensors")
    except ModelNotReady:
        models.depth = None
    return models


def choose_backend(name: str, models: SlamModels, chunk: int = 0):
    """The backend object for a request's backend name ("auto", "colmap", "droid")."""
    if name == "auto":
        name = "droid" if models.droid_engine is not None else "colmap"
    if name == "droid":
        if models.droid_engine is None:
            raise PreconditionFailed(f"backend=droid cannot run here: {models.droid_problem}; "
                                     "use backend=colmap (CPU)")  # fmt: skip
        settings = DroidSettings(buffer=chunk) if chunk else DroidSettings()
        return DroidBackend(models.droid_engine, models.droid_weights, models.device, settings)
    settings = ColmapSettings(chunk_keyframes=chunk) if chunk else ColmapSettings()
    return ColmapBackend(settings)
