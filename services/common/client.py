"""Client side of the stage services: channels with retries, streamed calls, health checks."""

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.log import RUN_ID_METADATA_KEY
from services.common.server import MAX_MESSAGE_BYTES

_RETRY_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


def open_channel(address: str) -> grpc.Channel:
    """An insecure channel that retries UNAVAILABLE with backoff (before any response arrived)."""
    return grpc.insecure_channel(
        address,
        options=[
            ("grpc.enable_retries", 1),
            ("grpc.service_config", _RETRY_SERVICE_CONFIG),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )


def call_stage(
    method: Callable[..., Any],
    request: Any,
    *,
    timeout_s: float,
    on_progress: Callable[[Any], None] | None = None,
    metadata: Sequence[tuple[str, str]] = (),
    run_id: str | None = None,
) -> Any:
    """Calls a stage's streaming Run, forwards progress events, returns the RunResult message.

    Raises grpc.RpcError on failure, and RuntimeError when the stream ends without a result.
    """
    if run_id:
        metadata = (*metadata, (RUN_ID_METADATA_KEY, run_id))
    result = None
    for response in method(request, timeout=timeout_s, metadata=tuple(metadata)):
        event = response.WhichOneof("event")
        if event == "progress":
            if on_progress is not None:
                on_progress(response.progress)
        elif event == "result":
            result = response.result
    if result is None:
        raise RuntimeError("the stage's stream ended without a result")
    return result


def health_status(address: str, service: str = "", timeout_s: float = 5.0) -> str:
    """The health status name of one service at an address ("UNREACHABLE" when nothing answers)."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            return "UNREACHABLE"
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def wait_serving(address: str, service: str = "", timeout_s: float = 60.0) -> None:
    """Blocks until the service reports SERVING; TimeoutError names the last status seen."""
    deadline = time.monotonic() + timeout_s
    status = "UNREACHABLE"
    while time.monotonic() < deadline:
        status = health_status(address, service, timeout_s=min(2.0, timeout_s))
        if status == "SERVING":
            return
        time.sleep(0.1)
    raise TimeoutError(f"{service or 'server'} at {address} is {status} after {timeout_s:.0f} s")
