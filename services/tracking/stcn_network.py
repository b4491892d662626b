"""The STCN network (Cheng et al., 2021), with the module and parameter names of
hkchengrex/STCN so that its published `stcn.pth` loads with strict=True.

Key encoder: ResNet-50 to stride 16 (torchvision, built without weights), a 64-d key
projection and a 512-d compressed feature. Value encoder: a ResNet-18 whose convolutions have
biases and whose first layer takes 5 channels (image, object mask, other objects' masks),
fused with the key feature through a CBAM block. Decoder: upsampling at 1/8 and 1/4.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet50

KEY_DIM = 64
VALUE_DIM = 512


class ResBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.downsample = (
            None if in_dim == out_dim else nn.Conv2d(in_dim, out_dim, kernel_size=3, padding=1)
        )
        self.conv1 = nn.Conv2d(in_dim, out_dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(out_dim, out_dim, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.conv2(F.relu(self.conv1(F.relu(x))))
        return (x if self.downsample is None else self.downsample(x)) + r


class _ChannelGate(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels, channels // reduction),
            nn.ReLU(),
            nn.Linear(channels // reduction, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.mlp(x.mean((2, 3))) + self.mlp(x.amax((2, 3)))
        return x * torch.sigmoid(pooled)[:, :, None, None]


class _Conv(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _SpatialGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.spatial = _Conv(2, 1, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.spatial(pooled))


class CBAM(nn.Module):
    """Channel then spatial attention (Woo et al., 2018)."""

    def __init__(self, channels: int):
        super().__init__()
        self.ChannelGate = _ChannelGate(channels)
        self.SpatialGate = _SpatialGate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.SpatialGate(self.ChannelGate(x))


class FeatureFusionBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.block1 = ResBlock(in_dim, out_dim)
        self.attention = CBAM(out_dim)
        self.block2 = ResBlock(out_dim, out_dim)

    def forward(self, x: torch.Tensor, f16: torch.Tensor) -> torch.Tensor:
        x = self.block1(torch.cat([x, f16], 1))
        return self.block2(x + self.attention(x))


class _BasicBlock(nn.Module):
    """ResNet basic block whose convolutions carry biases (as in STCN's modified ResNet)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = (
            nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride), nn.BatchNorm2d(planes))
            if stride != 1 or in_planes != planes
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def _stage(in_planes: int, planes: int, stride: int) -> nn.Sequential:
    return nn.Sequential(_BasicBlock(in_planes, planes, stride), _BasicBlock(planes, planes))


