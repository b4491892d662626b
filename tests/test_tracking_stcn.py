"""The learned tracking models with random weights (real architectures, nothing downloaded):
checkpoint compatibility, loading, and STCN propagation over a small generated video."""

from pathlib import Path

import numpy as np
import pytest
import torch

from services.common.formats.masks import read_track_masks
from services.common.stagerun import StageRun
from services.tracking.detection import MaskRCNNDetector, build_maskrcnn, person_candidates
from services.tracking.pipeline import TrackingBackend, TrackingParams, compute_tracking
from services.tracking.stcn import STCNPropagator
from services.tracking.stcn_network import STCN, adapt_state_dict, load_stcn
from services.tracking.synthetic import SyntheticPersonDetector
from tests.support.videos import make_test_video

REFERENCE_SHAPES = Path(__file__).parent / "data" / "stcn_state_dict_shapes.txt"


def reference_state_dict() -> dict[str, torch.Tensor]:
    """A state dict with the key names and shapes of hkchengrex/STCN's `stcn.pth` (derived from
    the STCN model definition of stcnbuf 0.2.2); tensor i is filled with the number i."""
    state = {}
    for i, line in enumerate(REFERENCE_SHAPES.read_text().splitlines()):
        name, shape = line.split()
        dims = () if shape == "scalar" else tuple(map(int, shape.split("x")))
        state[name] = torch.full(dims, i, dtype=torch.long if not dims else torch.float32)
    return state


@pytest.fixture(scope="module")
def stcn_file(tmp_path_factory) -> Path:
    """STCN's own random initialization saved as a checkpoint (tame activations)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "stcn.pth"
    torch.save(STCN().state_dict(), path)
    return path


def test_checkpoint_layout_loads_strictly():
    reference = reference_state_dict()
    assert len(reference) == 405
    model = STCN()
    model.load_state_dict(adapt_state_dict(reference), strict=True)
    loaded = model.state_dict()
    assert list(loaded) == list(reference)
    assert all(bool((loaded[name] == i).all()) for i, name in enumerate(reference))


def test_single_object_checkpoint_gets_a_zero_other_objects_channel():
    state = reference_state_dict()
    state["value_encoder.conv1.weight"] = torch.ones(64, 4, 7, 7)
    model = STCN()
    model.load_state_dict(adapt_state_dict(state), strict=True)
    weight = model.state_dict()["value_encoder.conv1.weight"]
    assert weight.shape == (64, 5, 7, 7)
    assert weight[:, :4].eq(1).all() and not weight[:, 4].any()


SMALL_MASK_RCNN = {
    "min_size": 96,
    "max_size": 160,
    "rpn_pre_nms_top_n_test": 50,
    "rpn_post_nms_top_n_test": 20,
    "box_detections_per_img": 4,
}


def test_mask_rcnn_loads_from_a_state_dict_and_reports_sorted_persons(tmp_path):
    torch.manual_seed(0)
    model = build_maskrcnn()
    with torch.no_grad():  # random weights seldom say "person"; make them
        model.roi_heads.box_predictor.cls_score.bias[1] += 20
    torch.save(model.state_dict(), tmp_path / "maskrcnn.pth")
    detector = MaskRCNNDetector.load(tmp_path / "maskrcnn.pth", "cpu", 0.5, **SMALL_MASK_RCNN)
    image = np.random.default_rng(0).integers(0, 255, (64, 96, 3), np.uint8)
    soft, scores = detector.detect(image)
    assert soft.shape == (len(scores), 64, 96) and len(scores) > 0
    assert np.all(np.diff(scores) <= 0) and scores.min() > 0.5
    assert soft.min() >= 0 and soft.max() <= 1
    found = person_candidates(image, detector)
    assert [c.index for c in found] == list(range(len(found)))
    assert all(c.mask.shape == (64, 96) for c in found)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "figures.mp4"
    make_test_video(path, seconds=0.6, width=96, height=64, fps=10, figures=2)
    return path


def test_stcn_propagates_over_every_frame_with_bounded_memory(video, stcn_file, tmp_path):
    torch.manual_seed(0)
    network = load_stcn(stcn_file, "cpu")
    propagators = []

    def make_propagator(params):
        propagators.append(
            STCNPropagator(network, "cpu", params.mem_size, params.temp_mem_size, params.top_k)
        )
        return propagators[-1]

    backend = TrackingBackend("stcn", SyntheticPersonDetector(), make_propagator)
    run = StageRun(tmp_path, {"video": video}, {}, None, None)
    params = TrackingParams(short_side=48, mem_size=4, temp_mem_size=2, top_k=5, passes=2)
    outputs = compute_tracking(run, params, backend)

    masks = read_track_masks(outputs.files["masks"].path)
    assert (masks.num_frames, masks.height, masks.width) == (6, 48, 72)
    assert outputs.counts == {"candidates": 2, "frames": 6, "tracks": 2}
    memory = propagators[0].memory
    pixels = 3 * 5  # 48 x 72 padded to 48 x 80, at stride 16
    assert (memory.capacity, memory.frames, memory.temp_frames) == (4, 4, 2)
    assert memory.nbytes() == (4 + 2) * pixels * (64 + 1 + 2 * 512) * 4  # keys, |k|^2, values
    assert [t["track_id"] for t in outputs.extra["tracks"]] == [0, 1]
