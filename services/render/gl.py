"""Headless OpenGL through EGL: Mesa's llvmpipe on CPU machines, the NVIDIA driver on GPU ones.

An EGL context is current in the thread that made it, so every render call opens its own
(about 10 ms) in the thread that draws. `GLCONTEXT_DEVICE_INDEX` picks the EGL device when a
machine has several (e.g. an NVIDIA GPU and Mesa's software device).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import moderngl

from services.common.errors import ModelNotReady

GL_VERSION = 330
EGL_PACKAGES = "libegl1 libegl-mesa0 libgl1 libgl1-mesa-dri"


@dataclass(frozen=True)
class RendererInfo:
    """What draws the pixels (part of the cache key: another driver rasterizes differently)."""

    vendor: str
    renderer: str
    version: str

    @property
    def identity(self) -> str:
        return f"{self.vendor} | {self.renderer} | {self.version}"

    @property
    def is_software(self) -> bool:
        return any(name in self.renderer.lower() for name in ("llvmpipe", "softpipe", "swrast"))


def _create() -> moderngl.Context:
    try:
        return moderngl.create_standalone_context(require=GL_VERSION, backend="egl")
    except Exception as e:  # noqa: BLE001 - glcontext raises bare Exceptions for missing libraries
        raise ModelNotReady(
            f"headless OpenGL (EGL, OpenGL {GL_VERSION // 100}.{GL_VERSION % 100 // 10}) is not "
            f"available: {e}. On Debian/Ubuntu install {EGL_PACKAGES} "
            "(scripts/system_packages.sh does); on a GPU machine the NVIDIA driver's EGL library "
            "is used (set GLCONTEXT_DEVICE_INDEX to choose among several EGL devices)."
        ) from None


@contextmanager
def gl_context() -> Iterator[moderngl.Context]:
    """A fresh standalone context, current in this thread, released afterwards."""
    ctx = _create()
    try:
        yield ctx
    finally:
        ctx.release()


def renderer_info() -> RendererInfo:
    """The vendor, renderer and version strings of the context this machine gives."""
    with gl_context() as ctx:
        return RendererInfo(ctx.info["GL_VENDOR"], ctx.info["GL_RENDERER"], ctx.info["GL_VERSION"])
