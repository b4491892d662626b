"""Which person segmenter the semseg service runs.

Backend (NLFPIPE_SEMSEG_BACKEND): ``deeplabv3`` (default: torchvision's DeepLabV3 networks,
from the model cache) or ``synthetic`` (a non-learned test backend for the generated videos).
With ``deeplabv3`` a request chooses the network (``deeplabv3``: ResNet-101, the reference;
``deeplabv3-mobilenet``: MobileNetV3-Large, about 4x faster on the CPU); a request that does
not choose gets NLFPIPE_SEMSEG_MODEL, whose default ``auto`` is the light network on the CPU and
ResNet-101 on CUDA (docs/models.md).
"""

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from services.common.identity import ModelIdentity, registry_files
from services.common.models import require_model
from services.common.settings import Settings, env_choice, resolve_device
from services.semseg.deeplab import MODELS, DeepLabPersonSegmenter
from services.semseg.pipeline import PersonSegmenter
from services.semseg.synthetic import SyntheticPersonSegmenter

BACKEND_ENV = "NLFPIPE_SEMSEG_BACKEND"
BACKENDS = ("deeplabv3", "synthetic")
MODEL_ENV = "NLFPIPE_SEMSEG_MODEL"
SYNTHETIC = "synthetic"


def backend_name(environ: Mapping[str, str] | None = None) -> str:
    """The configured semseg backend."""
    return env_choice(BACKEND_ENV, BACKENDS, environ)


def default_model(device: str, environ: Mapping[str, str] | None = None) -> str:
    """The network a request gets when it names none: NLFPIPE_SEMSEG_MODEL, else by device."""
    configured = env_choice(MODEL_ENV, ("auto", *MODELS), environ)
    if configured != "auto":
        return configured
    return "deeplabv3" if device.startswith("cuda") else "deeplabv3-mobilenet"


def deeplab_identity(settings: Settings, model: str, device: str) -> ModelIdentity:
    """The DeepLab weights file of registry model `model`, the device; always float32."""
    return ModelIdentity.of(registry_files(model, settings), device, "float32")


@dataclass(frozen=True)
class LoadedSegmenter:
    """A segmenter, the model name it runs and the identity of what it computes with."""

    segmenter: PersonSegmenter
    model: str
    identity: ModelIdentity = field(default_factory=ModelIdentity)


class Segmenters:
    """The backend's segmenters by model name, loaded from the model cache on first use."""

    def __init__(self, settings: Settings, backend: str, environ: Mapping[str, str] | None = None):
        self.settings = settings
        self.backend = backend
        self.device = resolve_device(settings)
        self.default = default_model(self.device, environ)
        self._loaded: dict[str, LoadedSegmenter] = {}
        self._lock = threading.Lock()

    def get(self, model: str | None = None) -> LoadedSegmenter:
        """The segmenter for `model` (None: the default); ModelNotReady when it is missing.
        The synthetic backend serves every request, whatever model it names."""
        name = SYNTHETIC if self.backend == SYNTHETIC else model or self.default
        with self._lock:
            if name not in self._loaded:
                self._loaded[name] = self._load(name)
            return self._loaded[name]

    def _load(self, name: str) -> LoadedSegmenter:
        if name == SYNTHETIC:
            return LoadedSegmenter(SyntheticPersonSegmenter(), SYNTHETIC)
        weights = require_model(name, self.settings)
        segmenter = DeepLabPersonSegmenter.load(weights, self.device, name)
        return LoadedSegmenter(segmenter, name, deeplab_identity(self.settings, name, self.device))
