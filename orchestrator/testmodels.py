"""Small generated stand-ins for every model, so the whole pipeline runs without downloads.

They have the real interfaces (an NLF TorchScript with NLF's methods, a body model in SMPL's
file layout, a synthetic tracking backend that finds the light figures of generated videos, the
weightless optical-flow interpolation backend);
the numbers they produce are not meaningful for real videos.
"""

from pathlib import Path

_STAMP = ".nlfpipe-test-models-v1"


def install_test_models(model_cache: Path) -> dict[str, str]:
    """Writes the stand-ins into `model_cache` (once); returns the environment that selects them."""
    model_cache = Path(model_cache).resolve()
    if not (model_cache / _STAMP).exists():
        from services.fitting.synthetic_body_model import write_synthetic_smpl
        from services.pose.test_model import install_test_models as install_fake_nlf

        model_cache.mkdir(parents=True, exist_ok=True)
        install_fake_nlf(model_cache)
        write_synthetic_smpl(model_cache)
        (model_cache / _STAMP).write_text("generated test models; not for real results\n")
    return {
        "NLFPIPE_MODEL_CACHE": str(model_cache),
        "SMPLFITTER_BODY_MODELS": str(model_cache),
        "NLFPIPE_TRACKING_BACKEND": "synthetic",
        "NLFPIPE_SEMSEG_BACKEND": "synthetic",
        "NLFPIPE_INTERPOLATION_BACKEND": "flow",
        "NLFPIPE_DEVICE": "cpu",
        "NLFPIPE_TEST_MODELS": "1",
    }
