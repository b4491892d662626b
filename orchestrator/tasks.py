"""One Prefect task per stage RPC: addresses, deadlines, retries on transient errors, progress."""

import functools
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.protobuf.message import Message
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.runtime import flow_run
from prefect.states import Failed, State

from orchestrator import progress as progress_events
from orchestrator.outcome import StageOutcome, outcome_from_result
from services.common.stages import stage_spec

#: gRPC codes worth retrying: the service is restarting, overloaded, or the call timed out.
TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
#: Seconds between attempts of a failed stage call (then the last value again).
RETRY_DELAYS_S = [2.0, 5.0, 15.0]
STAGE_RETRIES = 3
#: How long an attempt waits for its service to report SERVING (a restart loads models).
SERVING_WAIT_S = float(os.environ.get("NLFPIPE_SERVING_WAIT_S", "120"))
#: How long a first contact waits for anything to answer at a stage's address before failing
#: (without retries): nothing listening there is a configuration problem, not a hiccup.
UNREACHABLE_GRACE_S = float(os.environ.get("NLFPIPE_UNREACHABLE_GRACE_S", "5"))
#: Addresses that answered in this process; losing one later is transient (retried).
_answered: set[str] = set()
#: Tag of the GPU-bound stages; a concurrency limit per tag admits N calls per GPU service.
GPU_TAG_PREFIX = "nlfpipe-gpu-"
GPU_STAGES = frozenset({"tracking", "semseg", "slam", "pose", "interpolation"})
_PROGRESS_INTERVAL_S = 1.0
_LOG_INTERVAL_S = 10.0


class StageCallError(Exception):
    """A stage RPC failed; picklable, with the gRPC code kept for the retry decision."""

    def __init__(self, stage: str, code: str, details: str):
        super().__init__(f"{stage} failed with {code}: {details}")
        self.stage = stage
        self.code = code
        self.details = details

    def __reduce__(self):
        return (type(self), (self.stage, self.code, self.details))

    @property
    def transient(self) -> bool:
        return self.code in {c.name for c in TRANSIENT_CODES}


def is_transient(exc: BaseException) -> bool:
    """True for errors where trying the same call again may succeed."""
    if isinstance(exc, StageCallError):
        return exc.transient
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return exc.code() in TRANSIENT_CODES
    return False


def retry_on_transient(task, task_run, state) -> bool:
    """Prefect retry condition: retry transient gRPC failures only, never INVALID_ARGUMENT."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - the state re-raises whatever the task raised
        return is_transient(exc)
    return False


def stage_address(stage: str) -> str:
    """The service address from `<STAGE>_ADDR`, else the stage's default port on localhost."""
    spec = stage_spec(stage)
    return os.environ.get(spec.addr_env) or spec.default_address


def stage_deadline_s(stage: str, video_seconds: float = 0.0) -> float:
    """Deadline of a call: `NLFPIPE_<STAGE>_DEADLINE_S`, else 10 min + 60 s per video second."""
    configured = os.environ.get(f"NLFPIPE_{stage.upper()}_DEADLINE_S")
    return float(configured) if configured else 600.0 + 60.0 * max(video_seconds, 0.0)


def stage_tags(stage: str) -> list[str]:
    """Admission tags of a stage's task runs: `nlfpipe-gpu-<stage>` for GPU stages.

    Only tags that carry a concurrency limit are set: every tagged task run costs a slot
    request to the Prefect server (up to seconds with the ephemeral SQLite server under load).
    """
    return [GPU_TAG_PREFIX + stage] if stage in GPU_STAGES else []


def gpu_admission_enabled() -> bool:
    """`NLFPIPE_GPU_ADMISSION` (default on); `nlfpipe run` turns it off in ephemeral mode."""
    return os.environ.get("NLFPIPE_GPU_ADMISSION", "1").strip().lower() not in (
        "0", "false", "no", "off"
    )  # fmt: skip


def admitted(stage_task_fn, stage: str) -> "StageCall":
    """The stage task, with its GPU admission tag when admission is on, to call or submit."""
    tags = stage_tags(stage)
    if tags and gpu_admission_enabled():
        return StageCall(stage_task_fn.with_options(tags=tags))
    return StageCall(stage_task_fn)


@dataclass(frozen=True)
class StageCall:
    """Calls a stage task; a stage error that ended it as Failed (see stage_task) is raised."""

    task: object

    def __call__(self, *args, **kwargs):
        value = self.task(*args, **kwargs)
        if isinstance(value, State):
            value.result()  # raises the stage error the Failed state holds
        return value

    def submit(self, *args, **kwargs):
        """A future whose result() raises a stage error, as Prefect's futures do."""
        return self.task.submit(*args, **kwargs)


@dataclass
class _ProgressForwarder:
    """Sends stage progress to a Prefect progress artifact, the run log and local listeners.

    The artifact is created on the first event of real work, so a cache hit costs no API call.
    """

    stage: str
    artifact_id: object = None
    artifact_opened: bool = False
    last_artifact: float = 0.0
    last_log: float = 0.0

    def __call__(self, event) -> None:
        done, total = int(event.done), int(event.total)
        message = event.message or getattr(event, "step", "")
        if not self.artifact_opened and getattr(event, "step", "") != "cache":
            self.artifact_opened = True
            self.artifact_id = _open_progress_artifact(self.stage)
        progress_events.emit(self.stage, done, total, message)
        now = time.monotonic()
        fraction = min(done / total, 1.0) if total > 0 else None
        if self.artifact_id is not None and fraction is not None and (
            now - self.last_artifact >= _PROGRESS_INTERVAL_S or fraction >= 1.0
        ):
            self.last_artifact = now
            update_progress_artifact(
                self.artifact_id,
                progress=float(round(100.0 * fraction)),
                description=progress_text(self.stage, done, total, message),
            )
        if now - self.last_log >= _LOG_INTERVAL_S:
            self.last_log = now
            get_run_logger().info("%s", progress_text(self.stage, done, total, message))


