"""Which person segmenter the semseg service runs: DeepLabV3 (default) or the non-learned
synthetic test backend (NLFPIPE_SEMSEG_BACKEND=synthetic)."""

from collections.abc import Mapping

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


def load_segmenter(settings: Settings, name: str) -> PersonSegmenter:
    """Loads the backend's model from the model cache (ModelNotReady when missing)."""
    if name == "synthetic":
        return SyntheticPersonSegmenter()
    return DeepLabPersonSegmenter.load(
        require_model("deeplabv3", settings), resolve_device(settings)
    )
