"""gRPC server bootstrap shared by every stage: health, reflection, error mapping, shutdown."""

import contextvars
import importlib
import logging
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from nlfpipe.common.v1 import common_pb2
from services.common import errors
from services.common.log import RUN_ID_METADATA_KEY, configure_logging, log_event, run_id_var
from services.common.settings import Settings, load_settings
from services.common.stagerun import Progress, StageResult, run_stage
from services.common.stages import stage_spec
from services.common.store import ArtifactInfo, ArtifactStore, open_store
from services.common.threads import apply_torch_threads

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
LOAD_RETRY_SECONDS = 30.0

_STATUS_OF_ERROR: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (errors.InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ArtifactNotFound, grpc.StatusCode.NOT_FOUND),
    (errors.PreconditionFailed, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ModelNotReady, grpc.StatusCode.UNAVAILABLE),
    (errors.Cancelled, grpc.StatusCode.CANCELLED),
)


@dataclass
class StageService:
    """What a stage package hands to the shared server."""

    stage: str
    servicer: object
    add_to_server: Callable[[object, grpc.Server], None]
    load: Callable[[], None]


def status_of(error: Exception) -> grpc.StatusCode:
    """The gRPC status code for a domain error (INTERNAL for anything unexpected)."""
    for cls, code in _STATUS_OF_ERROR:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.INTERNAL