def progress_text(stage: str, done: int, total: int, message: str) -> str:
    """`pose: 40% (24/60) estimating poses`; a message that counts itself ("pass 2/2, frame
    400/1350") replaces the raw counts."""
    parts = [f"{stage}:"]
    if total > 0:
        parts.append(f"{round(100.0 * min(done / total, 1.0))}%")
        if not re.search(r"\d+/\d+", message):
            parts.append(f"({done}/{total})")
    elif done:
        parts.append(str(done))
    if message:
        parts.append(message)
    return " ".join(parts)


def _open_progress_artifact(stage: str):
    try:
        return create_progress_artifact(progress=0.0, description=f"{stage}: starting")
    except Exception:  # noqa: BLE001 - progress display must never fail a stage
        get_run_logger().debug("no progress artifact for %s", stage, exc_info=True)
        return None


def _flow_run_id() -> str | None:
    """The Prefect flow run id, sent to the service so that its log lines carry it."""
    run_id = flow_run.get_id()
    return str(run_id) if run_id else None


def _attempt_number() -> int:
    context = TaskRunContext.get()
    return (context.task_run.run_count if context else 0) or 1


def call_stage_rpc(
    stage: str,
    method_name: str,
    request: Message,
    *,
    stub_factory: Callable[[grpc.Channel], object],
    video_seconds: float = 0.0,
) -> StageOutcome:
    """Calls one stage RPC (streamed progress, deadline) and returns its outcome as references."""
    from services.common.client import call_stage, open_channel, wait_serving

    logger = get_run_logger()
    address = stage_address(stage)
    deadline = stage_deadline_s(stage, video_seconds)
    started = time.monotonic()
    if address not in _answered and _attempt_number() == 1:
        require_reachable(stage, address, UNREACHABLE_GRACE_S)
    try:
        wait_serving(address, timeout_s=SERVING_WAIT_S)
    except Exception as exc:  # noqa: BLE001 - surfaced as UNAVAILABLE so the task retries
        raise StageCallError(stage, "UNAVAILABLE", f"{address} is not serving: {exc}") from None
    _answered.add(address)
    forwarder = _ProgressForwarder(stage)
    progress_events.emit(stage, 0, 0, "started")
    channel = open_channel(address)
    try:
        method = getattr(stub_factory(channel), method_name)
        result = call_stage(
            method, request, timeout_s=deadline, on_progress=forwarder, run_id=_flow_run_id()
        )
    except grpc.RpcError as exc:
        code = exc.code().name if hasattr(exc, "code") and exc.code() else "UNKNOWN"
        details = exc.details() if hasattr(exc, "details") else str(exc)
        progress_events.emit(stage, 0, 0, f"failed: {code}", failed=True)
        raise StageCallError(stage, code, details or "") from None
    finally:
        channel.close()
    outcome = outcome_from_result(stage, result, time.monotonic() - started)
    outcome.attempts = _attempt_number()
    if forwarder.artifact_id is not None:
        update_progress_artifact(forwarder.artifact_id, 100.0, description=f"{stage}: 100% done")
    verdict = "cache hit (no compute)" if outcome.cache_hit else f"{outcome.compute_seconds:.1f}s"
    logger.info("%s done: %s, counts %s", stage, verdict, outcome.counts)
    progress_events.emit(stage, 1, 1, "cached" if outcome.cache_hit else "done", finished=True)
    return outcome


def require_reachable(stage: str, address: str, grace_s: float) -> None:
    """Fails at once (no retries) when nothing answers at a stage's address within `grace_s`,
    naming the address and the likely cause."""
    from services.common.client import health_status

    deadline = time.monotonic() + grace_s
    while health_status(address, timeout_s=1.0) == "UNREACHABLE":
        if time.monotonic() >= deadline:
            raise StageCallError(stage, "UNREACHABLE", unreachable_hint(stage, address))
        time.sleep(0.25)


def unreachable_hint(stage: str, address: str) -> str:
    """What to check when nothing answers at a stage's address."""
    env = stage_spec(stage).addr_env
    source = (
        f"{env}={os.environ[env]}" if os.environ.get(env)
        else f"{env} is not set, so the default address was used"
    )  # fmt: skip
    return (
        f"no {stage} service answers at {address} ({source}). Is the stack up "
        "(`nlfpipe stack status`)? A worker started by hand needs the stack's <STAGE>_ADDR "
        "variables in its environment; `nlfpipe stack up` starts one that has them."
    )


def stage_task(stage: str, name: str | None = None):
    """Decorates a stage-call function as a Prefect task with the stage's retries (see admitted).

    A stage error that retrying cannot fix ends the task as Failed with its message, without a
    traceback in the run's log (the traceback is logged at DEBUG).
    """

    def decorate(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except StageCallError as exc:
                if exc.transient:
                    raise
                get_run_logger().debug("%s failed", stage, exc_info=True)
                return Failed(message=str(exc), data=exc)

        return task(
            name=name or stage,
            retries=STAGE_RETRIES,
            retry_delay_seconds=RETRY_DELAYS_S,
            retry_jitter_factor=0.2,
            retry_condition_fn=retry_on_transient,
            persist_result=False,
            cache_policy=NO_CACHE,
        )(run)

    return decorate

