"""torch's thread count in the learned stages: the setting, its per-device default, the cores a
container may use, and applying it (issue 13, item 6)."""

import pytest
import torch

from services.common.settings import SettingsError, load_settings
from services.common.threads import apply_torch_threads, torch_thread_count, usable_cores


def settings(**env):
    return load_settings({"NLFPIPE_DEVICE": "cpu", **env})


@pytest.mark.parametrize(
    ("device", "cores", "expected"),
    [("cpu", 1, 1), ("cpu", 2, 1), ("cpu", 8, 7), ("cuda", 16, 1)],
)
def test_default_leaves_a_core_to_the_stage_on_the_cpu_and_uses_one_on_cuda(
    device, cores, expected
):
    assert torch_thread_count(settings(), device, cores) == expected


def test_the_setting_overrides_the_default():
    assert torch_thread_count(settings(NLFPIPE_TORCH_THREADS="3"), "cuda", 2) == 3
    assert settings(NLFPIPE_TORCH_THREADS="auto").torch_threads is None
    for bad in ("0", "two", "-1"):
        with pytest.raises(SettingsError, match="NLFPIPE_TORCH_THREADS"):
            settings(NLFPIPE_TORCH_THREADS=bad)


def test_a_container_cpu_limit_caps_the_usable_cores(tmp_path):
    cpu_max = tmp_path / "cpu.max"
    unlimited = usable_cores(tmp_path / "absent")
    cpu_max.write_text("max 100000\n")
    assert usable_cores(cpu_max) == unlimited
    cpu_max.write_text("50000 100000\n")  # half a CPU: one thread
    assert usable_cores(cpu_max) == 1
    cpu_max.write_text(f"{unlimited * 200000} 100000\n")  # above the affinity: the affinity
    assert usable_cores(cpu_max) == unlimited


def test_apply_sets_torchs_intra_op_threads():
    before = torch.get_num_threads()
    try:
        assert apply_torch_threads(settings(NLFPIPE_TORCH_THREADS="1")) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
