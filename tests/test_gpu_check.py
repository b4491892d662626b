"""benchmarks/gpu_check: the clean skip without CUDA, the comparison logic, and a quick
CPU-against-CPU run of every stage's code path."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_script_skips_cleanly_without_a_cuda_device():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _last_json(done.stdout)["skipped"] == "no CUDA device"


def test_relative_difference_catches_an_error_above_the_fp16_limit():
    reference = np.random.default_rng(0).normal(0, 3.0, (4, 50))
    scale = np.abs(reference).max()
    noisy = reference + 1e-3 * scale * np.sin(np.arange(reference.size)).reshape(reference.shape)
    assert gpu_check.check(gpu_check.relative_difference(reference, noisy), gpu_check.FP16_REL)[
        "passed"
    ]
    wrong = reference * 1.05  # e.g. a wrong normalization
    value = gpu_check.relative_difference(reference, wrong)
    assert value == pytest.approx(0.05)
    assert not gpu_check.check(value, gpu_check.FP16_REL)["passed"]


def test_non_finite_or_misshaped_outputs_fail():
    reference = np.ones((3, 3))
    with_nan = reference.copy()
    with_nan[1, 1] = np.nan
    assert gpu_check.relative_difference(reference, with_nan) == math.inf
    assert gpu_check.relative_difference(reference, np.ones((3, 4))) == math.inf
    assert not gpu_check.check(math.nan, 1.0)["passed"]
    assert gpu_check.label_agreement(np.zeros((2, 2)), np.zeros((2, 3))) == 0.0


def test_label_agreement_and_level_differences():
    a = np.zeros((10, 10), np.uint8)
    b = a.copy()
    b[0, :5] = 1
    assert gpu_check.label_agreement(a, b) == pytest.approx(0.95)
    assert gpu_check.check(0.95, gpu_check.LABEL_AGREEMENT, at_most=False)["passed"]
    assert not gpu_check.check(0.5, gpu_check.LABEL_AGREEMENT, at_most=False)["passed"]
    x = np.full((10, 10, 3), 100, np.uint8)
    y = x.copy()
    y[0, 0, 0] = 140
    mean, p99 = gpu_check.level_differences(x, y)
    assert mean == pytest.approx(40 / 300) and p99 < 1


def test_summary_lists_failed_checks_and_errors():
    results = {
        "semseg": {"frames_per_s": {"semseg_deeplabv3": 12.345},
                   "checks": {"rel": gpu_check.check(0.5, 0.01)}},
        "pose": {"error": "RuntimeError: boom"},
        "render": {"skipped": "no EGL"},
    }  # fmt: skip
    summary = gpu_check.summarize(results)
    assert summary["failed"] == ["semseg.rel", "pose (error)"]
    assert summary["frames_per_s"] == {"semseg_deeplabv3": 12.35}
    assert summary["skipped"] == {"render": "no EGL"} and not summary["checks_passed"]


def test_sphere_silhouette_is_its_projection_in_pixels():
    mesh, faces = gpu_check.sphere_mesh()
    assert mesh.shape == (6889, 6) and faces.max() < len(mesh)
    from services.common.formats.cameras import intrinsics_from_fov

    k = intrinsics_from_fov(55.0, 192, 108)
    mask = gpu_check.projected_silhouette(mesh[:, :3], faces, k, 192, 108)
    # an ellipse of semi-axes f * 300 / 3000 and f * 450 / 3000 pixels (within a pixel's rim)
    expected = math.pi * (k[0, 0] * 0.1) * (k[1, 1] * 0.15)
    assert mask.sum() == pytest.approx(expected, rel=0.08)


def test_quick_cpu_run_compares_cpu_with_cpu_and_passes():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"),
                           "--device", "cpu", "--quick"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    summary = _last_json(done.stdout)
    assert done.returncode == 0, done.stderr[-3000:]
    assert summary["checks_passed"] and summary["failed"] == []
    ran = set(summary["stages"]) - set(summary["skipped"])
    assert {"tracking", "semseg", "pose", "interpolation", "depth"} <= ran
    assert set(summary["skipped"]) <= {"render"}  # only where this machine has no EGL
    for stage in ran:
        for name, result in summary["stages"][stage]["checks"].items():
            # the same weights and inputs on the same device give the same numbers
            expected = 0.0 if result["at_most"] else 1.0
            if name != "silhouette_iou":
                assert result["value"] == pytest.approx(expected, abs=1e-6), (stage, name)
    assert all(rate > 0 for rate in summary["frames_per_s"].values())
    assert summary["device"] == "cpu" and summary["torch"]
