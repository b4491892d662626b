"""Which detector and propagator the tracking service runs: the learned models (default) or
the non-learned synthetic test backend (NLFPIPE_TRACKING_BACKEND=synthetic)."""

from collections.abc import Mapping

from services.common.identity import ModelIdentity, registry_files
from services.common.models import require_models
from services.common.settings import Settings, env_choice, resolve_device
from services.tracking.detection import MaskRCNNDetector
from services.tracking.pipeline import TrackingBackend
from services.tracking.stcn import STCNPropagator
from services.tracking.stcn_network import load_stcn
from services.tracking.synthetic import SyntheticPersonDetector, SyntheticPropagator

BACKEND_ENV = "NLFPIPE_TRACKING_BACKEND"
BACKENDS = ("stcn", "synthetic")


def backend_name(environ: Mapping[str, str] | None = None) -> str:
    """The configured tracking backend."""
    return env_choice(BACKEND_ENV, BACKENDS, environ)


def synthetic_backend() -> TrackingBackend:
    """Threshold + connected components detection, overlap association propagation."""
    return TrackingBackend("synthetic", SyntheticPersonDetector(), lambda p: SyntheticPropagator())


def stcn_identity(settings: Settings, device: str) -> ModelIdentity:
    """Mask R-CNN's and STCN's files in the model cache, the device, and the precision (STCN
    runs under fp16 autocast on CUDA, Mask R-CNN always in float32)."""
    return ModelIdentity.of(
        registry_files("maskrcnn", settings) + registry_files("stcn", settings),
        device=device,
        precision="float16-autocast" if device.startswith("cuda") else "float32",
    )


def load_backend(settings: Settings, name: str) -> TrackingBackend:
    """Loads the backend's models from the model cache (ModelNotReady when missing)."""
    if name == "synthetic":
        return synthetic_backend()
    maskrcnn_path, stcn_path = require_models(["maskrcnn", "stcn"], settings)
    device = resolve_device(settings)
    detector = MaskRCNNDetector.load(maskrcnn_path, device)
    network = load_stcn(stcn_path, device)
    return TrackingBackend(
        "stcn",
        detector,
        lambda p: STCNPropagator(network, device, p.mem_size, p.temp_mem_size, p.top_k, p.seed),
        stcn_identity(settings, device),
    )
