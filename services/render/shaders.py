"""GLSL 3.30 programs: lit meshes and flat-coloured lines/triangles.

Every vertex shader places points with the same camera model (`PROJECT`): world (mm) -> camera
frame by `u_view`, OpenCV distortion, pinhole K in pixels of the target, then normalized device
coordinates with the half-pixel convention (see projection.py). Depth is the camera-frame z,
mapped to [-1, 1] between `u_near` and `u_far`.
"""

PROJECT = """
uniform mat4 u_view;
uniform vec2 u_focal;
uniform vec2 u_centre;
uniform float u_skew;
uniform vec3 u_radial;      // k1 k2 k3
uniform vec2 u_tangential;  // p1 p2
uniform vec2 u_size;        // render target, pixels
uniform float u_near;
uniform float u_far;

vec4 project(vec3 cam) {
    // Clip coordinates are (pixels + 0.5) * z scaled to [-z, z]: linear in `cam` for a
    // pinhole camera, so that OpenGL clips lines and triangles at the near plane exactly; the
    // distortion terms multiply back by z (they vanish for undistorted cameras).
    float z = cam.z;
    float zs = abs(z) < 1e-6 ? 1e-6 : z;
    vec2 xy = cam.xy / zs;
    float r2 = dot(xy, xy);
    float radial = 1.0 + r2 * (u_radial.x + r2 * (u_radial.y + r2 * u_radial.z));
    vec2 tangential = vec2(
        2.0 * u_tangential.x * xy.x * xy.y + u_tangential.y * (r2 + 2.0 * xy.x * xy.x),
        u_tangential.x * (r2 + 2.0 * xy.y * xy.y) + 2.0 * u_tangential.y * xy.x * xy.y);
    vec2 dz = cam.xy * radial + tangential * z;  // distorted normalized coordinates times z
    vec2 pz = vec2(u_focal.x * dz.x + u_skew * dz.y, u_focal.y * dz.y) + (u_centre + 0.5) * z;
    float depth = (z * (u_far + u_near) - 2.0 * u_far * u_near) / (u_far - u_near);
    return vec4(2.0 * pz / u_size - z, depth, z);
}
"""

# Smooth (Gouraud) shading: lit per vertex, interpolated across the triangles; SMPL's dense
# mesh looks the same as lighting per pixel at a third of the rasterizer's cost on llvmpipe.
# Three directional lights fixed to the camera (key from the upper left, fill from the right,
# rim from behind and above), a little ambient and a soft highlight; two-sided, so that normals
# pointing away (inside of a mouth, a mesh seen from within) still shade.
MESH_VERTEX = (
    "#version 330\n"
    + PROJECT
    + """
uniform vec3 u_color;
in vec3 in_position;
in vec3 in_normal;
out vec3 v_color;

const vec3 KEY = normalize(vec3(-0.45, -0.6, -0.65));
const vec3 FILL = normalize(vec3(0.7, -0.15, -0.7));
const vec3 RIM = normalize(vec3(0.0, -0.75, 0.65));

void main() {
    vec4 cam = u_view * vec4(in_position, 1.0);
    vec3 to_eye = normalize(-cam.xyz);
    vec3 n = normalize(mat3(u_view) * in_normal);
    if (dot(n, to_eye) < 0.0) n = -n;
    float diffuse = 0.72 * max(dot(n, KEY), 0.0) + 0.32 * max(dot(n, FILL), 0.0)
                  + 0.25 * max(dot(n, RIM), 0.0);
    float highlight = 0.18 * pow(max(dot(n, normalize(KEY + to_eye)), 0.0), 24.0);
    v_color = min(u_color * (0.22 + diffuse) + vec3(highlight), vec3(1.0));
    gl_Position = project(cam.xyz);
}
"""
)

MESH_FRAGMENT = """
#version 330
in vec3 v_color;
out vec4 frag;

void main() {
    frag = vec4(v_color, 1.0);
}
"""

FLAT_VERTEX = (
    "#version 330\n"
    + PROJECT
    + """
in vec3 in_position;

void main() {
    gl_Position = project((u_view * vec4(in_position, 1.0)).xyz);
}
"""
)

FLAT_FRAGMENT = """
#version 330
uniform vec4 u_color;
out vec4 frag;

void main() {
    frag = u_color;
}
"""
