"""RIFE's IFNet, Practical-RIFE v4.18 (hzwer/Practical-RIFE, MIT licence), written for nlfpipe.

The network estimates, coarse to fine, the flows from the middle instant back to both frames
and a blend mask: four IFBlocks of widths 192/128/96/64 working at 1/8, 1/4, 1/2 and 1/1 of the
flow resolution (divided by `scale`), each fed the images, 8-channel features of a small head
(warped by the current flow), the timestep and the previous mask. The result is
sigmoid(mask) * warp(img0) + (1 - sigmoid(mask)) * warp(img1).

Module and parameter names follow the published checkpoint, so that v4.18's `flownet.pkl`
loads with `strict=True` once the `module.` prefix of its keys is removed
(`tests/data/rife_state_dict_shapes.txt` lists the keys and shapes).
"""

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from services.common.errors import ModelNotReady

RIFE_VERSION = "4.18"
FEATURE_CHANNELS = 8
BLOCK_WIDTHS = (192, 128, 96, 64)
BLOCK_SCALES = (8.0, 4.0, 2.0, 1.0)
# Inputs of block 0: both images (3 + 3), both features, the timestep.
_FIRST_IN = 3 + 3 + 2 * FEATURE_CHANNELS + 1
# Inputs of the later blocks: both warped images and features, timestep, mask, flow (4).
_LATER_IN = 3 + 3 + 2 * FEATURE_CHANNELS + 1 + 1 + 4


def _conv_act(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride, 1), nn.LeakyReLU(0.2, inplace=True)
    )


class ResConv(nn.Module):
    """3x3 convolution with a learned per-channel gain on the residual branch."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)
        self.beta = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.relu = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x) * self.beta + x)


class IFBlock(nn.Module):
    """One refinement level: (inputs, flow) at 1/scale -> flow update (4 ch) and mask (1 ch)."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        self.conv0 = nn.Sequential(
            _conv_act(in_channels, width // 2, 2), _conv_act(width // 2, width, 2)
        )
        self.convblock = nn.Sequential(*(ResConv(width) for _ in range(8)))
        self.lastconv = nn.Sequential(nn.ConvTranspose2d(width, 4 * 6, 4, 2, 1), nn.PixelShuffle(2))

    def forward(
        self, x: torch.Tensor, flow: torch.Tensor | None, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.interpolate(x, scale_factor=1.0 / scale, mode="bilinear", align_corners=False)
        if flow is not None:
            flow = F.interpolate(flow, scale_factor=1.0 / scale, mode="bilinear",
                                 align_corners=False) / scale  # fmt: skip
            x = torch.cat((x, flow), 1)
        out = self.lastconv(self.convblock(self.conv0(x)))
        out = F.interpolate(out, scale_factor=scale, mode="bilinear", align_corners=False)
        return out[:, :4] * scale, out[:, 4:5]


class Head(nn.Module):
    """The feature head: 3 convolutions and a transposed one, RGB -> 8 feature channels."""

    def __init__(self):
        super().__init__()
        self.cnn0 = nn.Conv2d(3, 32, 3, 2, 1)
        self.cnn1 = nn.Conv2d(32, 32, 3, 1, 1)
        self.cnn2 = nn.Conv2d(32, 32, 3, 1, 1)
        self.cnn3 = nn.ConvTranspose2d(32, FEATURE_CHANNELS, 4, 2, 1)
        self.relu = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.cnn0(x))
        x = self.relu(self.cnn1(x))
        x = self.relu(self.cnn2(x))
        return self.cnn3(x)


