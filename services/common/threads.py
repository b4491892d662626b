"""torch's intra-op thread count in the learned stages (``NLFPIPE_TORCH_THREADS``).

torch's default is one thread per core. On the CPU those threads spin at the end of every
parallel region, and they share the cores with the stage's own threads (the frame decoder, the
output compression, gRPC) and, in embedded mode, with the other stages running at the same
time: on 2 cores the pose stage's stand-in then spent most of its time waiting on spinning
threads. Measured defaults (docs/benchmarks.md, "threads"):

- CUDA: 1 thread. The network runs on the GPU; torch's CPU work is copying tensors.
- CPU: one thread per core but one (at least 1), leaving a core to the decoder, the writer
  and the stages beside it.

``serve`` applies the count once for a learned stage whose service modules import torch (all
of them import it at module level), after building the service and before it loads its
models; benchmarks call ``apply_torch_threads`` so that they measure the service's own
configuration.
"""

import logging
import math
import os
from pathlib import Path

from services.common.settings import Settings, resolve_device

log = logging.getLogger(__name__)


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The cores this process may use: its CPU affinity (a container's cpuset), capped by a
    cgroup v2 CPU quota (a container's CPU limit, rounded up)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def torch_thread_count(settings: Settings, device: str, cores: int | None = None) -> int:
    """The configured count, else the default for `device` ("cpu" or "cuda") on `cores`."""
    if settings.torch_threads is not None:
        return settings.torch_threads
    if device.startswith("cuda"):
        return 1
    return max(1, (usable_cores() if cores is None else cores) - 1)


def apply_torch_threads(settings: Settings) -> int:
    """Sets torch's intra-op thread count for this process; returns it."""
    import torch

    count = torch_thread_count(settings, resolve_device(settings))
    torch.set_num_threads(count)
    log.info("torch uses %d intra-op thread(s)", count)
    return count
