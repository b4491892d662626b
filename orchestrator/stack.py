"""The embedded stack: stage services as local processes (and a local Prefect server).

`LocalStack` starts `nlfpipe serve <stage> --port 0 --port-file F` for each stage that is not
already serving, waits for SERVING, restarts a service that dies while the stack is up (on the
same port, so retried calls find it again), and stops what it started on exit or Ctrl-C.
`nlfpipe stack up` writes the processes it left running to a state file that `nlfpipe run`,
`stack status` and `stack down` read.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

import psutil

from orchestrator.forked import ForkedService, finish_forked, start_forked
from services.common.client import health_status
from services.common.forkserver import serve_command, stop_with_parent
from services.common.models import cli_program, load_registry, sha256_of
from services.common.settings import load_settings
from services.common.stages import stage_spec

DEFAULT_STATE_DIR = Path(".nlfpipe")
STATE_FILE = "stack.json"
STOP_GRACE_S = 20.0


class StackError(RuntimeError):
    """A service of the stack could not be started; says which and where its log is."""


class ModelsMissing(StackError):
    """Services that cannot load their models; the message lists files and fetch commands."""

    def __init__(self, reasons: Mapping[str, str]):
        self.reasons = dict(reasons)
        lines = []
        for stage, reason in sorted(self.reasons.items()):
            lines.append(f"  {stage}:")
            lines += [f"    - {part.strip()}" for part in reason.split(" | ") if part.strip()]
        program = cli_program()
        super().__init__(
            "models are missing, nothing was run:\n"
            + "\n".join(lines)
            + f"\nFetch them with the commands above (`{program} models list` shows every "
            "model), or try the pipeline on generated test models: "
            "`make run VIDEO=<video> RUN_ARGS=--test-models` "
            f"(or `{program} run <video> --test-models`)."
        )


class StackMismatch(StackError):
    """A running stack's service computes with other models than this run asks for."""


#: Environment variables that choose which models a service computes with, on what, and where
#: its results go; a service reused by a run must have started with the same values.
MODEL_SELECTION_ENV = (
    "NLFPIPE_MODEL_CACHE",
    "NLFPIPE_MODEL_SOURCE",
    "SMPLFITTER_BODY_MODELS",
    "NLFPIPE_DEVICE",
    "NLFPIPE_POSE_MODEL",
    "NLFPIPE_POSE_FP16",
    "NLFPIPE_SEMSEG_MODEL",
    "NLFPIPE_TRACKING_BACKEND",
    "NLFPIPE_SEMSEG_BACKEND",
    "NLFPIPE_INTERPOLATION_BACKEND",
    "NLFPIPE_STORE",
    "NLFPIPE_STORE_ROOT",
)
#: Set (to 1) by `--test-models`: the services run on generated stand-ins.
TEST_MODELS_ENV = "NLFPIPE_TEST_MODELS"
#: 0: every service of a stack starts as a process of its own (see LocalStack._launch_fresh).
FORK_SERVICES_ENV = "NLFPIPE_FORK_SERVICES"


def service_models(stage: str, env: Mapping[str, str]) -> dict:
    """What a `stage` service started with `env` computes with: the test-models flag, the
    selecting settings, and the sha256 of each file of the stage's registry models found in
    the model cache (from the hash cache, so this is cheap after the first time)."""
    settings = load_settings(env)
    files = {}
    for name, entry in sorted(load_registry().items()):
        if stage not in entry.used_by:
            continue
        root = Path(env.get("SMPLFITTER_BODY_MODELS") or settings.model_cache)
        folder = (root if name == "smpl" else settings.model_cache) / name
        for rel in entry.required_paths():
            if (folder / rel).is_file():
                files[f"{name}/{rel}"] = sha256_of(folder / rel)
    return {
        "test_models": env.get(TEST_MODELS_ENV) == "1",
        "settings": {k: env[k] for k in MODEL_SELECTION_ENV if env.get(k)},
        "files": files,
    }


