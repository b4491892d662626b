"""The exports (glTF binary, BVH, world npz) of synthetic fits with known truth.

The scene: three people walking on a tilted ground in front of a moving, zooming camera.
Track 1 is valid throughout; track 2 has a gap (frames 15-24 invalid); track 3 has two
segments with different shapes ([0, 20) and [20, 45)) and invalid frames 40-44; track 4 is never
valid (it is in the npz only). Truth comes from
smplfitter's body model: joints by its forward kinematics, vertices by linear blend skinning of
its rest mesh (what a glTF skin can express: SMPL's pose blend shapes are not exported).
"""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import bvhio
import numpy as np
import pytest
import torch
from smplfitter.pt import BodyModel

from services.common.colors import track_color
from services.common.errors import InvalidInput, ModelNotReady
from services.common.formats.cameras import CameraTrack
from services.common.formats.fits import TrackFits, load_fits, save_fits
from services.common.formats.ground import save_ground
from services.fitting.synthetic_body_model import write_synthetic_smpl
from services.render.exports import write_exports
from services.render.exports.gltf_scene import srgb_to_linear
from tests.support.scenes import make_scene

ROOT = Path(__file__).resolve().parent.parent
CHECK_SCRIPT = ROOT / "services" / "render" / "exports" / "check_gltf.mjs"
NUM_FRAMES = 45
GAP = slice(15, 25)  # track 2's invalid frames
SPLIT = 20  # track 3's second segment starts here
TAIL = slice(40, 45)  # track 3's trailing invalid frames
PROBE_FRAMES = [0, 10, 16, 20, 30, 44]
PROBE_VERTICES = list(range(0, 6890, 97))
NEVER_VALID = 4  # a track without a single valid frame
ZOOM = 1.3  # focal length at the last frame relative to the first


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return (
        write_synthetic_smpl(tmp_path_factory.mktemp("body_models"), genders=("neutral",)) / "smpl"
    )


@pytest.fixture(scope="module")
def body(model_dir) -> BodyModel:
    return BodyModel("smpl", "neutral", model_root=str(model_dir))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, body) -> dict:
    """Fits, ground and display cameras on disk, and the fits' tracks by id."""
    scene = make_scene(body, num_frames=NUM_FRAMES, num_people=3, seed=3)
    cams = scene.cameras
    zoom = np.linspace(1, ZOOM, NUM_FRAMES)
    cams.intrinsics = cams.intrinsics.copy()
    cams.intrinsics[:, 0, 0] *= zoom
    cams.intrinsics[:, 1, 1] *= zoom
    tracks = []
    for p in scene.people:
        valid = np.ones(NUM_FRAMES, bool)
        segments, betas = np.array([[0, NUM_FRAMES]]), p.betas[None]
        if p.track_id == 2:
            valid[GAP] = False
        if p.track_id == 3:
            valid[TAIL] = False
            segments = np.array([[0, SPLIT], [SPLIT, NUM_FRAMES]])
            betas = np.stack([p.betas, p.betas + np.linspace(-0.8, 0.8, 10)])
        pose, trans = p.pose.astype(np.float32), p.trans.astype(np.float32)
        pose[~valid], trans[~valid] = np.nan, np.nan
        scale = np.where(valid, 1.0, np.nan).astype(np.float32)
        tracks.append(
            TrackFits(p.track_id, pose, trans, betas.astype(np.float32), segments, scale, valid)
        )
    nothing = np.full((NUM_FRAMES, 72), np.nan, np.float32)
    tracks.append(
        TrackFits(
            NEVER_VALID,
            nothing,
            nothing[:, :3],
            np.full((1, 10), np.nan, np.float32),
            np.array([[0, NUM_FRAMES]]),
            nothing[:, 0],
            np.zeros(NUM_FRAMES, bool),
        )
    )
    folder = tmp_path_factory.mktemp("fitting")
    paths = {
        "fits": folder / "fits.npz",
        "ground": folder / "ground.json",
        "display_cameras": folder / "display_cameras.npz",
    }
    meta = {
        "fps": scene.fps,
        "fps_factor": 1,
        "num_frames": NUM_FRAMES,
        "body_model": "smpl",
        "gender": "neutral",
        "units": {"trans": "m", "pose_rotvecs": "rad"},
    }
    save_fits(paths["fits"], tracks, meta)
    save_ground(paths["ground"], scene.up, scene.ground_height_mm, 90, 100, True)
    cams.save(paths["display_cameras"])
    return {"paths": paths, "tracks": {t.track_id: t for t in tracks}, "scene": scene}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, inputs, model_dir) -> dict:
    calls = []
    out = write_exports(
        **inputs["paths"],
        body_model_dir=model_dir,
        gender="neutral",
        out_dir=tmp_path_factory.mktemp("exports"),
        progress=lambda done, total, message: calls.append((done, total, message)),
    )
    return {"files": out, "progress": calls}


