"""A toy stage behind the pose contract, to test the shared server without any model.

Run as a script (`python -m tests.support.toy_stage PORT_FILE`) it serves until SIGTERM.
Request field `batch_size` selects the behaviour: 0 = quick success, 1 = InvalidInput,
2 = unexpected error, N >= 10 = N progress steps of 0.1 s each (a long request).
"""

import sys
import threading
from pathlib import Path

from nlfpipe.pose.v1 import pose_pb2, pose_pb2_grpc
from services.common.errors import InvalidInput
from services.common.server import StageService, serve, stream_stage


class ToyServicer(pose_pb2_grpc.PoseServiceServicer):
    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def Run(self, request, context):
        mode = request.batch_size
        if mode == 1:
            raise InvalidInput("batch_size: 1 is not allowed in this toy")
        if mode == 2:
            raise RuntimeError("secret internal detail")

        def work(on_progress, cancel):
            from services.common.stagerun import Progress

            for i in range(max(mode, 1)):
                if cancel.wait(0.1 if mode >= 10 else 0):
                    self.cancelled.set()
                    raise InvalidInput("cancelled")
                on_progress(Progress(i + 1, max(mode, 1), "step"))
            return pose_pb2.RunResult()

        yield from stream_stage(context, pose_pb2.RunResponse, work)


def build_toy(load_gate: threading.Event | None = None, load_error: Exception | None = None):
    servicer = ToyServicer()

    def load() -> None:
        if load_gate is not None:
            load_gate.wait()
        if load_error is not None:
            raise load_error

    return StageService("pose", servicer, pose_pb2_grpc.add_PoseServiceServicer_to_server, load)


if __name__ == "__main__":
    sys.exit(serve("pose", port=0, port_file=Path(sys.argv[1]), build=lambda s, st: build_toy()))