class _ErrorMappingInterceptor(grpc.ServerInterceptor):
    """Maps domain errors to status codes, tags logs with the run id, gates calls on readiness."""

    def __init__(self, guarded_service: str, ready: threading.Event, not_ready_reason: list[str]):
        self._guarded_prefix = f"/{guarded_service}/"
        self._ready = ready
        self._not_ready_reason = not_ready_reason

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        run_id = dict(handler_call_details.invocation_metadata or ()).get(RUN_ID_METADATA_KEY, "-")
        guarded = method.startswith(self._guarded_prefix)
        if handler.unary_stream:
            wrapped = self._wrap_stream(handler.unary_stream, method, run_id, guarded)
            return grpc.unary_stream_rpc_method_handler(
                wrapped, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_unary:
            wrapped = self._wrap_unary(handler.unary_unary, method, run_id, guarded)
            return grpc.unary_unary_rpc_method_handler(
                wrapped, handler.request_deserializer, handler.response_serializer
            )
        return handler

    def _check_ready(self, guarded: bool) -> None:
        if guarded and not self._ready.is_set():
            reason = self._not_ready_reason[0] if self._not_ready_reason else "still loading"
            raise errors.ModelNotReady(f"the service is not ready: {reason}")

    def _abort(self, context, method: str, error: Exception) -> None:
        code = status_of(error)
        if code == grpc.StatusCode.INTERNAL:
            logger.exception("unexpected error in %s", method)
            context.abort(code, f"internal error in {method}: {type(error).__name__}; see the log")
        log_event(
            logger, "call failed", logging.WARNING, method=method, code=code.name, error=str(error)
        )
        context.abort(code, str(error))

    def _wrap_stream(self, fn, method: str, run_id: str, guarded: bool):
        def wrapper(request, context) -> Iterator[Any]:
            run_id_var.set(run_id)
            start = time.perf_counter()
            log_event(logger, "call started", method=method)
            try:
                self._check_ready(guarded)
                yield from fn(request, context)
            except Exception as e:  # noqa: BLE001 - every error becomes a status code
                self._abort(context, method, e)
            log_event(
                logger,
                "call finished",
                method=method,
                seconds=round(time.perf_counter() - start, 3),
            )

        return wrapper

    def _wrap_unary(self, fn, method: str, run_id: str, guarded: bool):
        def wrapper(request, context):
            run_id_var.set(run_id)
            try:
                self._check_ready(guarded)
                return fn(request, context)
            except Exception as e:  # noqa: BLE001 - every error becomes a status code
                self._abort(context, method, e)

        return wrapper


class RunningServer:
    """A started stage server; `wait_ready` blocks until the model is loaded."""

    def __init__(
        self,
        server: grpc.Server,
        port: int,
        health_servicer,
        ready: threading.Event,
        grace_seconds: float,
    ):
        self.server = server
        self.port = port
        self.health = health_servicer
        self.ready = ready
        self.grace_seconds = grace_seconds
        self.stopped = threading.Event()

    def wait_ready(self, timeout: float) -> bool:
        return self.ready.wait(timeout)

    def stop(self, grace: float | None = None) -> None:
        """Stops accepting calls, lets in-flight calls finish within the grace period."""
        self.health.enter_graceful_shutdown()
        self.server.stop(self.grace_seconds if grace is None else grace).wait()
        self.stopped.set()


def _load_in_background(
    service: StageService,
    service_name: str,
    health_servicer,
    ready: threading.Event,
    reason: list[str],
    stopped: threading.Event,
) -> None:
    def loader() -> None:
        while not stopped.is_set():
            try:
                start = time.perf_counter()
                service.load()
            except errors.ModelNotReady as e:
                reason[:] = [str(e)]
                log_event(
                    logger,
                    "model not ready",
                    logging.ERROR,
                    reason=str(e),
                    retry_in_seconds=LOAD_RETRY_SECONDS,
                )
                stopped.wait(LOAD_RETRY_SECONDS)
                continue
            except Exception as e:  # noqa: BLE001 - keep NOT_SERVING and say why
                reason[:] = [f"loading failed: {type(e).__name__}: {e}"]
                logger.exception("loading the stage failed; health stays NOT_SERVING")
                return
            ready.set()
            for name in ("", service_name):
                health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
            log_event(logger, "ready", seconds=round(time.perf_counter() - start, 3))
            return

    threading.Thread(target=loader, name=f"{service.stage}-loader", daemon=True).start()


def build_server(
    service: StageService,
    *,
    host: str = "[::]",
    port: int = 0,
    settings: Settings | None = None,
    max_workers: int = 16,
) -> RunningServer:
    """Starts a stage server; health is NOT_SERVING until the stage's `load()` returns."""
    settings = settings or load_settings()
    service_name = stage_spec(service.stage).service_name
    ready = threading.Event()
    reason: list[str] = []
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=service.stage),
        interceptors=[_ErrorMappingInterceptor(service_name, ready, reason)],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    for name in ("", service_name):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service.add_to_server(service.servicer, server)
    reflection.enable_server_reflection(
        (service_name, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind {host}:{port}")
    server.start()
    running = RunningServer(server, bound, health_servicer, ready, settings.grace_seconds)
    _load_in_background(service, service_name, health_servicer, ready, reason, running.stopped)
    return running


def stream_stage(
    context, response_cls, work: Callable[[Callable[[Progress], None], threading.Event], Any]
) -> Iterator[Any]:
    """Runs `work(on_progress, cancel)` in a thread; yields progress responses, then the result.

    When the client cancels, the deadline passes or the server shuts down, `cancel` is set and
    the work is expected to stop at its next `check_cancelled()`.
    """
    events: queue.Queue = queue.Queue()
    cancel = threading.Event()
    context.add_callback(cancel.set)
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = work(lambda p: events.put(p), cancel)
        except BaseException as e:  # noqa: BLE001 - re-raised in the handler thread
            outcome["error"] = e
        finally:
            events.put(None)

    worker = threading.Thread(target=contextvars.copy_context().run, args=(target,), daemon=True)
    worker.start()
    while (event := events.get()) is not None:
        yield response_cls(
            progress=common_pb2.Progress(
                done=event.done, total=event.total, message=event.message, step=event.step
            )
        )
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    yield response_cls(result=outcome["result"])


def stream_cached_run(
    context,
    response_cls,
    store: ArtifactStore,
    to_result: Callable[[StageResult], Any],
    **run_kwargs: Any,
) -> Iterator[Any]:
    """Streams one `run_stage` call (cached or computed); `to_result` builds the RunResult.

    `run_kwargs` are those of `run_stage` except the store, progress and cancellation.
    """

    def work(on_progress: Callable[[Progress], None], cancel: threading.Event) -> Any:
        result = run_stage(store, on_progress=on_progress, cancel=cancel, **run_kwargs)
        return to_result(result)

    yield from stream_stage(context, response_cls, work)


def artifact_to_proto(info: ArtifactInfo) -> common_pb2.ArtifactRef:
    """The gRPC reference of a stored artifact."""
    return common_pb2.ArtifactRef(
        uri=info.uri, sha256=info.sha256, size_bytes=info.size_bytes, media_type=info.media_type
    )


def summary_to_proto(result: StageResult) -> common_pb2.StageSummary:
    """The gRPC summary of a stage run."""
    return common_pb2.StageSummary(
        cache_hit=result.cache_hit,
        cache_key=result.cache_key,
        manifest=artifact_to_proto(result.manifest),
        compute_seconds=result.compute_seconds,
        algorithm_version=result.algorithm_version,
        counts={k: float(v) for k, v in result.counts.items()},
        timings={k: float(v) for k, v in result.timings.items()},
    )


def serve(
    stage: str,
    port: int | None = None,
    port_file: Path | None = None,
    build: Callable[[Settings, ArtifactStore], StageService] | None = None,
) -> int:
    """Runs one stage's service until SIGTERM/SIGINT; the exit code is 0 after a clean stop.

    `build` defaults to `services.<stage>.service.build`.
    """
    spec = stage_spec(stage)
    settings = load_settings()
    configure_logging(stage, settings.log_level, settings.log_format)
    store = open_store(settings)
    if build is None:
        build = importlib.import_module(f"services.{stage}.service").build
    service = build(settings, store)
    if spec.learned and "torch" in sys.modules:  # before load(); never imports torch itself
        apply_torch_threads(settings)
    chosen_port = (
        spec.port
        if port is None and settings.port is None
        else (port if port is not None else settings.port)
    )
    running = build_server(service, host=settings.host, port=chosen_port, settings=settings)
    if port_file is not None:
        tmp = port_file.with_name(port_file.name + ".tmp")
        tmp.write_text(str(running.port))
        tmp.replace(port_file)
    log_event(
        logger,
        "listening",
        port=running.port,
        service=spec.service_name,
        store=settings.store_backend,
    )

    stop_requested = threading.Event()

    def on_signal(signum, _frame) -> None:
        log_event(
            logger,
            "stopping",
            signal=signal.Signals(signum).name,
            grace_seconds=settings.grace_seconds,
        )
        stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop_requested.wait()
    running.stop()
    log_event(logger, "stopped")
    return 0