def backward_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Samples `image` at each pixel plus `flow` (pixels, x then y); border padding.

    The sampling grid is built in float32 whatever the input precision: in fp16 the normalized
    coordinates of a 1920-pixel row would be off by up to a pixel.
    """
    n, _, h, w = flow.shape
    ys = torch.linspace(-1.0, 1.0, h, device=flow.device)
    xs = torch.linspace(-1.0, 1.0, w, device=flow.device)
    flow = flow.float()
    grid_x = xs.view(1, 1, w) + flow[:, 0] * (2.0 / max(w - 1, 1))
    grid_y = ys.view(1, h, 1) + flow[:, 1] * (2.0 / max(h - 1, 1))
    grid = torch.stack((grid_x, grid_y), dim=-1).expand(n, h, w, 2)
    warped = F.grid_sample(
        image.float(), grid, mode="bilinear", padding_mode="border", align_corners=True
    )
    return warped.to(image.dtype)


class IFNet(nn.Module):
    """The v4.18 intermediate-flow network; inputs are RGB in [0, 1], NCHW, with H and W a
    multiple of `pad_multiple(scale)`."""

    def __init__(self):
        super().__init__()
        self.block0 = IFBlock(_FIRST_IN, BLOCK_WIDTHS[0])
        self.block1 = IFBlock(_LATER_IN, BLOCK_WIDTHS[1])
        self.block2 = IFBlock(_LATER_IN, BLOCK_WIDTHS[2])
        self.block3 = IFBlock(_LATER_IN, BLOCK_WIDTHS[3])
        self.encode = Head()

    def forward(
        self, img0: torch.Tensor, img1: torch.Tensor, timestep: float = 0.5, scale: float = 1.0
    ) -> torch.Tensor:
        t = torch.full_like(img0[:, :1], timestep)
        feat0, feat1 = self.encode(img0), self.encode(img1)
        blocks = (self.block0, self.block1, self.block2, self.block3)
        first = torch.cat((img0, img1, feat0, feat1, t), 1)
        flow, mask = blocks[0](first, None, BLOCK_SCALES[0] / scale)
        warped0, warped1 = backward_warp(img0, flow[:, :2]), backward_warp(img1, flow[:, 2:4])
        for block, level_scale in zip(blocks[1:], BLOCK_SCALES[1:], strict=True):
            inputs = torch.cat((
                warped0, warped1,
                backward_warp(feat0, flow[:, :2]), backward_warp(feat1, flow[:, 2:4]),
                t, mask,
            ), 1)  # fmt: skip
            delta, mask = block(inputs, flow, level_scale / scale)
            flow = flow + delta
            warped0, warped1 = backward_warp(img0, flow[:, :2]), backward_warp(img1, flow[:, 2:4])
        weight = torch.sigmoid(mask)
        return warped0 * weight + warped1 * (1 - weight)


def pad_multiple(scale: float) -> int:
    """What H and W must be a multiple of at this flow scale: block 0 works at 1/(8/scale) and
    halves twice more. (The reference padded to 32 at every scale, which breaks at 0.5 for
    heights such as 1120.)"""
    return max(32, int(round(32 / scale)))


def strip_module_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The checkpoint's keys without the `module.` prefix of its DataParallel training."""
    return {key.removeprefix("module."): value for key, value in state.items()}


def load_ifnet(path: Path) -> IFNet:
    """Loads a v4.18 `flownet.pkl` (a state dict of tensors; no code runs) on the CPU.

    Raises ModelNotReady when the file is not such a state dict, naming the keys that differ.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file means the same to the user
        raise ModelNotReady(f"{path} is not a readable torch state dict: {e}") from None
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ModelNotReady(f"{path} is not a state dict of tensors")
    state = strip_module_prefix(state)
    network = IFNet()
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        problems = [f"{what} {len(keys)} keys (e.g. {', '.join(keys[:3])})"
                    for what, keys in (("missing", missing), ("unexpected", unexpected),
                                       ("wrongly shaped", wrong)) if keys]  # fmt: skip
        raise ModelNotReady(
            f"{path} is not a Practical-RIFE v{RIFE_VERSION} IFNet checkpoint: "
            + "; ".join(problems)
        )
    network.load_state_dict(state, strict=True)
    return network.eval()
