"""Which interpolator the interpolation service runs (NLFPIPE_INTERPOLATION_BACKEND):

- `auto` (default): RIFE on a CUDA device, the weightless flow backend on the CPU (at 720p on
  two cores RIFE makes about 1 output frame/s, the flow backend 20-60; docs/benchmarks.md);
- `rife`: Practical-RIFE v4.18 on the configured device (CPU too), best quality;
- `flow`: OpenCV DIS optical flow, no weights; `--test-models` runs and CPU-only machines.
"""

from collections.abc import Mapping

from services.common.identity import registry_files
from services.common.models import require_model
from services.common.settings import Settings, env_choice, resolve_device
from services.common.threads import apply_torch_threads
from services.interpolation.flow import FlowInterpolator
from services.interpolation.pipeline import Interpolator

BACKEND_ENV = "NLFPIPE_INTERPOLATION_BACKEND"
BACKENDS = ("auto", "rife", "flow")
MODEL = "rife"


def backend_name(settings: Settings, environ: Mapping[str, str] | None = None) -> str:
    """The backend to load: `rife` or `flow` (`auto` resolved by the device)."""
    name = env_choice(BACKEND_ENV, BACKENDS, environ)
    if name == "auto":
        return "rife" if resolve_device(settings) == "cuda" else "flow"
    return name


def load_backend(settings: Settings, name: str) -> Interpolator:
    """The backend, its checkpoint read from the model cache (ModelNotReady when missing)."""
    if name == "flow":
        return FlowInterpolator()
    from services.interpolation.rife import load_rife  # torch, only for this backend

    # `serve` sets torch's threads only when the service's modules imported torch at build
    # time, which the flow backend's never do.
    apply_torch_threads(settings)
    path = require_model(MODEL, settings)
    return load_rife(path, resolve_device(settings), registry_files(MODEL, settings))
