"""Non-learned test backend (NLFPIPE_SEMSEG_BACKEND=synthetic): light pixels of the generated
test videos are persons. For tests and first runs without weights, not for real videos."""

import numpy as np

from services.common.frames import light_mask


class SyntheticPersonSegmenter:
    """A `PersonSegmenter` giving probability 1 on light figures and 0 elsewhere."""

    def person_probability(self, frames: np.ndarray) -> np.ndarray:
        return np.stack([light_mask(f) for f in frames]).astype(np.float32)