def models_difference(recorded: Mapping | None, wanted: Mapping) -> list[str]:
    """How a running service's models differ from what a run wants (empty: the same)."""
    if not recorded:
        return ["the stack did not record its models (it was started by an older nlfpipe)"]
    if recorded.get("test_models") != wanted["test_models"]:

        def kind(test_models: bool) -> str:
            return "generated test models" if test_models else "the real models"

        return [f"the stack runs {kind(recorded.get('test_models'))}, "
                f"this run asks for {kind(wanted['test_models'])}"]  # fmt: skip
    differences = []
    for group in ("settings", "files"):
        old, new = recorded.get(group, {}), wanted[group]
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                differences.append(
                    f"{key}: stack {old.get(key, '(unset)')}, this run {new.get(key, '(unset)')}"
                )
    return differences


@dataclass
class ServiceProcess:
    """One stage service started by this stack (or found running)."""

    stage: str
    address: str
    pid: int | None = None
    port: int = 0
    log_path: str = ""
    owned: bool = True
    restarts: int = 0
    models: dict | None = None  # service_models() at start
    popen: "subprocess.Popen | ForkedService | None" = field(
        default=None, repr=False, compare=False
    )

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return self.pid is not None and _pid_alive(self.pid)


def _pid_alive(pid: int) -> bool:
    """True while the process runs (a zombie waiting to be reaped counts as stopped)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class LocalStack:
    """Stage services as child processes of this one; a context manager that stops them."""

    def __init__(
        self,
        stages: Iterable[str],
        *,
        env: Mapping[str, str] | None = None,
        state_dir: Path = DEFAULT_STATE_DIR,
        startup_timeout_s: float = 300.0,
        supervise: bool = True,
        detach: bool = False,
    ):
        self.stages = list(dict.fromkeys(stages))
        for stage in self.stages:
            stage_spec(stage)
        self.env = dict(os.environ if env is None else env)
        self.state_dir = Path(state_dir)
        self.startup_timeout_s = startup_timeout_s
        self.supervise = supervise and not detach
        self.detach = detach
        self.services: dict[str, ServiceProcess] = {}
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._supervisor: threading.Thread | None = None
        self._forkserver: subprocess.Popen | None = None

    # lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> "LocalStack":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> dict[str, str]:
        """Starts (or reuses) every stage service; returns stage -> address once all serve."""
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        reusable = running_services(self.state_dir)
        launched: list[_Launched] = []
        try:
            fresh = []
            for stage in self.stages:
                found = reusable.get(stage)
                if found is not None and health_status(found.address, timeout_s=2.0) == "SERVING":
                    self._check_models(found)
                    found.owned = False
                    self.services[stage] = found
                else:
                    fresh.append(stage)
            launched = self._launch_fresh(fresh)
            # Every process is started before any is waited for: they import and load together.
            while launched:
                self.services[launched[0].stage] = self._bound(launched[0])
                launched.pop(0)
            if self._forkserver is not None and self.detach:
                finish_forked(self._forkserver, self.state_dir, wait=False)
            self._wait_all_serving()
        except BaseException:
            for rest in launched:
                rest.popen.kill()
                rest.popen.wait()
            self.stop()
            raise
        if self.supervise:
            self._supervisor = threading.Thread(
                target=self._supervise, name="nlfpipe-stack-supervisor", daemon=True
            )
            self._supervisor.start()
        return self.addresses()

    def _check_models(self, found: ServiceProcess) -> None:
        """Refuses a running service that computes with other models than this stack wants."""
        differences = models_difference(found.models, service_models(found.stage, self.env))
        if differences:
            program = cli_program()
            raise StackMismatch(
                f"the running stack's {found.stage} service ({found.address}, recorded in "
                f"{self.state_dir / STATE_FILE}) computes with other models than this run asks "
                f"for: {'; '.join(differences)}. Nothing was run. Stop the stack with "
                f"`{program} stack down` and run again, or run with the stack's models "
                "(`--test-models` exactly when it was started with `stack up --test-models`)."
            )

    def addresses(self) -> dict[str, str]:
        return {stage: s.address for stage, s in self.services.items()}

    def address_env(self) -> dict[str, str]:
        """`<STAGE>_ADDR` variables that point the flow at these services."""
        return {stage_spec(stage).addr_env: addr for stage, addr in self.addresses().items()}

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stops the services this stack started (SIGTERM, then SIGKILL after `grace_s`)."""
        self._stopping.set()
        with self._lock:
            owned = [s for s in self.services.values() if s.owned and s.popen is not None]
        for service in owned:
            if service.alive():
                service.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for service in owned:
            try:
                service.popen.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                service.popen.kill()
                service.popen.wait(timeout=5)
        if self._supervisor is not None:
            self._supervisor.join(timeout=1)
        if self._forkserver is not None and not self.detach:
            finish_forked(self._forkserver, self.state_dir)
            self._forkserver = None

    # processes -----------------------------------------------------------------------------
    def _spawn(self, stage: str, port: int) -> ServiceProcess:
        return self._bound(self._launch(stage, port))

    def _launch_fresh(self, stages: list[str]) -> list["_Launched"]:
        """Starts fresh services without waiting for them: several together come from one fork
        server (services.common.forkserver: torch and the stages are imported once, not once
        per service), unless NLFPIPE_FORK_SERVICES=0; a single one is a process of its own."""
        if len(stages) < 2 or self.env.get(FORK_SERVICES_ENV, "1") == "0":
            return [self._launch(stage, port=0) for stage in stages]
        logs = {stage: self._fresh_log(stage) for stage in stages}
        env = {**self.env, "NLFPIPE_LOG_FORMAT": "json"}
        self._forkserver, handles = start_forked(stages, self.state_dir, env, detach=self.detach)
        return [_Launched(stage, handles[stage], handles[stage].port_file, logs[stage])
                for stage in stages]  # fmt: skip

    def _fresh_log(self, stage: str) -> Path:
        """A fresh start's log path; the previous log is kept as `<stage>.log.1`."""
        log_path = self.state_dir / "logs" / f"{stage}.log"
        if log_path.exists():
            os.replace(log_path, log_path.with_name(log_path.name + ".1"))
        return log_path

    def _launch(self, stage: str, port: int) -> "_Launched":
        """Starts a service process without waiting for it (port 0: a fresh start, whose log
        replaces the previous one as `<stage>.log.1`; else a restart, appending)."""
        port_file = self.state_dir / f"{stage}.port"
        port_file.unlink(missing_ok=True)
        log_path = self._fresh_log(stage) if not port else self.state_dir / "logs" / f"{stage}.log"
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                serve_command(stage, port, port_file),
                env={**self.env, "NLFPIPE_LOG_FORMAT": "json"},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=None if self.detach else stop_with_parent,
            )
        return _Launched(stage, popen, port_file, log_path)

    def _bound(self, launched: "_Launched") -> ServiceProcess:
        """The service once it listens (its port file is read and removed)."""
        try:
            bound = _read_port(
                launched.port_file, launched.popen, launched.log_path, self.startup_timeout_s
            )
        finally:
            launched.port_file.unlink(missing_ok=True)
        return ServiceProcess(
            stage=launched.stage,
            address=f"127.0.0.1:{bound}",
            pid=launched.popen.pid,
            port=bound,
            log_path=str(launched.log_path),
            models=service_models(launched.stage, self.env),
            popen=launched.popen,
        )

    def _wait_all_serving(self) -> None:
        """Waits until every service serves; a service missing models fails at once, listed."""
        deadline = time.monotonic() + self.startup_timeout_s
        waiting = dict(self.services)
        missing: dict[str, str] = {}
        while waiting:
            for stage, service in list(waiting.items()):
                if health_status(service.address, timeout_s=1.0) == "SERVING":
                    del waiting[stage]
                elif service.owned and not service.alive():
                    raise StackError(
                        f"the {stage} service exited during start-up; "
                        f"its log: {service.log_path}\n{_tail(service.log_path)}"
                    )
                elif reason := _model_not_ready_reason(service.log_path):
                    missing[stage] = reason
                    del waiting[stage]
            if time.monotonic() > deadline:
                stage, service = next(iter(waiting.items()))
                raise StackError(
                    f"the {stage} service at {service.address} is not SERVING after "
                    f"{self.startup_timeout_s:.0f} s ({health_status(service.address)}); "
                    f"its log: {service.log_path}\n{_tail(service.log_path)}"
                )
            if waiting:
                time.sleep(0.1)
        if missing:
            raise ModelsMissing(missing)

    def _supervise(self) -> None:
        """Restarts an owned service that died while the stack is up, on its old port."""
        while not self._stopping.wait(0.5):
            for stage, service in list(self.services.items()):
                if not service.owned or service.alive() or self._stopping.is_set():
                    continue
                try:
                    with self._lock:
                        if self._stopping.is_set():
                            return
                        replacement = self._spawn(stage, port=service.port)
                        replacement.restarts = service.restarts + 1
                        self.services[stage] = replacement
                except Exception as exc:  # noqa: BLE001 - keep supervising the others
                    sys.stderr.write(f"nlfpipe: restarting {stage} failed: {exc}\n")

    # state file for `stack up|down|status` --------------------------------------------------
    def write_state(self, extra: Mapping[str, object] | None = None) -> Path:
        path = self.state_dir / STATE_FILE
        state = {
            "services": {
                stage: {f.name: getattr(s, f.name) for f in fields(s) if f.name != "popen"}
                for stage, s in self.services.items()
            },
            **(extra or {}),
        }
        path.write_text(json.dumps(state, indent=2))
        return path