@pytest.fixture(scope="module")
def glb(exported) -> dict:
    return read_glb(exported["files"]["scene.glb"])


@pytest.fixture(scope="module")
def node_check(exported) -> dict:
    """The validator's report and three.js's view of the scene (one Node process)."""
    options = json.dumps({"frames": PROBE_FRAMES, "vertices": PROBE_VERTICES})
    result = subprocess.run(
        ["node", str(CHECK_SCRIPT), str(exported["files"]["scene.glb"]), options],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, (
        f"{result.stderr}\n(`make setup` installs gltf-validator and three from package.json)"
    )
    return json.loads(result.stdout)


def read_glb(path: Path) -> dict:
    """The JSON document and an accessor reader of a .glb file."""
    data = Path(path).read_bytes()
    magic, version, length = struct.unpack_from("<III", data)
    assert (magic, version, length) == (0x46546C67, 2, len(data))
    json_len, _ = struct.unpack_from("<II", data, 12)
    doc = json.loads(data[20 : 20 + json_len])
    bin_len, _ = struct.unpack_from("<II", data, 20 + json_len)
    binary = data[28 + json_len : 28 + json_len + bin_len]
    dtypes = {5121: np.uint8, 5123: np.uint16, 5125: np.uint32, 5126: np.float32}
    sizes = {"SCALAR": 1, "VEC3": 3, "VEC4": 4, "MAT4": 16}

    def accessor(index: int) -> np.ndarray:
        acc = doc["accessors"][index]
        view = doc["bufferViews"][acc["bufferView"]]
        dtype = np.dtype(dtypes[acc["componentType"]])
        start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
        count = acc["count"] * sizes[acc["type"]]
        flat = np.frombuffer(binary, dtype, count, start)
        return flat.reshape(acc["count"], -1) if sizes[acc["type"]] > 1 else flat

    return {"doc": doc, "accessor": accessor}


def node_by_name(doc: dict, name: str) -> int:
    return next(i for i, n in enumerate(doc["nodes"]) if n.get("name") == name)


def node_animation(glb: dict, node: int) -> dict[str, np.ndarray]:
    anim = glb["doc"]["animations"][0]
    out = {}
    for channel in anim["channels"]:
        if channel["target"].get("node") == node:
            out[channel["target"]["path"]] = glb["accessor"](
                anim["samplers"][channel["sampler"]]["output"]
            )
    return out


def world_to_scene(glb: dict) -> tuple[np.ndarray, np.ndarray]:
    m = np.array(glb["doc"]["scenes"][0]["extras"]["world_to_scene"])
    return m[:3, :3], m[:3, 3]


def segment_of(track: TrackFits, frame: int) -> int:
    return int(np.searchsorted(track.segments[:, 0], frame, side="right") - 1)


def truth(body: BodyModel, track: TrackFits, frames, segment: int | None = None) -> dict:
    """smplfitter's joints (n, 24, 3) in world metres of the fits at `frames` (of segment
    `segment`, default: each frame's own)."""
    frames = np.asarray(frames)
    seg = [segment_of(track, f) if segment is None else segment for f in frames]
    with torch.no_grad():
        posed = body(
            torch.as_tensor(track.pose_rotvecs[frames]),
            torch.as_tensor(track.shape_betas[seg]),
            torch.as_tensor(track.trans[frames]),
            return_vertices=False,
        )
    return {k: v.double().numpy() for k, v in posed.items()}


def skinned_vertices(body: BodyModel, track: TrackFits, frames, segment: int) -> np.ndarray:
    """(n, V, 3) linear blend skinning of the segment's rest mesh by smplfitter's joint
    transforms at `frames` (SMPL without its pose blend shapes), world metres."""
    posed = truth(body, track, frames, segment)
    with torch.no_grad():
        rest = body(torch.zeros(1, 72), torch.as_tensor(track.shape_betas[segment : segment + 1]))
    rest_joints, rest_vertices = rest["joints"][0].double().numpy(), rest["vertices"][0].double()
    g, joints = posed["orientations"], posed["joints"]
    offsets = joints - np.einsum("njab,jb->nja", g, rest_joints)
    weights = body.weights.double().numpy()
    blended = np.einsum("vj,njab->nvab", weights, g)
    return np.einsum("nvab,vb->nva", blended, rest_vertices.numpy()) + weights @ offsets


def shown_segments(tracks: dict):
    """(mesh name, track, segment index, probe frames where it is shown) of every segment with
    a valid frame."""
    for tid, t in tracks.items():
        for k, (start, end) in enumerate(t.segments):
            if not t.valid[start:end].any():
                continue
            name = f"track_{tid}" if len(t.segments) == 1 else f"track_{tid}_seg{k}"
            frames = [f for f in PROBE_FRAMES if start <= f < end and t.valid[f]]
            yield name, t, k, frames


def test_outputs_are_named_per_track_and_segment(exported) -> None:
    assert sorted(exported["files"]) == [
        "scene.glb",
        "track_1.bvh",
        "track_2.bvh",
        "track_3_seg0.bvh",
        "track_3_seg1.bvh",
        "world.npz",
    ]
    assert all(p.is_file() and p.stat().st_size > 0 for p in exported["files"].values())
    assert exported["progress"][-1][:2] == (6, 6)
    assert [c[0] for c in exported["progress"]] == [1, 2, 3, 4, 5, 6]


def test_glb_passes_the_khronos_validator(node_check) -> None:
    report = node_check["validation"]
    assert report["errors"] == 0, "\n".join(report["messages"])
    assert report["warnings"] == 0, "\n".join(report["messages"])


def test_glb_size_is_float32_one_buffer(exported, glb) -> None:
    doc = glb["doc"]
    assert len(doc["buffers"]) == 1
    # 4 meshes of 6890 vertices: positions + normals + shared skin data + 45 frames of motion.
    assert exported["files"]["scene.glb"].stat().st_size < 1.6e6
    assert {a["componentType"] for a in doc["accessors"]} <= {5121, 5123, 5125, 5126}


def test_export_frame_is_y_up_with_the_floor_at_zero(glb, inputs, node_check, body) -> None:
    rot, shift = world_to_scene(glb)
    scene = inputs["scene"]
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-9)
    assert np.linalg.det(rot) == pytest.approx(1.0)
    np.testing.assert_allclose(rot @ scene.up, [0, 1, 0], atol=1e-9)
    # The lowest foot joint touches the fitted plane in every frame; that plane is at the sole
    # depth above y = 0 and the soles of the mean shape reach y = 0.
    with torch.no_grad():
        rest = body(torch.zeros(1, 72), torch.zeros(1, 10))
    sole = float(rest["joints"][0, [10, 11], 1].mean() - rest["vertices"][0, :, 1].min())
    track = inputs["tracks"][1]
    feet = truth(body, track, np.arange(NUM_FRAMES))["joints"][:, [10, 11]] @ rot.T + shift
    np.testing.assert_allclose(feet[..., 1].min(axis=1), sole, atol=2e-3)
    ground = glb["doc"]["nodes"][node_by_name(glb["doc"], "ground")]
    corners = np.concatenate(
        [
            glb["accessor"](prim["attributes"]["POSITION"])
            for prim in glb["doc"]["meshes"][ground["mesh"]]["primitives"]
        ]
    )
    assert np.all(corners[:, 1] == 0)
    bones = np.concatenate(
        [m["bones"] for f in node_check["three"]["frames"] for m in f["meshes"].values()]
    )[:, [0, 2]]
    assert np.all(bones > corners[:, [0, 2]].min(0) + 1) and np.all(
        bones < corners[:, [0, 2]].max(0) - 1
    )


