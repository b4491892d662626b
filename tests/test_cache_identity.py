"""Cache identity: every model and data file a stage loads, its device and its precision are
part of the cache key, so a changed file (or device, or precision) is a cache miss, never a hit
returning results of other models (issue 13, item 1)."""

import json

import numpy as np
import pytest
from rlemasklib import RLEMask

from nlfpipe.common.v1 import common_pb2
from nlfpipe.pose.v1 import pose_pb2
from services.common.formats.masks import write_track_masks
from services.common.identity import (
    ModelIdentity,
    data_identity,
    file_identity,
    registry_files,
    with_identity,
)
from services.common.models import load_registry
from services.common.settings import load_settings
from services.common.stagerun import cache_key
from services.common.store import LocalFolderStore
from services.fitting.service import BodyModels
from services.fitting.synthetic_body_model import write_synthetic_smpl
from services.pose.service import PoseModels, PoseServicer
from services.semseg.backends import deeplab_identity
from services.tracking.backends import stcn_identity
from tests.support.fake_nlf import install_test_models
from tests.support.videos import make_test_video


def key_of(identity: ModelIdentity) -> str:
    return cache_key("stage", "1", {"video": "abc"}, with_identity({"p": 1}, identity))


def settings_for(cache):
    return load_settings({"NLFPIPE_MODEL_CACHE": str(cache), "NLFPIPE_DEVICE": "cpu"})


def fill_registry_files(cache, *names) -> None:
    """Writes small stand-in files at the registry paths of the named models."""
    registry = load_registry()
    for name in names:
        for rel in registry[name].required_paths():
            path = cache / name / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f"{name}/{rel}".encode())