class ValueEncoder(nn.Module):
    """ResNet-18 to stride 16 on image + mask + other masks, fused with the key feature."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(5, 64, kernel_size=7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _stage(64, 64, 1)  # 1/4
        self.layer2 = _stage(64, 128, 2)  # 1/8
        self.layer3 = _stage(128, 256, 2)  # 1/16
        self.fuser = FeatureFusionBlock(1024 + 256, VALUE_DIM)

    def forward(
        self, image: torch.Tensor, key_f16: torch.Tensor, mask: torch.Tensor, others: torch.Tensor
    ) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(torch.cat([image, mask, others], 1)))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fuser(x, key_f16)


class KeyEncoder(nn.Module):
    """ResNet-50 up to layer3 (stride 16, 1024 channels)."""

    def __init__(self):
        super().__init__()
        resnet = resnet50(weights=None)
        self.conv1 = resnet.conv1
        self.bn1 = resnet.bn1
        self.relu = resnet.relu
        self.maxpool = resnet.maxpool
        self.res2 = resnet.layer1  # 1/4, 256
        self.layer2 = resnet.layer2  # 1/8, 512
        self.layer3 = resnet.layer3  # 1/16, 1024

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f4 = self.res2(self.maxpool(self.relu(self.bn1(self.conv1(image)))))
        f8 = self.layer2(f4)
        return self.layer3(f8), f8, f4


class UpsampleBlock(nn.Module):
    def __init__(self, skip_ch: int, up_ch: int, out_ch: int):
        super().__init__()
        self.skip_conv = nn.Conv2d(skip_ch, up_ch, kernel_size=3, padding=1)
        self.out_conv = ResBlock(up_ch, out_ch)

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """`skip` is [B, C, H, W]; `up` is [n_objects * B, C', H/2, W/2], object-major."""
        x = self.skip_conv(skip)
        up = F.interpolate(up, scale_factor=2.0, mode="bilinear", align_corners=False)
        x = x.unsqueeze(0) + up.view(-1, *x.shape)
        return self.out_conv(x.flatten(0, 1))


class KeyProjection(nn.Module):
    def __init__(self, in_dim: int, key_dim: int):
        super().__init__()
        self.key_proj = nn.Conv2d(in_dim, key_dim, kernel_size=3, padding=1)
        nn.init.orthogonal_(self.key_proj.weight.data)
        nn.init.zeros_(self.key_proj.bias.data)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.key_proj(x)


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.compress = ResBlock(1024, 512)
        self.up_16_8 = UpsampleBlock(512, 512, 256)
        self.up_8_4 = UpsampleBlock(256, 256, 256)
        self.pred = nn.Conv2d(256, 1, kernel_size=3, padding=1)

    def forward(self, f16: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor) -> torch.Tensor:
        x = self.up_8_4(f4, self.up_16_8(f8, self.compress(f16)))
        x = self.pred(F.relu(x))
        return F.interpolate(x, scale_factor=4.0, mode="bilinear", align_corners=False)


class STCN(nn.Module):
    """Space-time correspondence network: encoders and decoder; the memory is separate."""

    def __init__(self):
        super().__init__()
        self.key_encoder = KeyEncoder()
        self.value_encoder = ValueEncoder()
        self.key_proj = KeyProjection(1024, KEY_DIM)
        self.key_comp = nn.Conv2d(1024, VALUE_DIM, kernel_size=3, padding=1)
        self.decoder = Decoder()

    def encode_key(self, image: torch.Tensor):
        """Normalized images [B, 3, H, W] -> key, compressed f16, f16, f8, f4."""
        f16, f8, f4 = self.key_encoder(image)
        return self.key_proj(f16), self.key_comp(f16), f16, f8, f4

    def encode_value(self, image: torch.Tensor, f16: torch.Tensor, masks: torch.Tensor):
        """One image [1, 3, H, W], its f16 [1, 1024, h, w] and object masks [n, H, W] ->
        values [n, 512, h, w]."""
        n = masks.shape[0]
        masks = masks.unsqueeze(1)
        others = masks.sum(0, keepdim=True) - masks
        return self.value_encoder(
            image.expand(n, -1, -1, -1), f16.expand(n, -1, -1, -1), masks, others
        )

    def segment(self, readout: torch.Tensor, value16: torch.Tensor, f8, f4) -> torch.Tensor:
        """Memory readout [n, B, 512, h, w] and the query's compressed f16 [B, 512, h, w] ->
        object probabilities [n, B, H, W]."""
        n = readout.shape[0]
        x = torch.cat([readout.flatten(0, 1), value16.repeat(n, 1, 1, 1)], 1)
        prob = torch.sigmoid(self.decoder(x, f8, f4))
        return prob.view(n, -1, *prob.shape[-2:])


def adapt_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pads a single-object value encoder's first layer (4 input channels) with a zero channel
    for the "other objects" mask, as STCN's own evaluation code does."""
    name = "value_encoder.conv1.weight"
    weight = state.get(name)
    if weight is not None and weight.shape[1] == 4:
        state = dict(state)
        state[name] = torch.cat([weight, weight.new_zeros(weight.shape[0], 1, 7, 7)], 1)
    return state


def load_stcn(path: Path, device: str) -> STCN:
    """Builds STCN and loads a state dict file (weights only, no pickled code)."""
    state = torch.load(path, weights_only=True, map_location="cpu")
    model = STCN()
    model.load_state_dict(adapt_state_dict(state), strict=True)
    return model.eval().to(device)