def test_three_js_skins_the_meshes_like_smpl(node_check, glb, inputs, body) -> None:
    rot, shift = world_to_scene(glb)
    three = node_check["three"]
    assert sorted(three["skinned_meshes"]) == [
        "track_1_mesh",
        "track_2_mesh",
        "track_3_seg0_mesh",
        "track_3_seg1_mesh",
    ]
    assert three["bones_per_mesh"] == [24] * 4
    assert three["duration"] == pytest.approx((NUM_FRAMES - 1) / inputs["scene"].fps, abs=1e-5)
    for name, track, k, frames in shown_segments(inputs["tracks"]):
        joints = truth(body, track, frames, k)["joints"] @ rot.T + shift
        vertices = skinned_vertices(body, track, frames, k)[:, PROBE_VERTICES] @ rot.T + shift
        for i, f in enumerate(frames):
            got = three["frames"][PROBE_FRAMES.index(f)]["meshes"][f"{name}_mesh"]
            np.testing.assert_allclose(got["bones"], joints[i], atol=1e-5, err_msg=f"{name} {f}")
            np.testing.assert_allclose(
                got["vertices"], vertices[i], atol=1e-4, err_msg=f"{name} {f}"
            )


def test_hidden_frames_collapse_the_mesh(node_check) -> None:
    hidden = {"track_2": [16], "track_3_seg0": [20, 30, 44], "track_3_seg1": [0, 10, 16, 44]}
    frames = node_check["three"]["frames"]
    for name, probe in hidden.items():
        for f in probe:
            vertices = np.array(frames[PROBE_FRAMES.index(f)]["meshes"][f"{name}_mesh"]["vertices"])
            assert np.ptp(vertices, axis=0).max() < 1e-6, f"{name} visible at frame {f}"
    shown = np.array(frames[PROBE_FRAMES.index(30)]["meshes"]["track_3_seg1_mesh"]["vertices"])
    assert np.ptp(shown, axis=0).max() > 0.5


