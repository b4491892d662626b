"""The semseg computation: DeepLabV3 with random weights (real architecture, nothing
downloaded) and the synthetic backend on generated videos with known figures."""

from pathlib import Path

import numpy as np
import pytest
import torch

from services.common.errors import InvalidInput
from services.common.formats.masks import read_track_masks
from services.common.stagerun import StageRun
from services.semseg.deeplab import VOC_PERSON, DeepLabPersonSegmenter, build_deeplabv3
from services.semseg.pipeline import SemsegParams, compute_semseg
from services.semseg.synthetic import SyntheticPersonSegmenter
from tests.support.videos import make_test_video


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> tuple[Path, list]:
    path = tmp_path_factory.mktemp("video") / "figures.mp4"
    return path, make_test_video(path, seconds=0.5, width=96, height=64, fps=10)


def segment(video_path: Path, tmp_path: Path, segmenter, **params):
    run = StageRun(tmp_path, {"video": video_path}, {}, None, None)
    outputs = compute_semseg(run, SemsegParams(**params), segmenter, "test", "test-model")
    return outputs, read_track_masks(outputs.files["masks"].path)


def test_synthetic_masks_cover_the_figures_and_nothing_else(video, tmp_path):
    path, truths = video
    outputs, masks = segment(path, tmp_path, SyntheticPersonSegmenter(), short_side=64)
    assert (masks.num_frames, masks.height, masks.width, masks.track_ids) == (5, 64, 96, [0])
    for i in range(5):
        mask = masks.frame(i)[0].to_array().astype(bool)
        inside = np.zeros_like(mask)
        for truth in truths:
            x, y, w, h = truth.boxes[i]
            inside[int(y) : int(np.ceil(y + h)) + 1, int(x) : int(np.ceil(x + w)) + 1] = True
        assert mask[inside].mean() > 0.6 and not mask[~inside].any()
    assert outputs.counts == {"frames": 5, "frames_segmented": 5, "frames_with_persons": 5}
    assert "computed_frames" not in masks.meta
    assert masks.meta["track_meaning"] == {"0": "all persons"}


@pytest.fixture(scope="module")
def deeplab_weights(tmp_path_factory) -> tuple[Path, dict]:
    """A ResNet-101 state dict file in torchvision's layout (with the auxiliary head)."""
    torch.manual_seed(0)
    network = build_deeplabv3()
    path = tmp_path_factory.mktemp("weights") / "deeplab.pth"
    torch.save(network.state_dict(), path)
    return path, network


@pytest.fixture(scope="module")
def deeplab(deeplab_weights) -> DeepLabPersonSegmenter:
    return DeepLabPersonSegmenter(deeplab_weights[1], "cpu")


def set_person_logit(segmenter: DeepLabPersonSegmenter, value: float) -> None:
    """Zeroes the classifier's last layer and gives the person class a fixed logit, so every
    pixel's person probability is e^v / (e^v + 20)."""
    last = segmenter.model.classifier[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        last.bias[VOC_PERSON] = value


def test_deeplab_person_probability_has_the_frame_shape(deeplab):
    frames = np.random.default_rng(0).integers(0, 255, (2, 40, 56, 3), np.uint8)
    set_person_logit(deeplab, np.log(20 * 0.25 / 0.75))  # probability 0.25
    probability = deeplab.person_probability(frames)
    assert probability.shape == (2, 40, 56)
    np.testing.assert_allclose(probability, 0.25, atol=1e-5)


@pytest.mark.parametrize(
    ("probability", "threshold", "persons"),
    [(0.25, 0.2, True), (0.15, 0.2, False), (0.25, 0.3, False)],
)
def test_threshold_decides_which_pixels_are_persons(
    video, tmp_path, deeplab, probability, threshold, persons
):
    set_person_logit(deeplab, np.log(20 * probability / (1 - probability)))
    outputs, masks = segment(
        video[0], tmp_path, deeplab, short_side=32, batch_size=2, threshold=threshold
    )
    assert masks.num_frames == 5 and (masks.height, masks.width) == (32, 48)
    assert outputs.counts["frames_with_persons"] == (5 if persons else 0)
    assert outputs.extra["mean_person_fraction"] == (1.0 if persons else 0.0)


def test_resnet_weights_load_from_a_state_dict_file_of_torchvision_layout(deeplab_weights):
    path, _ = deeplab_weights
    expected = torch.load(path, weights_only=True)["classifier.4.bias"]
    loaded = DeepLabPersonSegmenter.load(path, "cpu")
    torch.testing.assert_close(loaded.model.state_dict()["classifier.4.bias"], expected)
    assert loaded.model.aux_classifier is None  # dropped: nothing reads its output


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"threshold": 0.0}, "threshold"),
        ({"batch_size": 0}, "batch_size"),
        ({"short_side": 8}, "short_side"),
    ],
)
def test_bad_parameters_are_explained(params, message):
    with pytest.raises(InvalidInput, match=message):
        SemsegParams(**params)
