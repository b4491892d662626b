"""A synthetic body model in the SMPL file layout, for tests, benchmarks and demos.

SMPL itself cannot be redistributed, so tests build a stand-in with the same interface: SMPL's
24-joint kinematic tree, 6890 vertices arranged as capsules around the bones (with a random,
asymmetric surface so that the twist about every bone is observable), linear blend skinning
weights, 10 shape blend shapes (height, girth, limb lengths, local bumps), small random pose
blend shapes and a joint regressor. `write_synthetic_smpl(root)` writes

    <root>/smpl/basicmodel_<gender>_lbs_10_207_0_v1.1.0.pkl   (keys v_template, shapedirs,
        posedirs, J_regressor, weights, f, kintree_table)
    <root>/smpl/kid_template.npy                              (all zeros: no kid model)

which is what smplfitter's `BodyModel("smpl", gender, model_root=<root>/smpl)` reads.
Units are metres, y up, the body faces +z, as in SMPL.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

NUM_VERTICES = 6890
NUM_JOINTS = 24
NUM_BETAS = 10
SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
SMPL_FILENAME = "basicmodel_{gender}_lbs_10_207_0_v1.1.0.pkl"
GENDER_FILE_TOKENS = {"neutral": "neutral", "female": "f", "male": "m"}

# Approximate SMPL neutral T-pose joint positions (metres; x = body's left, y up, z forward).
_JOINTS = np.array(
    [
        [0.0, -0.22, 0.02],  # 0 pelvis
        [0.06, -0.31, 0.01],  # 1 left hip
        [-0.06, -0.31, 0.01],  # 2 right hip
        [0.0, -0.11, -0.01],  # 3 spine1
        [0.11, -0.69, 0.01],  # 4 left knee
        [-0.11, -0.69, 0.01],  # 5 right knee
        [0.0, 0.03, 0.01],  # 6 spine2
        [0.09, -1.09, -0.03],  # 7 left ankle
        [-0.09, -1.09, -0.03],  # 8 right ankle
        [0.0, 0.08, 0.03],  # 9 spine3
        [0.12, -1.15, 0.09],  # 10 left foot
        [-0.12, -1.15, 0.09],  # 11 right foot
        [0.0, 0.29, -0.01],  # 12 neck
        [0.08, 0.20, 0.0],  # 13 left collar
        [-0.08, 0.20, 0.0],  # 14 right collar
        [0.0, 0.37, 0.04],  # 15 head
        [0.19, 0.23, -0.02],  # 16 left shoulder
        [-0.19, 0.23, -0.02],  # 17 right shoulder
        [0.45, 0.22, -0.04],  # 18 left elbow
        [-0.45, 0.22, -0.04],  # 19 right elbow
        [0.71, 0.23, -0.04],  # 20 left wrist
        [-0.71, 0.23, -0.04],  # 21 right wrist
        [0.79, 0.22, -0.05],  # 22 left hand
        [-0.79, 0.22, -0.05],  # 23 right hand
    ]
)

# Per part: (end point of the capsule axis as a joint index or an explicit point, radius in m,
# relative vertex budget). Part i starts at joint i.
_HEAD_TOP = np.array([0.0, 0.58, 0.03])
_PARTS = {
    0: (3, 0.13, 3.0),
    1: (4, 0.085, 3.0),
    2: (5, 0.085, 3.0),
    3: (6, 0.14, 3.0),
    4: (7, 0.055, 2.5),
    5: (8, 0.055, 2.5),
    6: (9, 0.14, 1.5),
    7: (10, 0.04, 1.0),
    8: (11, 0.04, 1.0),
    9: (12, 0.14, 3.0),
    10: (np.array([0.12, -1.16, 0.16]), 0.035, 0.6),
    11: (np.array([-0.12, -1.16, 0.16]), 0.035, 0.6),
    12: (15, 0.055, 0.8),
    13: (16, 0.06, 1.0),
    14: (17, 0.06, 1.0),
    15: (_HEAD_TOP, 0.1, 3.0),
    16: (18, 0.05, 2.0),
    17: (19, 0.05, 2.0),
    18: (20, 0.04, 2.0),
    19: (21, 0.04, 2.0),
    20: (22, 0.035, 0.8),
    21: (23, 0.035, 0.8),
    22: (np.array([0.87, 0.22, -0.05]), 0.03, 0.6),
    23: (np.array([-0.87, 0.22, -0.05]), 0.03, 0.6),
}


def make_synthetic_smpl(seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays of a synthetic SMPL-format body model (the keys of the SMPL pickle)."""
    rng = np.random.default_rng(seed)
    joints = _JOINTS.copy()
    parts = sorted(_PARTS)
    budget = np.array([_PARTS[p][2] for p in parts])
    counts = np.floor(budget / budget.sum() * NUM_VERTICES).astype(int)
    counts[3] += NUM_VERTICES - counts.sum()

    verts, part_of, axial, radial_dir, faces = [], [], [], [], []
    for p, n in zip(parts, counts, strict=True):
        end_spec, radius, _ = _PARTS[p]
        start = joints[p]
        end = joints[end_spec] if isinstance(end_spec, int) else end_spec
        axis = end - start
        length = np.linalg.norm(axis)
        u = axis / length
        helper = np.array([0.0, 0.0, 1.0]) if abs(u[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
        e1 = np.cross(u, helper)
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(u, e1)
        n_around = max(6, int(round(np.sqrt(n * 2 * np.pi * radius / length))))
        n_rings = n // n_around
        s = (np.arange(n_rings) + 0.5) / n_rings
        theta = np.arange(n_around) * 2 * np.pi / n_around
        ss, tt = np.meshgrid(s, theta, indexing="ij")
        ss, tt = ss.ravel(), tt.ravel()
        extra = n - len(ss)
        ss = np.concatenate([ss, rng.uniform(0.05, 0.95, extra)])
        tt = np.concatenate([tt, rng.uniform(0, 2 * np.pi, extra)])
        # Asymmetric cross-sections: an elliptic profile plus per-vertex bumps, so that the
        # orientation of every part about its own bone is observable from its vertices.
        profile = radius * (1 + 0.25 * np.cos(2 * tt + p) + 0.1 * np.sin(tt)) * (
            0.75 + 0.5 * np.sin(np.pi * ss)
        )
        profile *= 1 + 0.08 * rng.standard_normal(n)
        direction = np.cos(tt)[:, None] * e1 + np.sin(tt)[:, None] * e2
        offset = len(np.concatenate(verts)) if verts else 0
        verts.append(start + ss[:, None] * axis + profile[:, None] * direction)
        part_of.append(np.full(n, p))
        axial.append(ss)
        radial_dir.append(direction * profile[:, None])
        for i in range(n_rings - 1):
            for j in range(n_around):
                a = offset + i * n_around + j
                b = offset + i * n_around + (j + 1) % n_around
                faces.append((a, b, a + n_around))
                faces.append((b, b + n_around, a + n_around))

    v_template = np.concatenate(verts)
    part_of = np.concatenate(part_of)
    axial = np.concatenate(axial)
    radial = np.concatenate(radial_dir)

    weights = np.zeros((NUM_VERTICES, NUM_JOINTS))
    weights[np.arange(NUM_VERTICES), part_of] = 1.0
    # Blend with the parent near the proximal end of each bone (argmax stays with the part).
    parents = np.array([SMPL_PARENTS[p] for p in part_of])
    blend = np.clip(0.45 * (1 - axial / 0.25), 0.0, 0.45) * (parents >= 0)
    has_parent = parents >= 0
    weights[np.arange(NUM_VERTICES)[has_parent], parents[has_parent]] += blend[has_parent]
    weights[np.arange(NUM_VERTICES), part_of] -= blend

    j_regressor = _joint_regressor(v_template, joints)

    # Shape blend shapes as joint displacements interpolated along the bones, plus radial terms.
    joint_dirs = np.zeros((NUM_JOINTS, 3, NUM_BETAS))
    radial_coef = np.zeros((NUM_JOINTS, NUM_BETAS))
    rel = joints - joints[0]
    joint_dirs[:, :, 0] = 0.06 * rel  # overall size
    radial_coef[:, 1] = 0.12  # girth
    for k in range(2, NUM_BETAS):
        bone_scale = rng.normal(0, 0.035, NUM_JOINTS)
        d = np.zeros((NUM_JOINTS, 3))
        for j in range(1, NUM_JOINTS):
            parent = SMPL_PARENTS[j]
            d[j] = d[parent] + bone_scale[j] * (joints[j] - joints[parent])
        joint_dirs[:, :, k] = d
        radial_coef[:, k] = rng.normal(0, 0.04, NUM_JOINTS)
    end_dirs = np.zeros((NUM_VERTICES, 3, NUM_BETAS))
    for p in parts:
        end_spec = _PARTS[p][0]
        mask = part_of == p
        if isinstance(end_spec, int):
            end_dirs[mask] = joint_dirs[end_spec]
        else:
            end_dirs[mask] = joint_dirs[p] * 1.3
    start_dirs = joint_dirs[part_of]
    shapedirs = (1 - axial)[:, None, None] * start_dirs + axial[:, None, None] * end_dirs
    shapedirs += radial[:, :, None] * radial_coef[part_of][:, None, :]
    # Keep the regressed joints consistent with the joint displacements where possible.
    shapedirs = shapedirs.astype(np.float64)

    posedirs = np.zeros((NUM_VERTICES, 3, (NUM_JOINTS - 1) * 9))
    for p in parts:
        mask = np.flatnonzero(part_of == p)
        for j in {p, SMPL_PARENTS[p]}:
            if j <= 0:
                continue
            cols = slice((j - 1) * 9, j * 9)
            posedirs[mask, :, cols] = rng.normal(0, 0.002, (len(mask), 3, 9))

    kintree = np.array([list(SMPL_PARENTS), list(range(NUM_JOINTS))], dtype=np.int64)
    return dict(
        v_template=v_template,
        shapedirs=shapedirs,
        posedirs=posedirs,
        J_regressor=j_regressor,
        weights=weights,
        f=np.array(faces, dtype=np.int64),
        kintree_table=kintree,
    )


def _joint_regressor(v_template: np.ndarray, joints: np.ndarray, k: int = 24) -> np.ndarray:
    """Weights over the k vertices nearest to each joint that reproduce the joint exactly
    (minimum-norm deviation from uniform weights under the constraints sum=1, W @ V = J)."""
    reg = np.zeros((NUM_JOINTS, NUM_VERTICES))
    for j in range(NUM_JOINTS):
        idx = np.argsort(np.linalg.norm(v_template - joints[j], axis=1))[:k]
        c = np.concatenate([v_template[idx].T, np.ones((1, k))])  # (4, k)
        target = np.concatenate([joints[j], [1.0]])
        w0 = np.full(k, 1.0 / k)
        correction = c.T @ np.linalg.solve(c @ c.T, target - c @ w0)
        reg[j, idx] = w0 + correction
    return reg


def write_synthetic_smpl(root: Path, genders=("neutral", "female", "male"), seed: int = 0) -> Path:
    """Write the synthetic model in smplfitter's layout under `root` (a body_models folder).

    Returns `root`; point `SMPLFITTER_BODY_MODELS` (or the fitting stage's model cache) at it.
    """
    root = Path(root)
    model_dir = root / "smpl"
    model_dir.mkdir(parents=True, exist_ok=True)
    for i, gender in enumerate(genders):
        data = make_synthetic_smpl(seed + i)
        path = model_dir / SMPL_FILENAME.format(gender=GENDER_FILE_TOKENS[gender])
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=4)
    np.save(model_dir / "kid_template.npy", np.zeros((NUM_VERTICES, 3)))
    return root