def test_visibility_channels_step_with_validity(glb, inputs) -> None:
    doc = glb["doc"]
    for name, track, k, _ in shown_segments(inputs["tracks"]):
        start, end = track.segments[k]
        visible = np.zeros(NUM_FRAMES, bool)
        visible[start:end] = track.valid[start:end]
        mesh_node = doc["nodes"][node_by_name(doc, f"{name}_mesh")]
        assert mesh_node["extras"]["frames"] == [start, end]
        np.testing.assert_allclose(
            mesh_node["extras"]["shape_betas"], track.shape_betas[k], atol=1e-6
        )
        channels = node_animation(glb, node_by_name(doc, f"{name}_pelvis"))
        if visible.all():
            assert "scale" not in channels
        else:
            np.testing.assert_array_equal(channels["scale"], np.repeat(visible[:, None], 3, 1))
    samplers = doc["animations"][0]["samplers"]
    times = glb["accessor"](samplers[0]["input"])
    np.testing.assert_allclose(times, np.arange(NUM_FRAMES) / inputs["scene"].fps, atol=1e-6)


def test_materials_use_the_track_palette(glb) -> None:
    doc = glb["doc"]
    for tid in (1, 2, 3):
        names = [f"track_{tid}"] if tid != 3 else ["track_3_seg0", "track_3_seg1"]
        for name in names:
            mesh = doc["meshes"][doc["nodes"][node_by_name(doc, f"{name}_mesh")]["mesh"]]
            material = doc["materials"][mesh["primitives"][0]["material"]]
            color = material["pbrMetallicRoughness"]["baseColorFactor"]
            assert color == [*srgb_to_linear(track_color(tid)), 1.0]
    assert "non-commercial" in doc["asset"]["copyright"]