@dataclass
class _Launched:
    """A service process that was started and may not listen yet."""

    stage: str
    popen: "subprocess.Popen | ForkedService"
    port_file: Path
    log_path: Path


def _read_port(
    port_file: Path, popen: "subprocess.Popen | ForkedService", log_path: Path, timeout_s: float
) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_file.exists():
            text = port_file.read_text().strip()
            if text.isdigit():
                return int(text)
        if popen.poll() is not None:
            raise StackError(
                f"{' '.join(popen.args[3:5])} exited with code {popen.returncode} before "
                f"listening; its log: {log_path}\n{_tail(log_path)}"
            )
        time.sleep(0.05)
    popen.kill()
    raise StackError(f"{' '.join(popen.args[3:5])} did not bind a port in {timeout_s:.0f} s")


def _model_not_ready_reason(log_path: str) -> str | None:
    """The reason of a "model not ready" event in a service's JSON log, if there is one."""
    try:
        lines = Path(log_path).read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if '"model not ready"' in line:
            try:
                return str(json.loads(line).get("reason", line))
            except json.JSONDecodeError:
                return line
    return None


def _tail(path: str | Path, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def read_state(state_dir: Path = DEFAULT_STATE_DIR) -> dict:
    path = Path(state_dir) / STATE_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}


