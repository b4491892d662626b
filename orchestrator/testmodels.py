"""Small generated stand-ins for every model, so the whole pipeline runs without downloads.

They have the real interfaces (an NLF TorchScript with NLF's methods, a body model in SMPL's
file layout, a synthetic tracking backend that finds the light figures of generated videos, the
weightless optical-flow interpolation backend);
the numbers they produce are not meaningful for real videos.

The NLF stand-in places one fixed point set at every box (services/pose/test_model.py). Here
that set is the synthetic body model's own rest-pose mesh, upright and facing the camera, so
the fitting stage reproduces the stand-in's people exactly (scale 1, where they were placed)
and the people of a `--test-models` run stand where the stand-in put them.
"""

from pathlib import Path

import numpy as np

_STAMP = ".nlfpipe-test-models-v2"


def upright_body_template(body: dict) -> tuple[np.ndarray, np.ndarray]:
    """The body model's rest-pose vertices and joints (metres) turned into camera axes (x
    right, y down, z away: a half turn about x, so the body faces the camera) and centred on
    its bounding box, whose centre the stand-in puts on the ray through the box centre."""
    vertices = np.asarray(body["v_template"], dtype=np.float64)
    joints = np.asarray(body["J_regressor"]) @ vertices
    half_turn = np.diag([1.0, -1.0, -1.0])
    vertices, joints = vertices @ half_turn, joints @ half_turn
    centre = (vertices.min(0) + vertices.max(0)) / 2
    return (vertices - centre).astype(np.float32), (joints - centre).astype(np.float32)


def install_test_models(model_cache: Path) -> dict[str, str]:
    """Writes the stand-ins into `model_cache` (once); returns the environment that selects them."""
    model_cache = Path(model_cache).resolve()
    if not (model_cache / _STAMP).exists():
        from services.fitting.synthetic_body_model import make_synthetic_smpl, write_synthetic_smpl
        from services.pose.test_model import install_test_models as install_fake_nlf

        model_cache.mkdir(parents=True, exist_ok=True)
        write_synthetic_smpl(model_cache)
        install_fake_nlf(model_cache, template=upright_body_template(make_synthetic_smpl()))
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