def test_camera_animation_matches_the_display_cameras(glb, inputs, node_check, body) -> None:
    cams = CameraTrack.load(inputs["paths"]["display_cameras"])
    doc = glb["doc"]
    rot, shift = world_to_scene(glb)
    node = node_by_name(doc, "recording_camera")
    channels = node_animation(glb, node)
    camera = doc["cameras"][doc["nodes"][node]["camera"]]["perspective"]
    (pointer,) = [c for c in doc["animations"][0]["channels"] if c["target"]["path"] == "pointer"]
    assert pointer["target"]["extensions"]["KHR_animation_pointer"]["pointer"] == (
        f"/cameras/{doc['nodes'][node]['camera']}/perspective/yfov"
    )
    yfov = glb["accessor"](doc["animations"][0]["samplers"][pointer["sampler"]]["output"])
    assert yfov[-1] < yfov[0]  # zooming in
    width, height = cams.image_size
    # Project the pelvis of track 1 with the display camera and with the glTF camera.
    pelvis = truth(body, inputs["tracks"][1], np.arange(NUM_FRAMES))
    for f in range(NUM_FRAMES):
        world = pelvis["joints"][f, 0]
        expected = cams.project(world * 1000, f)
        q = channels["rotation"][f].astype(np.float64)
        cam_to_scene = quaternion_matrix(q)
        local = cam_to_scene.T @ (world @ rot.T + shift - channels["translation"][f])
        assert local[2] < 0  # in front of a glTF camera, which looks along -z
        ndc = local[:2] / -local[2] / np.tan(yfov[f] / 2)
        ndc[0] /= camera["aspectRatio"]
        pixel = [(ndc[0] + 1) * width / 2 - 0.5, (1 - ndc[1]) * height / 2 - 0.5]
        np.testing.assert_allclose(pixel, expected, atol=0.05, err_msg=f"frame {f}")
    for probe in node_check["three"]["frames"]:
        matrix = np.array(probe["camera_matrix"]).reshape(4, 4).T
        np.testing.assert_allclose(
            matrix[:3, 3], channels["translation"][probe["frame"]], atol=1e-6
        )
    assert node_check["three"]["camera_fov"] == pytest.approx(np.degrees(yfov[0]), abs=1e-4)


def quaternion_matrix(q: np.ndarray) -> np.ndarray:
    x, y, z, w = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def test_bvh_round_trip_within_1mm(exported, inputs, body, glb) -> None:
    rot, shift = world_to_scene(glb)
    names = body.joint_names
    for name, track, k, _ in shown_segments(inputs["tracks"]):
        path = exported["files"][f"{name}.bvh"]
        header = path.read_text().split("MOTION")[0]
        assert "CHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation" in header
        assert header.count("CHANNELS 3 Zrotation Xrotation Yrotation") == 23
        bvh = bvhio.readAsBvh(str(path))
        assert bvh.FrameCount == NUM_FRAMES
        assert bvh.FrameTime == pytest.approx(1 / inputs["scene"].fps, abs=1e-8)
        root = bvhio.readAsHierarchy(str(path))
        joints = {j.Name: j for j, _, _ in root.layout()}
        assert sorted(joints) == sorted(names)
        start, end = track.segments[k]
        frames = np.flatnonzero(track.valid[start:end]) + start
        expected = truth(body, track, frames, k)["joints"] @ rot.T + shift
        for i, f in enumerate(frames):
            root.loadPose(int(f))
            got = np.array([list(joints[n].PositionWorld) for n in names]) / 100
            error = np.linalg.norm(got - expected[i], axis=1).max()
            assert error <= 1e-3, f"{name} frame {f}: {error * 1000:.3f} mm"


def test_bvh_holds_the_nearest_pose_where_hidden(exported) -> None:
    values = np.loadtxt(
        exported["files"]["track_2.bvh"].read_text().split("Frame Time:")[1].splitlines()[1:]
    )
    assert np.isfinite(values).all()
    np.testing.assert_array_equal(values[GAP.start], values[GAP.start - 1])
    np.testing.assert_array_equal(values[GAP.stop - 1], values[GAP.stop])


