"""Rendered silhouettes against their analytic projections: a box and a posed synthetic body,
at the cameras' resolution and at others (half-pixel convention), with and without distortion."""

import cv2
import numpy as np
import pytest

from services.common.formats.cameras import CameraTrack, intrinsics_from_fov
from services.render.bodies import BodyMeshes
from services.render.gl import gl_context
from services.render.scene import Scene
from services.render.views import CameraView
from services.render.world import frustum_lines_mm

IMAGE_W, IMAGE_H = 320, 240
SUBPIXEL_BITS = 8


def _camera(distortion=(0, 0, 0, 0, 0)) -> CameraTrack:
    """One camera at (100, -300, -200) mm looking at the point (0, 0, 3000), slightly rolled."""
    position = np.array([100.0, -300.0, -200.0])
    z = np.array([0.0, 0.0, 3000.0]) - position
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.05, -1.0, 0.0])
    x /= np.linalg.norm(x)
    rotation = np.stack([x, np.cross(z, x), z])
    k = intrinsics_from_fov(50.0, IMAGE_W, IMAGE_H)
    k[0, 2] += 7.3  # an off-centre principal point catches a wrong convention
    k[1, 2] -= 4.1
    return CameraTrack(
        k[None],
        rotation[None],
        position[None],
        np.asarray(distortion, np.float64)[None],
        np.array([0.0, -1.0, 0.0]),
        (IMAGE_W, IMAGE_H),
    )


def _box() -> tuple[np.ndarray, np.ndarray]:
    """A 600 x 900 x 400 mm box centred 3 m ahead, turned about two axes: (8, 6) vertices
    (positions, normals) and (12, 3) faces."""
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
    corners *= [500.0, 700.0, 350.0]
    a, b = np.radians(25), np.radians(-15)
    ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    corners = corners @ (rx @ ry).T + [0.0, 100.0, 3000.0]
    faces = np.array(
        [
            [0, 1, 3],
            [0, 3, 2],
            [4, 6, 7],
            [4, 7, 5],
            [0, 4, 5],
            [0, 5, 1],
            [2, 3, 7],
            [2, 7, 6],
            [0, 2, 6],
            [0, 6, 4],
            [1, 5, 7],
            [1, 7, 3],
        ]
    )
    normals = corners - corners.mean(0)
    return np.concatenate(
        [corners, normals / np.linalg.norm(normals, axis=1, keepdims=True)], 1
    ).astype(np.float32), faces


def _coverage(
    vertices: np.ndarray, faces: np.ndarray, camera: CameraTrack, width: int, height: int
) -> np.ndarray:
    """The rendered coverage (alpha, 0..1) of one mesh in the camera view at width x height."""
    with gl_context() as ctx:
        scene = Scene(ctx, faces, len(vertices))
        view = CameraView(scene, camera, width, height, opacity=1.0)
        scene.upload_meshes({0: vertices})
        return view.overlay(0)[..., 3] / 255.0


def _analytic(
    vertices_mm: np.ndarray, faces: np.ndarray, camera: CameraTrack, width: int, height: int
) -> np.ndarray:
    """Pixels more than half covered by the union of the projected triangles (OpenCV's
    projection, distortion included), at width x height: triangles are filled one by one at 8x
    the resolution and area-averaged; pixel coordinates of the camera's image are mapped with
    u' = s (u + 0.5) - 0.5, independently of the renderer's intrinsics scaling."""
    rvec = cv2.Rodrigues(camera.rotation[0])[0]
    tvec = -camera.rotation[0] @ camera.optical_center[0]
    px, _ = cv2.projectPoints(
        vertices_mm.astype(np.float64), rvec, tvec, camera.intrinsics[0], camera.distortion[0]
    )
    fine = 8
    scale = fine * np.array([width / camera.image_size[0], height / camera.image_size[1]])
    px = scale * (px[:, 0] + 0.5) - 0.5
    mask = np.zeros((height * fine, width * fine), np.uint8)
    fixed = np.round(px * (1 << SUBPIXEL_BITS)).astype(np.int32)
    for triangle in fixed[faces]:  # one by one: fillPoly would fill overlaps even-odd
        cv2.fillConvexPoly(mask, triangle, 255, lineType=cv2.LINE_8, shift=SUBPIXEL_BITS)
    return cv2.resize(mask, (width, height), interpolation=cv2.INTER_AREA) > 127


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _centroid(weights: np.ndarray) -> np.ndarray:
    ys, xs = np.mgrid[: weights.shape[0], : weights.shape[1]]
    return np.array([(xs * weights).sum(), (ys * weights).sum()]) / weights.sum()


