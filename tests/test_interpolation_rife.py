"""RIFE's IFNet with random weights (the real architecture, nothing downloaded): the v4.18
checkpoint layout loads strictly, bad checkpoints are refused, and frames of every size come
back at their own size after padding to what the flow scale needs."""

from pathlib import Path

import numpy as np
import pytest
import torch

from services.common.errors import ModelNotReady
from services.common.identity import FileIdentity
from services.interpolation.ifnet import IFNet, load_ifnet, pad_multiple
from services.interpolation.rife import (
    RifeInterpolator,
    auto_scale,
    from_batch,
    padded_size,
    to_batch,
)

REFERENCE_SHAPES = Path(__file__).parent / "data" / "rife_state_dict_shapes.txt"


def reference_state_dict() -> dict[str, torch.Tensor]:
    """A state dict with the key names (`module.` prefix included) and shapes of v4.18's
    `flownet.pkl`; tensor i is filled with the number i."""
    state = {}
    lines = [ln for ln in REFERENCE_SHAPES.read_text().splitlines() if not ln.startswith("#")]
    for i, line in enumerate(lines):
        name, shape = line.split()
        state[name] = torch.full(tuple(map(int, shape.split("x"))), float(i))
    return state


@pytest.fixture(scope="module")
def network() -> IFNet:
    torch.manual_seed(0)
    return IFNet().eval()


def test_v4_18_checkpoint_loads_strictly_with_every_tensor_in_place(tmp_path):
    reference = reference_state_dict()
    assert len(reference) == 128 and all(k.startswith("module.") for k in reference)
    path = tmp_path / "flownet.pkl"
    torch.save(reference, path)
    loaded = load_ifnet(path).state_dict()
    assert list(loaded) == [k.removeprefix("module.") for k in reference]
    assert all(bool((loaded[k.removeprefix("module.")] == i).all())
               for i, k in enumerate(reference))  # fmt: skip
    assert sum(v.numel() for v in loaded.values()) == 5_364_312


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda s: s.pop("module.block3.lastconv.0.bias"), "missing 1 keys"),
        (lambda s: s.update({"module.block4.lastconv.0.bias": torch.zeros(52)}), "unexpected"),
        (lambda s: s.update({"module.block0.conv0.0.0.weight": torch.zeros(96, 15, 3, 3)}),
         "wrongly shaped 1 keys (e.g. block0.conv0.0.0.weight)"),
    ],
)  # fmt: skip
def test_other_checkpoints_are_refused_naming_the_keys(tmp_path, change, words):
    state = reference_state_dict()
    change(state)
    torch.save(state, tmp_path / "other.pkl")
    with pytest.raises(ModelNotReady, match="not a Practical-RIFE v4.18 IFNet") as caught:
        load_ifnet(tmp_path / "other.pkl")
    assert words in str(caught.value)


def test_a_pickle_with_code_is_never_executed(tmp_path):
    torch.save({"weights": torch.zeros(1), "extra": Path("/")}, tmp_path / "code.pkl")
    with pytest.raises(ModelNotReady, match="not a readable torch state dict"):
        load_ifnet(tmp_path / "code.pkl")


@pytest.mark.parametrize(
    ("height", "width", "scale", "padded"),
    [
        (360, 640, 1.0, (384, 640)),  # 641x361 after ingest
        (1080, 1920, 1.0, (1088, 1920)),
        (1920, 1080, 0.5, (1920, 1088)),
        (2160, 3840, 0.5, (2176, 3840)),
    ],
)
def test_padding_is_the_multiple_the_flow_scale_needs(height, width, scale, padded):
    assert auto_scale(height) == scale
    assert padded_size(height, width, scale) == padded
    frames = (np.arange(height * width * 3) % 251).astype(np.uint8).reshape(1, height, width, 3)
    batch = to_batch(frames, "cpu", torch.float32, scale)
    assert batch.shape == (1, 3, *padded)
    assert not batch[:, :, height:].any() and not batch[:, :, :, width:].any()
    np.testing.assert_array_equal(from_batch(batch, height, width), frames)


@pytest.mark.parametrize(
    ("height", "width", "scale"),
    [(1088, 32, 1.0), (32, 1920, 1.0), (1920, 64, 0.5), (64, 1088, 0.5), (2176, 64, 0.5)],
)  # fmt: skip
def test_the_network_keeps_every_padded_size(network, height, width, scale):
    # The network is fully convolutional: a strip of each padded side shows that it works.
    x = torch.rand(1, 3, height, width)
    with torch.inference_mode():
        assert network(x, x, 0.5, scale).shape == x.shape


def test_the_reference_padding_breaks_at_half_scale_and_ours_does_not(network):
    assert pad_multiple(1.0) == 32 and pad_multiple(0.5) == 64
    x = torch.rand(1, 3, 1120, 64)  # a multiple of 32, not of 64
    with torch.inference_mode(), pytest.raises(RuntimeError, match="must match"):
        network(x, x, 0.5, 0.5)
    assert padded_size(1120, 64, 0.5) == (1152, 64)
    padded = torch.rand(1, 3, 1152, 64)
    with torch.inference_mode():
        assert network(padded, padded, 0.5, 0.5).shape == padded.shape


def test_rife_middles_of_odd_sized_batches_come_back_cropped(network):
    files = [FileIdentity("rife", "flownet.pkl", "ab" * 32)]
    rife = RifeInterpolator(network, "cpu", files, batch_size=2)
    assert rife.name == "rife-4.18"
    assert rife.identity.params() == {
        "models": [{"name": "rife", "file": "flownet.pkl", "sha256": "ab" * 32}],
        "device": "cpu", "precision": "float32",
    }  # fmt: skip
    rng = np.random.default_rng(1)
    firsts = rng.integers(0, 256, (2, 90, 166, 3), np.uint8)
    seconds = rng.integers(0, 256, (2, 90, 166, 3), np.uint8)
    out = rife.middles_rgb(firsts, seconds, 0.0)
    assert out.shape == firsts.shape and out.dtype == np.uint8
    assert out.std() > 0  # the network ran (random weights: the values mean nothing)
