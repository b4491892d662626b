"""OpenGL resources of one render: programs, the supersampled target, mesh slots, line sets.

Antialiasing is 2x2 supersampling: every view is drawn at twice the output width and height and
box-filtered down after read-back. On llvmpipe that costs about a third of 4x MSAA and gives the
same pixels on every driver; meshes cleared to transparent come back with premultiplied colour
and fractional coverage at their edges, which the camera view blends over the video frame.
"""

from collections.abc import Mapping

import cv2
import moderngl
import numpy as np

from services.common.colors import track_color_float
from services.render import shaders
from services.render.projection import FAR_MM, NEAR_MM, ShaderCamera

SUPERSAMPLING = 2
FLOATS_PER_VERTEX = 6  # position (mm), normal


class RenderTarget:
    """Colour + depth framebuffer at SUPERSAMPLING x the output size."""

    def __init__(self, ctx: moderngl.Context, width: int, height: int):
        self.out_size = (width, height)
        self.size = (width * SUPERSAMPLING, height * SUPERSAMPLING)
        self.fbo = ctx.framebuffer(
            color_attachments=[ctx.renderbuffer(self.size, 4)],
            depth_attachment=ctx.depth_renderbuffer(self.size),
        )
        self._rgba = bytearray(self.size[0] * self.size[1] * 4)

    def begin(self, rgba: tuple[float, float, float, float]) -> None:
        self.fbo.use()
        self.fbo.clear(*rgba, depth=1.0)

    def read(self, components: int) -> np.ndarray:
        """The drawn image at the output size, (H, W, components) uint8, top row first."""
        w, h = self.size
        view = memoryview(self._rgba)[: w * h * components]
        self.fbo.read_into(view, components=components, alignment=1)
        image = np.frombuffer(view, np.uint8).reshape(h, w, components)
        return cv2.resize(image, self.out_size, interpolation=cv2.INTER_AREA)


class Scene:
    """Programs and buffers shared by the views of one render."""

    def __init__(self, ctx: moderngl.Context, faces: np.ndarray, num_vertices: int):
        self.ctx = ctx
        self.mesh_program = ctx.program(
            vertex_shader=shaders.MESH_VERTEX, fragment_shader=shaders.MESH_FRAGMENT
        )
        self.flat_program = ctx.program(
            vertex_shader=shaders.FLAT_VERTEX, fragment_shader=shaders.FLAT_FRAGMENT
        )
        self._faces = ctx.buffer(np.ascontiguousarray(faces, np.int32).tobytes())
        self._num_vertices = num_vertices
        self._slots: list[tuple[moderngl.Buffer, moderngl.VertexArray]] = []
        self._drawn: list[tuple[int, int]] = []  # (track id, slot) uploaded for this frame
        max_width = ctx.info.get("GL_ALIASED_LINE_WIDTH_RANGE", (1.0, 1.0))[1]
        self.max_line_width = float(max_width)
        for program in (self.mesh_program, self.flat_program):
            program["u_near"].value = NEAR_MM
            program["u_far"].value = FAR_MM

    def _slot(self, index: int) -> moderngl.VertexArray:
        while len(self._slots) <= index:
            vbo = self.ctx.buffer(reserve=self._num_vertices * FLOATS_PER_VERTEX * 4)
            vao = self.ctx.vertex_array(
                self.mesh_program, [(vbo, "3f 3f", "in_position", "in_normal")], self._faces
            )
            self._slots.append((vbo, vao))
        return self._slots[index][1]

    def upload_meshes(self, meshes: Mapping[int, np.ndarray]) -> None:
        """This frame's meshes, (V, 6) float32 (position mm, normal) per track id."""
        self._drawn = []
        for slot, (track_id, data) in enumerate(sorted(meshes.items())):
            self._slot(slot)
            self._slots[slot][0].write(np.ascontiguousarray(data, np.float32).tobytes())
            self._drawn.append((track_id, slot))

    def set_camera(self, camera: ShaderCamera, target: RenderTarget) -> None:
        for program in (self.mesh_program, self.flat_program):
            for name, value in camera.uniforms().items():
                if name == "u_view":
                    program[name].write(value)
                else:
                    program[name].value = value
            program["u_size"].value = target.size

    def draw_meshes(self) -> None:
        """Every uploaded mesh, opaque and lit, in its track's colour."""
        self.ctx.enable(moderngl.DEPTH_TEST)
        for track_id, slot in self._drawn:
            self.mesh_program["u_color"].value = track_color_float(track_id)
            self._slots[slot][1].render(moderngl.TRIANGLES)

    def flat_geometry(self, points_mm: np.ndarray) -> "FlatGeometry":
        return FlatGeometry(self, points_mm)


class FlatGeometry:
    """Points (mm, world) drawn as lines or triangles in one colour."""

    def __init__(self, scene: Scene, points_mm: np.ndarray):
        self.scene = scene
        self.count = len(points_mm)
        self.vbo = scene.ctx.buffer(reserve=max(self.count, 1) * 12)
        self.vao = scene.ctx.vertex_array(scene.flat_program, [(self.vbo, "3f", "in_position")])
        self.update(points_mm)

    def update(self, points_mm: np.ndarray) -> None:
        if len(points_mm):
            self.vbo.write(np.ascontiguousarray(points_mm, np.float32).tobytes())

    def draw(
        self,
        mode: int,
        rgba: tuple[float, float, float, float],
        line_width: float = 1.0,
        first: int = 0,
        count: int | None = None,
    ) -> None:
        count = self.count - first if count is None else count
        if count <= 0:
            return
        ctx = self.scene.ctx
        ctx.enable(moderngl.DEPTH_TEST)
        ctx.line_width = min(line_width * SUPERSAMPLING, self.scene.max_line_width)
        self.scene.flat_program["u_color"].value = rgba
        self.vao.render(mode, vertices=count, first=first)