def running_services(state_dir: Path = DEFAULT_STATE_DIR) -> dict[str, ServiceProcess]:
    """Services recorded by `nlfpipe stack up` whose process is still alive."""
    services = {}
    for stage, recorded in read_state(state_dir).get("services", {}).items():
        service = ServiceProcess(**{**recorded, "owned": False})
        if service.alive():
            services[stage] = service
    return services


def stop_recorded(
    state_dir: Path = DEFAULT_STATE_DIR, timeout_s: float = STOP_GRACE_S
) -> list[str]:
    """Stops every process in the state file (services and Prefect server); returns what stopped."""
    state = read_state(state_dir)
    targets: list[tuple[str, int]] = [
        (stage, recorded["pid"]) for stage, recorded in state.get("services", {}).items()
    ]
    targets += [(_process_name(name), entry["pid"]) for name, entry in _processes(state)]
    stopped = []
    for name, pid in targets:
        if pid and _pid_alive(pid):
            _signal_group(pid, signal.SIGTERM)
            stopped.append(name)
    deadline = time.monotonic() + timeout_s
    for _, pid in targets:
        while pid and _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid and _pid_alive(pid):
            _signal_group(pid, signal.SIGKILL)
    (Path(state_dir) / STATE_FILE).unlink(missing_ok=True)
    return stopped


