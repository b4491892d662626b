"""STCN mask propagation: the network plus its memory, one frame at a time."""

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from services.common.frames import IMAGENET_MEAN, IMAGENET_STD
from services.tracking.memory import MemoryBank
from services.tracking.stcn_network import STCN


def aggregate(object_probs: torch.Tensor) -> torch.Tensor:
    """STM soft aggregation: object probabilities [n, ...] -> [1 + n, ...] with background
    first, background = prod(1 - p_i), normalized in odds space."""
    background = torch.prod(1 - object_probs, dim=0, keepdim=True)
    probs = torch.cat([background, object_probs], 0).clamp(1e-7, 1 - 1e-7)
    odds = probs / (1 - probs)
    return odds / odds.sum(0, keepdim=True)


def pad_to_multiple(x: torch.Tensor, multiple: int = 16) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Pads the last two dims to a multiple, split evenly before and after."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    return F.pad(x, pad), pad


def unpad(x: torch.Tensor, pad: tuple[int, ...]) -> torch.Tensor:
    left, right, top, bottom = pad
    return x[..., top : x.shape[-2] - bottom, left : x.shape[-1] - right]


class STCNPropagator:
    """A `MaskPropagator` backed by the STCN network (fp16 autocast on CUDA)."""

    def __init__(
        self,
        network: STCN,
        device: str,
        mem_size: int = 128,
        temp_mem_size: int = 2,
        top_k: int = 20,
        seed: int = 0,
    ):
        self.network = network
        self.device = device
        self.mem_size = mem_size
        self.temp_mem_size = temp_mem_size
        self.top_k = top_k
        self.generator = torch.Generator().manual_seed(seed)
        self.memory: MemoryBank | None = None
        self._mean = torch.tensor(IMAGENET_MEAN, device=device)[:, None, None]
        self._std = torch.tensor(IMAGENET_STD, device=device)[:, None, None]

    def _autocast(self):
        if self.device.startswith("cuda"):
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _image(self, frame: np.ndarray) -> tuple[torch.Tensor, tuple[int, ...]]:
        image = torch.from_numpy(frame).to(self.device).permute(2, 0, 1).float() / 255
        return pad_to_multiple(((image - self._mean) / self._std)[None])

    @torch.inference_mode()
    def start(self, init_frame: np.ndarray, init_masks: np.ndarray, permanent_frames: int) -> None:
        self.memory = MemoryBank(
            min(self.mem_size, permanent_frames), self.temp_mem_size, self.top_k, self.generator
        )
        with self._autocast():
            image, _ = self._image(init_frame)
            masks, _ = pad_to_multiple(torch.from_numpy(init_masks).to(self.device).float())
            key, _, f16, _, _ = self.network.encode_key(image)
            value = self.network.encode_value(image, f16, aggregate(masks)[1:])
            self.memory.add(key[0], value)

    @torch.inference_mode()
    def step(self, index: int, frame: np.ndarray, temporary: bool) -> np.ndarray:
        if self.memory is None:
            raise RuntimeError("start() must be called before step()")
        with self._autocast():
            image, pad = self._image(frame)
            key, value16, f16, f8, f4 = self.network.encode_key(image)
            readout = self.memory.readout(key)
            probs = aggregate(self.network.segment(readout, value16, f8, f4)[:, 0])
            value = self.network.encode_value(image, f16, probs[1:])
            self.memory.add(key[0], value, temporary=temporary)
        return unpad(probs.argmax(0), pad).to(torch.uint8).cpu().numpy()