def test_identity_names_each_file_with_its_sha256_and_changes_with_any_part(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "sub" / "b.npy"
    b.parent.mkdir()
    a.write_bytes(b"weights")
    b.write_bytes(b"points")
    files = [file_identity("m", a), file_identity("data", b, tmp_path)]
    identity = ModelIdentity.of(files, device="cpu", precision="float32")
    assert identity.params() == {
        "models": [
            {"name": "m", "file": "a.bin", "sha256": files[0].sha256},
            {"name": "data", "file": "sub/b.npy", "sha256": files[1].sha256},
        ],
        "device": "cpu",
        "precision": "float32",
    }
    keys = {
        key_of(identity),
        key_of(ModelIdentity.of(files, device="cuda", precision="float32")),
        key_of(ModelIdentity.of(files, device="cpu", precision="float16")),
        key_of(ModelIdentity.of(files[:1], device="cpu", precision="float32")),
        key_of(ModelIdentity.of([files[0], data_identity("data", "sub/b.npy", b"other")],
                                device="cpu", precision="float32")),
    }
    assert len(keys) == 5
    b.write_bytes(b"points, changed")  # the hash cache is keyed by size and mtime
    changed = ModelIdentity.of([files[0], file_identity("data", b, tmp_path)], "cpu", "float32")
    assert key_of(changed) != key_of(identity)
    with pytest.raises(ValueError, match="identity"):
        with_identity({"identity": 1}, identity)


def test_registry_files_cover_every_required_file_of_a_model(tmp_path):
    fill_registry_files(tmp_path, "nlf-data")
    files = registry_files("nlf-data", settings_for(tmp_path))
    assert [(f.name, f.file) for f in files] == [
        ("nlf-data", "canonical_verts/smpl.npy"),
        ("nlf-data", "canonical_joints/smpl.npy"),
    ]


def test_tracking_identity_holds_both_networks_device_and_precision(tmp_path):
    fill_registry_files(tmp_path, "maskrcnn", "stcn")
    settings = settings_for(tmp_path)
    cpu = stcn_identity(settings, "cpu")
    assert [f.name for f in cpu.files] == ["maskrcnn", "stcn"]
    assert (cpu.device, cpu.precision) == ("cpu", "float32")
    cuda = stcn_identity(settings, "cuda")
    assert (cuda.device, cuda.precision) == ("cuda", "float16-autocast")
    (tmp_path / "stcn" / "stcn.pth").write_bytes(b"other STCN weights")
    assert len({key_of(cpu), key_of(cuda), key_of(stcn_identity(settings, "cpu"))}) == 3


def test_semseg_identity_holds_the_weights_and_device(tmp_path):
    fill_registry_files(tmp_path, "deeplabv3")
    settings = settings_for(tmp_path)
    cpu = deeplab_identity(settings, "deeplabv3", "cpu")
    assert [f.name for f in cpu.files] == ["deeplabv3"]
    assert (cpu.device, cpu.precision) == ("cpu", "float32")
    weights = tmp_path / "deeplabv3" / load_registry()["deeplabv3"].files[0].name
    weights.write_bytes(b"other weights")
    again = deeplab_identity(settings, "deeplabv3", "cpu")
    cuda = deeplab_identity(settings, "deeplabv3", "cuda")
    assert len({key_of(cpu), key_of(again), key_of(cuda)}) == 3


def test_fitting_identity_holds_every_body_model_file_and_the_vertex_subset(tmp_path):
    root = write_synthetic_smpl(tmp_path / "models", genders=("neutral",))
    settings = settings_for(root)
    models = BodyModels(settings)
    models.get("smpl", "neutral")
    identity = models.identity("smpl", "neutral")
    assert [f.file for f in identity.files] == [
        "basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl",
        "kid_template.npy",
        "vertex_subset[1024]",
    ]
    np.save(root / "smpl" / "kid_template.npy", np.full((6890, 3), 0.01))
    reloaded = BodyModels(settings)
    reloaded.get("smpl", "neutral")
    assert key_of(reloaded.identity("smpl", "neutral")) != key_of(identity)


class _Context:
    """The part of a gRPC servicer context that `stream_stage` uses."""

    def add_callback(self, callback) -> bool:
        return True


def _run_pose(cache, store, refs) -> pose_pb2.RunResult:
    servicer = PoseServicer(store, PoseModels(settings_for(cache)), "nlf-s")
    request = pose_pb2.RunRequest(video=refs["video"], masks=refs["masks"], model="nlf-s")
    responses = list(servicer.Run(request, _Context()))
    return responses[-1].result


def test_pose_with_other_canonical_points_is_a_cache_miss(tmp_path):
    """The case of the issue: the same request after the canonical points changed."""
    cache = tmp_path / "models"
    install_test_models(cache, num_vertices=30)
    store = LocalFolderStore(tmp_path / "store")
    make_test_video(tmp_path / "v.mp4", seconds=0.4, width=160, height=120, fps=10, figures=1)
    mask = np.zeros((120, 160), np.uint8)
    mask[20:100, 30:60] = 1
    write_track_masks(tmp_path / "m.zst", [{0: RLEMask.from_array(mask)}] * 4, 120, 160)
    refs = {}
    for name, path in (("video", "v.mp4"), ("masks", "m.zst")):
        info = store.put_file(f"in/{path}", tmp_path / path, "application/octet-stream")
        refs[name] = common_pb2.ArtifactRef(uri=info.uri, sha256=info.sha256)

    first = _run_pose(cache, store, refs)
    assert not first.summary.cache_hit
    assert _run_pose(cache, store, refs).summary.cache_hit  # a restarted service: same files

    verts_path = cache / "nlf-data" / "canonical_verts" / "smpl.npy"
    np.save(verts_path, np.load(verts_path) + np.float32(1.0))  # every vertex 1 m off
    moved = _run_pose(cache, store, refs)
    assert not moved.summary.cache_hit
    assert moved.summary.cache_key != first.summary.cache_key
    assert moved.predictions.sha256 != first.predictions.sha256

    manifest = json.loads(store.get_bytes(store.key_from_uri(moved.summary.manifest.uri)))
    recorded = manifest["params"]["identity"]
    assert [(m["name"], m["file"]) for m in recorded["models"]] == [
        ("nlf-s", "nlf_s_multi_0.2.2.torchscript"),
        ("nlf-data", "canonical_verts/smpl.npy"),
        ("nlf-data", "canonical_joints/smpl.npy"),
    ]
    assert (recorded["device"], recorded["precision"]) == ("cpu", "float32")
