"""Which person segmenter the semseg service runs: DeepLabV3 (default) or the non-learned
synthetic test backend (NLFPIPE_SEMSEG_BACKEND=synthetic)."""

from collections.abc import Mapping
from dataclasses import dataclass, field

from services.common.identity import ModelIdentity, registry_files
from services.common.models import require_model
from services.common.settings import Settings, env_choice, resolve_device
from services.semseg.deeplab import DeepLabPersonSegmenter
from services.semseg.pipeline import PersonSegmenter
from services.semseg.synthetic import SyntheticPersonSegmenter

BACKEND_ENV = "NLFPIPE_SEMSEG_BACKEND"
BACKENDS = ("deeplabv3", "synthetic")


def backend_name(environ: Mapping[str, str] | None = None) -> str:
    """The configured semseg backend."""
    return env_choice(BACKEND_ENV, BACKENDS, environ)


@dataclass(frozen=True)
class LoadedSegmenter:
    """A segmenter with the identity of what it computes with (files, device, precision)."""

    segmenter: PersonSegmenter
    identity: ModelIdentity = field(default_factory=ModelIdentity)


def deeplab_identity(settings: Settings, model: str, device: str) -> ModelIdentity:
    """The DeepLab weights file of registry model `model`, the device; always float32."""
    return ModelIdentity.of(registry_files(model, settings), device, "float32")


def load_segmenter(settings: Settings, name: str) -> LoadedSegmenter:
    """Loads the backend's model from the model cache (ModelNotReady when missing)."""
    if name == "synthetic":
        return LoadedSegmenter(SyntheticPersonSegmenter())
    device = resolve_device(settings)
    segmenter = DeepLabPersonSegmenter.load(require_model("deeplabv3", settings), device)
    return LoadedSegmenter(segmenter, deeplab_identity(settings, "deeplabv3", device))
