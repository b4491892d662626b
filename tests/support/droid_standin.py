"""A stand-in for DROID-SLAM's `Droid` class (same constructor, methods and state) that
records what it was given and returns a known trajectory; for the droid wrapper's tests."""

from types import SimpleNamespace

import numpy as np
import torch
from scipy.spatial.transform import Rotation


class StandInDroid:
    """`Droid(args)`: keyframes every `keyframe_every` tracked frames (none when `moving` is
    False), `terminate` returns the camera-to-world poses of `truth` for the frames it was
    given, `compute_error` is smallest at `best_fov_deg`."""

    instances: list["StandInDroid"] = []
    truth_rotations: np.ndarray  # (T, 3, 3) world->camera of every video frame
    truth_centres: np.ndarray  # (T, 3)
    moving = True
    keyframe_every = 3
    best_fov_deg = 62.0
    width = 0

    def __init__(self, args):
        self.args = args
        self.tracked: list[dict] = []
        self.terminated = 0
        StandInDroid.instances.append(self)
        self.video = SimpleNamespace(counter=SimpleNamespace(value=0),
                                     tstamp=torch.zeros(args.buffer),
                                     disps_up=None)  # fmt: skip

    def track(self, t, image, intrinsics=None, depth=None, mask=None):
        self.tracked.append({"t": t, "image": image.clone(), "intrinsics": intrinsics.clone(),
                             "mask": mask.clone()})  # fmt: skip
        n = len(self.tracked)
        if self.moving and (n - 1) % self.keyframe_every == 0:
            self.video.tstamp[self.video.counter.value] = t
            self.video.counter.value += 1
        elif not self.moving and n == 1:
            self.video.counter.value = 1
        height, width = image.shape[2:]
        self.video.disps_up = torch.full((max(self.video.counter.value, 1), height, width), 0.25)

    def terminate(self, stream):
        frames = [t for t, _, _ in stream]
        self.terminated += 1
        r = self.truth_rotations[frames]  # timestamps are video frame indices
        c = self.truth_centres[frames]
        q = Rotation.from_matrix(r.transpose(0, 2, 1)).as_quat()  # camera-to-world (x, y, z, w)
        return torch.as_tensor(np.concatenate([c, q], axis=1))

    def compute_error(self):
        focal = float(self.tracked[0]["intrinsics"][0])
        fov = np.degrees(2 * np.arctan(self.width / 2 / focal))
        return (fov - self.best_fov_deg) ** 2 + 1.0