def test_world_npz_matches_the_fits(exported, inputs, body, glb) -> None:
    meta, fits = load_fits(inputs["paths"]["fits"])
    cams = CameraTrack.load(inputs["paths"]["display_cameras"])
    with np.load(exported["files"]["world.npz"], allow_pickle=False) as data:
        assert str(data["format"]) == "nlfpipe.world/1"
        world_meta = json.loads(str(data["meta"]))
        assert world_meta["track_ids"] == [1, 2, 3, NEVER_VALID]
        assert world_meta["fps"] == meta["fps"]
        assert "non-commercial" in world_meta["license"]
        assert list(data["joint_names"]) == list(body.joint_names)
        np.testing.assert_allclose(
            data["world_to_export"], glb["doc"]["scenes"][0]["extras"]["world_to_scene"], atol=1e-8
        )
        np.testing.assert_allclose(data["cameras/optical_center"], cams.optical_center / 1000)
        np.testing.assert_allclose(data["cameras/intrinsics"], cams.intrinsics)
        np.testing.assert_allclose(data["cameras/rotation"], cams.rotation)
        np.testing.assert_allclose(data["ground/up"], inputs["scene"].up, atol=1e-9)
        assert float(data["ground/height"]) == pytest.approx(
            inputs["scene"].ground_height_mm / 1000
        )
        for tid, track in fits.items():
            p = f"track_{tid}/"
            np.testing.assert_array_equal(data[p + "valid"], track.valid)
            np.testing.assert_array_equal(data[p + "pose_rotvecs"], track.pose_rotvecs)
            np.testing.assert_array_equal(data[p + "trans"], track.trans)
            np.testing.assert_array_equal(data[p + "segments"], track.segments)
            np.testing.assert_array_equal(data[p + "shape_betas"], track.betas_per_frame())
            valid = np.flatnonzero(track.valid)
            expected = truth(body, track, valid)["joints"]
            np.testing.assert_allclose(data[p + "joints"][valid], expected, atol=1e-5)
            assert np.isnan(data[p + "joints"][~track.valid]).all()


def test_formats_can_be_chosen(inputs, model_dir, tmp_path) -> None:
    out = write_exports(
        **inputs["paths"],
        body_model_dir=model_dir,
        gender="neutral",
        out_dir=tmp_path,
        formats=("npz",),
    )
    assert list(out) == ["world.npz"]
    assert [p.name for p in tmp_path.iterdir()] == ["world.npz"]


def test_inconsistent_inputs_are_refused(inputs, model_dir, tmp_path) -> None:
    paths = dict(inputs["paths"])
    common = {"body_model_dir": model_dir, "out_dir": tmp_path / "out"}
    short = CameraTrack.load(paths["display_cameras"])
    short = CameraTrack(
        short.intrinsics[:-1],
        short.rotation[:-1],
        short.optical_center[:-1],
        short.distortion[:-1],
        short.world_up,
        short.image_size,
    )
    short.save(tmp_path / "short.npz")
    with pytest.raises(InvalidInput, match=r"44 cameras but fits.npz has 45 frames"):
        write_exports(
            **{**paths, "display_cameras": tmp_path / "short.npz"}, gender="neutral", **common
        )
    with pytest.raises(InvalidInput, match=r"fitted with the neutral body model.*'male'"):
        write_exports(**paths, gender="male", **common)
    with pytest.raises(InvalidInput, match=r"choose from glb, bvh, npz"):
        write_exports(**paths, gender="neutral", formats=("fbx",), **common)
    with pytest.raises(ModelNotReady, match=r"basicmodel_neutral"):
        write_exports(**paths, gender="neutral", body_model_dir=tmp_path, out_dir=tmp_path / "o")
    meta, fits = load_fits(paths["fits"])
    bad = fits[1]
    bad.segments = np.array([[0, 30], [20, NUM_FRAMES]])
    bad.shape_betas = np.zeros((2, 10), np.float32)
    save_fits(tmp_path / "fits.npz", [bad], meta)
    with pytest.raises(InvalidInput, match=r"track 1: segments .* non-overlapping"):
        write_exports(**{**paths, "fits": tmp_path / "fits.npz"}, gender="neutral", **common)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_without_a_ground_plane_the_world_origin_stays(inputs, model_dir, tmp_path) -> None:
    save_ground(tmp_path / "ground.json", inputs["scene"].up, float("nan"), 0, 12, False)
    out = write_exports(
        **{**inputs["paths"], "ground": tmp_path / "ground.json"},
        body_model_dir=model_dir,
        gender="neutral",
        out_dir=tmp_path / "out",
        formats=("glb",),
    )
    doc = read_glb(out["scene.glb"])["doc"]
    assert "ground" not in [n.get("name") for n in doc["nodes"]]
    matrix = np.array(doc["scenes"][0]["extras"]["world_to_scene"])
    np.testing.assert_array_equal(matrix[:3, 3], 0)
    np.testing.assert_allclose(matrix[:3, :3] @ inputs["scene"].up, [0, 1, 0], atol=1e-9)