@pytest.mark.parametrize(("width", "height"), [(IMAGE_W, IMAGE_H), (160, 120), (480, 360)])
def test_box_silhouette_matches_its_projection_at_any_output_size(width, height):
    vertices, faces = _box()
    camera = _camera()
    coverage = _coverage(vertices, faces, camera, width, height)
    truth = _analytic(vertices[:, :3], faces, camera, width, height)
    assert truth.sum() > 0.05 * width * height
    assert _iou(coverage > 0.5, truth) >= 0.98
    # Antialiased coverage is area-weighted, so its centroid equals the polygon's to a small
    # fraction of a pixel; half a pixel off (a wrong convention) would fail by far.
    hull = cv2.convexHull(_projected_px(vertices[:, :3], camera, width, height).astype(np.float32))
    m = cv2.moments(hull)
    np.testing.assert_allclose(
        _centroid(coverage), [m["m10"] / m["m00"], m["m01"] / m["m00"]], atol=0.06
    )


def _projected_px(points_mm, camera: CameraTrack, width: int, height: int) -> np.ndarray:
    cam = camera.world_to_camera(points_mm, 0)
    uv = cam[:, :2] / cam[:, 2:] @ camera.intrinsics[0][:2, :2].T + camera.intrinsics[0][:2, 2]
    scale = np.array([width / camera.image_size[0], height / camera.image_size[1]])
    return scale * (uv + 0.5) - 0.5


@pytest.fixture(scope="module")
def body(tmp_path_factory) -> BodyMeshes:
    from smplfitter.pt import BodyModel

    from services.fitting.synthetic_body_model import write_synthetic_smpl

    root = write_synthetic_smpl(tmp_path_factory.mktemp("models"), genders=("neutral",))
    return BodyMeshes(BodyModel("smpl", "neutral", model_root=str(root / "smpl")))


@pytest.mark.parametrize(
    ("width", "height", "distortion"),
    [
        (IMAGE_W, IMAGE_H, (0, 0, 0, 0, 0)),
        (240, 180, (0, 0, 0, 0, 0)),
        (IMAGE_W, IMAGE_H, (-0.12, 0.03, 0.002, -0.001, 0.0)),
    ],
)
def test_posed_body_silhouette_matches_its_projection(body, width, height, distortion):
    rng = np.random.default_rng(3)
    pose = rng.normal(0, 0.25, (1, 72))
    pose[0, :3] = [0.2, 2.6, 0.1]
    mesh = body.pose(pose, rng.normal(0, 1, (1, 10)), np.array([[0.05, -0.1, 2.6]]))[0]
    camera = _camera(distortion)
    coverage = _coverage(mesh, body.faces, camera, width, height)
    truth = _analytic(mesh[:, :3], body.faces, camera, width, height)
    assert truth.sum() > 0.02 * width * height
    assert _iou(coverage > 0.5, truth) >= 0.98


def test_normals_are_unit_and_point_away_from_the_bones(body):
    mesh = body.pose(np.zeros((1, 72)), np.zeros((1, 10)), np.zeros((1, 3)))[0]
    used = np.unique(body.faces)
    np.testing.assert_allclose(np.linalg.norm(mesh[used, 3:], axis=1), 1.0, atol=1e-4)
    joints = body.model.J_template.numpy() * 1000
    nearest = joints[np.linalg.norm(mesh[used, None, :3] - joints, axis=-1).argmin(1)]
    outward = np.einsum("vc,vc->v", mesh[used, 3:], mesh[used, :3] - nearest)
    assert (outward > 0).mean() > 0.9


def test_frustum_reaches_the_image_corners_at_its_depth():
    camera = _camera()
    lines = frustum_lines_mm(camera, 0, 500.0)
    corners = lines[1:8:2]
    depth = camera.world_to_camera(corners, 0)[:, 2]
    np.testing.assert_allclose(depth, 500.0, rtol=1e-9)
    px = _projected_px(corners, camera, IMAGE_W, IMAGE_H)
    np.testing.assert_allclose(
        px,
        [
            [-0.5, -0.5],
            [IMAGE_W - 0.5, -0.5],
            [IMAGE_W - 0.5, IMAGE_H - 0.5],
            [-0.5, IMAGE_H - 0.5],
        ],
        atol=1e-6,
    )
