"""The RIFE backend: batches of frame pairs through IFNet (fp16 on CUDA, fp32 on the CPU),
padded right and bottom to the multiple the flow scale needs and cropped back."""

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from services.common.identity import FileIdentity, ModelIdentity
from services.interpolation.ifnet import RIFE_VERSION, IFNet, load_ifnet, pad_multiple
from services.interpolation.video import SourceFrame, rgb_to_yuv

# Frames at or above this height use flow scale 0.5 (the reference's rule), else 1.
HALF_SCALE_HEIGHT = 1600


def auto_scale(height: int) -> float:
    """The flow scale for frames of this height: 1, or 0.5 from 1600 pixels up."""
    return 0.5 if height >= HALF_SCALE_HEIGHT else 1.0


def padded_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(height, width) rounded up to the multiple IFNet needs at this flow scale."""
    m = pad_multiple(scale)
    return -(-height // m) * m, -(-width // m) * m


def to_batch(frames: np.ndarray, device: str, dtype: torch.dtype, scale: float) -> torch.Tensor:
    """uint8 [B, H, W, 3] RGB -> [B, 3, H', W'] in [0, 1], zero-padded right and bottom."""
    height, width = frames.shape[1:3]
    padded_h, padded_w = padded_size(height, width, scale)
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2)
    x = x.to(dtype) / 255.0
    return F.pad(x, (0, padded_w - width, 0, padded_h - height))


def from_batch(x: torch.Tensor, height: int, width: int) -> np.ndarray:
    """[B, 3, H', W'] in [0, 1] -> uint8 [B, height, width, 3], cropped to the frame."""
    x = x[:, :, :height, :width].float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


class RifeInterpolator:
    """Middle frames from IFNet; one call at a time per loaded network."""

    name = f"rife-{RIFE_VERSION}"

    def __init__(
        self, network: IFNet, device: str, files: Sequence[FileIdentity], batch_size: int = 0
    ):
        self.device = device
        self.fp16 = device.startswith("cuda")
        self.dtype = torch.float16 if self.fp16 else torch.float32
        self.network = network.to(device, self.dtype).eval()
        self.batch_size = batch_size or (8 if self.fp16 else 2)
        self.identity = ModelIdentity.of(files, device, "float16" if self.fp16 else "float32")
        self._lock = threading.Lock()

    def middles(
        self, firsts: Sequence[SourceFrame], seconds: Sequence[SourceFrame], flow_scale: float
    ) -> list[np.ndarray]:
        """The 4:2:0 planes of the frames halfway between each pair (RGB in the stream's
        matrix and range for the network)."""
        rgb = self.middles_rgb(
            np.stack([f.rgb for f in firsts]), np.stack([f.rgb for f in seconds]), flow_scale
        )
        return [rgb_to_yuv(frame, firsts[0].facts) for frame in rgb]

    @torch.inference_mode()
    def middles_rgb(self, firsts: np.ndarray, seconds: np.ndarray, flow_scale: float) -> np.ndarray:
        """The frames halfway between each pair: uint8 [B, H, W, 3] RGB in and out."""
        height, width = firsts.shape[1:3]
        scale = flow_scale or auto_scale(height)
        with self._lock:
            x0 = to_batch(firsts, self.device, self.dtype, scale)
            x1 = to_batch(seconds, self.device, self.dtype, scale)
            return from_batch(self.network(x0, x1, 0.5, scale), height, width)


def load_rife(path: Path, device: str, files: Sequence[FileIdentity]) -> RifeInterpolator:
    """The RIFE backend from a v4.18 checkpoint (ModelNotReady when it is not one); `files`
    identify it in the cache key."""
    return RifeInterpolator(load_ifnet(path), device, files)
