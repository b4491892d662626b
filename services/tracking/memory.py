"""STCN memory bank: bounded permanent memory, a temporary ring buffer, top-k L2 readout."""

import math

import torch


class MemoryBank:
    """Keys [Ck, M] and values [M, n_objects x Cv] of remembered frames, M = frames x pixels.

    Each key's squared norm is stored with it (computed once, at the write), and values are
    pixel-major so that the readout gathers each top-k pixel's values as one contiguous row.

    Permanent memory holds at most `capacity` frames; once full, each new frame overwrites
    randomly chosen pixel slots (reference B.12: this biases the memory toward recent frames).
    The temporary memory is a ring buffer of `temp_capacity` frames, used by the final pass so
    that the burn-in memory stays intact. Storage is allocated once, at the first write, for
    both capacities: the bank never grows past it.
    """

    def __init__(
        self,
        capacity: int,
        temp_capacity: int,
        top_k: int,
        generator: torch.Generator | None = None,
        query_chunk_bytes: int = 64 << 20,
    ):
        if capacity < 1 or temp_capacity < 0 or top_k < 1:
            raise ValueError("memory capacity and top_k must be positive")
        self.capacity = capacity
        self.temp_capacity = temp_capacity
        self.top_k = top_k
        self.generator = generator
        self.query_chunk_bytes = query_chunk_bytes
        self.pixels = 0
        self.frames = 0
        self.temp_frames = 0
        self._next_temp = 0
        self._keys: torch.Tensor | None = None
        self._key_sq: torch.Tensor | None = None
        self._values: torch.Tensor | None = None
        self._value_shape: tuple[int, int] = (0, 0)

    @property
    def stored_frames(self) -> int:
        """Frames currently held, permanent plus temporary."""
        return self.frames + self.temp_frames

    def nbytes(self) -> int:
        """Bytes allocated for keys, their squared norms and values."""
        tensors = (self._keys, self._key_sq, self._values)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def add(self, key: torch.Tensor, value: torch.Tensor, temporary: bool = False) -> None:
        """Stores one frame: key [Ck, H, W], value [n_objects, Cv, H, W].

        A permanent write empties the temporary memory (it holds the latest frames of the
        current final pass only).
        """
        key = key.flatten(1)
        value = value.flatten(2)
        if self._keys is None:
            self._allocate(key, value)
        elif key.shape[1] != self.pixels:
            raise ValueError(f"frame has {key.shape[1]} key pixels, memory holds {self.pixels}")
        if temporary and self.temp_capacity > 0:
            slot = self.frames + self._next_temp
            self._next_temp = (self._next_temp + 1) % self.temp_capacity
            self.temp_frames = min(self.temp_frames + 1, self.temp_capacity)
            self._write(slice(slot * self.pixels, (slot + 1) * self.pixels), key, value)
            return
        self.temp_frames = self._next_temp = 0
        if self.frames < self.capacity:
            span = slice(self.frames * self.pixels, (self.frames + 1) * self.pixels)
            self.frames += 1
            self._write(span, key, value)
            return
        slots = torch.randperm(self.capacity * self.pixels, generator=self.generator, device="cpu")[
            : self.pixels
        ].to(key.device)
        self._write(slots, key, value)

    def _write(self, where: slice | torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
        self._keys[:, where] = key
        self._key_sq[where] = key.pow(2).sum(0)
        self._values[where] = value.flatten(0, 1).t()

    def _allocate(self, key: torch.Tensor, value: torch.Tensor) -> None:
        # One block for both memories: the temporary frames follow the permanent ones, so
        # the readout sees one contiguous view and never copies the memory.
        self.pixels = key.shape[1]
        total = (self.capacity + self.temp_capacity) * self.pixels
        n_obj, cv = value.shape[:2]
        self._value_shape = (n_obj, cv)
        self._keys = key.new_empty(key.shape[0], total)
        self._key_sq = key.new_empty(total)
        self._values = key.new_empty(total, n_obj * cv)

    def _memory(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keys [Ck, M], their squared norms [M] and values [M, O*Cv] of the stored frames."""
        used = self.stored_frames * self.pixels
        return self._keys[:, :used], self._key_sq[:used], self._values[:used]

    def readout(self, query_key: torch.Tensor) -> torch.Tensor:
        """Memory readout for query keys [B, Ck, H, W] -> [n_objects, B, Cv, H, W].

        Affinity is the negative squared L2 distance without the query norm,
        (2 k_m.k_q - |k_m|^2) / sqrt(Ck); each query pixel takes a softmax over its top-k
        memory pixels and averages their values.
        """
        if self.frames == 0:
            raise RuntimeError("memory is empty; add the init frame first")
        keys, key_sq, values = self._memory()
        batch, ck, h, w = query_key.shape
        query = query_key.flatten(2).transpose(1, 2).flatten(0, 1)  # B*Q, Ck
        n_mem = keys.shape[1]
        k = min(self.top_k, n_mem)
        scale = 1 / math.sqrt(ck)
        bias = (key_sq * -scale)[None]  # 1, M
        chunk = max(1, self.query_chunk_bytes // (n_mem * query.element_size()))
        out = [
            self._readout_chunk(query[start : start + chunk], keys, bias, values, k, 2 * scale)
            for start in range(0, query.shape[0], chunk)
        ]
        n_obj, cv = self._value_shape
        readout = torch.cat(out, 0).view(batch, h, w, n_obj, cv)
        return readout.permute(3, 0, 4, 1, 2).contiguous()

    @staticmethod
    def _readout_chunk(
        query: torch.Tensor,
        keys: torch.Tensor,
        bias: torch.Tensor,
        values: torch.Tensor,
        k: int,
        alpha: float,
    ) -> torch.Tensor:
        """Query keys [q, Ck] -> top-k weighted values [q, O*Cv]; affinities [q, M] are
        contiguous along the memory, where top-k searches."""
        affinity = torch.addmm(bias, query, keys, alpha=alpha)
        top_values, top_index = affinity.topk(k, dim=1)  # q, k
        weights = top_values.softmax(dim=1)
        return torch.bmm(weights[:, None], values[top_index]).squeeze(1)