def _signal_group(pid: int, sig: int) -> None:
    """Signals the process group a stack process leads (it was started in its own session)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def start_prefect_server(port: int, state_dir: Path, timeout_s: float = 120.0) -> dict:
    """Starts `prefect server start` in its own session; returns its pid and URLs once healthy."""
    state_dir = Path(state_dir)
    (state_dir / "logs").mkdir(parents=True, exist_ok=True)
    log_path = state_dir / "logs" / "prefect-server.log"
    env = {
        **os.environ,
        "PREFECT_HOME": str((state_dir / "prefect").resolve()),
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    prefect = Path(sys.executable).with_name("prefect")
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    api_url = f"http://127.0.0.1:{port}/api"
    try:
        _wait_healthy(popen, api_url, log_path, timeout_s, poll_s=0.5)
    except StackError:
        _signal_group(popen.pid, signal.SIGTERM)
        raise
    return {
        "pid": popen.pid,
        "api_url": api_url,
        "ui_url": f"http://127.0.0.1:{port}",
        "log_path": str(log_path),
    }


def _wait_healthy(
    popen: subprocess.Popen | None, api_url: str, log_path: Path, timeout_s: float, poll_s: float
) -> None:
    """Returns once the Prefect API at `api_url` answers /health; StackError (with the server's
    log) when the process exits or does not answer in `timeout_s`."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if popen is None or popen.poll() is not None:
            raise StackError(f"the Prefect server exited; its log: {log_path}\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(poll_s)
    raise StackError(f"the Prefect server did not answer in {timeout_s:.0f} s; its log: {log_path}")


def prefect_api_url(state_dir: Path = DEFAULT_STATE_DIR) -> str | None:
    """The API URL of the stack's Prefect server, when it is running."""
    prefect = read_state(state_dir).get("prefect") or {}
    if prefect.get("pid") and _pid_alive(prefect["pid"]):
        return prefect.get("api_url")
    return None


def stack_status(state_dir: Path = DEFAULT_STATE_DIR) -> list[dict]:
    """One row per recorded process: name, address and health."""
    state = read_state(state_dir)
    rows = []
    for stage, recorded in state.get("services", {}).items():
        alive = recorded.get("pid") and _pid_alive(recorded["pid"])
        status = health_status(recorded["address"], timeout_s=2.0) if alive else "STOPPED"
        rows.append({"name": stage, "address": recorded["address"], "status": status})
    for name, entry in _processes(state):
        rows.append({
            "name": _process_name(name), "address": entry.get("ui_url") or entry.get("address", ""),
            "status": "SERVING" if _pid_alive(entry["pid"]) else "STOPPED",
        })  # fmt: skip
    return rows


class EmbeddedPrefect:
    """Prefect's API server for one `nlfpipe run` without a stack: the app of Prefect's
    ephemeral mode, but started here in its own session (the Ctrl-C that stops a run does not
    kill it while the flow still reports to it) and with its database under the state folder,
    so the database is created and migrated by the first run only."""

    def __init__(self, state_dir: Path = DEFAULT_STATE_DIR):
        self.home = (Path(state_dir) / "prefect").resolve()
        self.log_path = Path(state_dir) / "logs" / "prefect.log"
        self.port = _free_port()
        self.first_time = not (self.home / "prefect.db").exists()
        self.popen: subprocess.Popen | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> None:
        """Starts the server process and returns at once (see wait_ready)."""
        import prefect

        self.home.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.log_path.exists():
            os.replace(self.log_path, self.log_path.with_name(self.log_path.name + ".1"))
        env = {
            **os.environ,
            "PREFECT_HOME": str(self.home),
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        env.pop("PREFECT_API_URL", None)
        command = [
            sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parents[1]),
            "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
            "--port", str(self.port), "--log-level", "error", "--lifespan", "on",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=stop_with_parent,
            )  # fmt: skip

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Returns once the API answers; StackError (with its log) when it exits or stalls."""
        _wait_healthy(self.popen, self.api_url, self.log_path, timeout_s, poll_s=0.1)

    def terminate(self) -> None:
        """Asks the server to stop (SIGTERM) without waiting; stop() waits."""
        if self.popen is not None and self.popen.poll() is None:
            _signal_group(self.popen.pid, signal.SIGTERM)

    def stop(self, grace_s: float = 5.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.terminate()
        try:
            self.popen.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=5)


def _free_port() -> int:
    import socket

    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
def _processes(state: dict) -> list[tuple[str, dict]]:
    """Top-level entries other than the services that record a process (prefect, worker, ...)."""
    return [
        (name, entry) for name, entry in state.items()
        if name != "services" and isinstance(entry, dict) and entry.get("pid")
    ]  # fmt: skip


def _process_name(entry: str) -> str:
    return {"prefect": "prefect-server"}.get(entry, entry.replace("_", "-"))
