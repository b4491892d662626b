"""The UI part of `nlfpipe stack up`: store over HTTP, work pool, deployments, a worker.

After the services and the Prefect server are up, this brings up what a person needs to start
runs from the Prefect UI: the local store served read-only on loopback (so every artifact link
is an http:// URL), the `nlfpipe-local` process work pool, the local deployments of prefect.yaml
(deployed from Python with the stack's environment as job variables), and a worker whose
environment holds the stack's `<STAGE>_ADDR` addresses. Each process is recorded in the stack
state file as a top-level entry with its pid and address, for `stack status` and `stack down`.
"""

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import yaml

from orchestrator.artifacts import STORE_HTTP_ENV
from orchestrator.stack import StackError, _pid_alive, _tail

REPO_ROOT = Path(__file__).resolve().parents[1]
PREFECT_FILE = REPO_ROOT / "prefect.yaml"
LOCAL_POOL = "nlfpipe-local"
WORKER_NAME = "nlfpipe-stack"
#: Environment variables of the stack that flow runs need (besides the `<STAGE>_ADDR`s).
_RUN_ENV_PREFIXES = ("NLFPIPE_", "SMPLFITTER_")


def run_environment(address_env: Mapping[str, str], store_url: str) -> dict[str, str]:
    """What a flow run of the stack needs: addresses, store and model settings, store URL."""
    env = {k: v for k, v in os.environ.items() if k.startswith(_RUN_ENV_PREFIXES)}
    return {**env, **address_env, STORE_HTTP_ENV: store_url}


def _start_detached(name: str, command: list[str], env: Mapping[str, str], state_dir: Path):
    log_path = state_dir / "logs" / f"{name}.log"
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            command, env=dict(env), cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    return popen, log_path


def start_store_http(store_root: Path, state_dir: Path, timeout_s: float = 30.0) -> dict:
    """Starts the store's loopback HTTP server; returns its state entry once it listens."""
    port_file = state_dir / "store-http.port"
    port_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "orchestrator.store_http", "--root", str(store_root),
               "--port", "0", "--port-file", str(port_file)]  # fmt: skip
    popen, log_path = _start_detached("store-http", command, os.environ, state_dir)
    deadline = time.monotonic() + timeout_s
    while not port_file.exists():
        if popen.poll() is not None or time.monotonic() > deadline:
            raise StackError(f"the store HTTP server did not start; log: {log_path}\n"
                             f"{_tail(log_path)}")  # fmt: skip
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port_file.read_text().strip()}"
    return {"pid": popen.pid, "address": url, "log_path": str(log_path)}


def local_deployments(prefect_file: Path = PREFECT_FILE) -> list[dict]:
    """The deployments of prefect.yaml on the local work pool (name, entrypoint, ...)."""
    spec = yaml.safe_load(prefect_file.read_text())
    return [d for d in spec["deployments"] if d["work_pool"]["name"] == LOCAL_POOL]


def deploy_local(run_env: Mapping[str, str]) -> list[str]:
    """Creates the process work pool and prefect.yaml's local deployments, whose flow runs get
    `run_env` (so any worker of the pool reaches the stack); returns `flow/deployment` names.
    Runs against the current Prefect settings (see `prefect_api`)."""
    from prefect import Flow

    create_local_pool()
    names = []
    for spec in local_deployments():
        flow = Flow.from_source(source=str(REPO_ROOT), entrypoint=spec["entrypoint"])
        pool = spec["work_pool"]
        with contextlib.redirect_stdout(io.StringIO()):  # Prefect prints a table per deployment
            flow.deploy(
                name=spec["name"],
                work_pool_name=LOCAL_POOL,
                work_queue_name=pool.get("work_queue_name"),
                job_variables={"env": {**pool.get("job_variables", {}).get("env", {}), **run_env}},
                parameters=spec.get("parameters"),
                description=spec.get("description"),
                tags=spec.get("tags"),
                print_next_steps=False,
                ignore_warnings=True,
            )
        names.append(f"{flow.name}/{spec['name']}")
    return names


@contextlib.contextmanager
def prefect_api(api_url: str):
    """Prefect's client settings pointed at the stack's server (settings are read at import, so
    setting PREFECT_API_URL in os.environ afterwards would not reach them)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        yield


def create_local_pool() -> None:
    """The `nlfpipe-local` process work pool (kept when it exists)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name=LOCAL_POOL, type="process"))


def start_worker(api_url: str, run_env: Mapping[str, str], state_dir: Path) -> dict:
    """Starts `prefect worker start --pool nlfpipe-local` with the stack's environment; returns
    its state entry (see `wait_worker`)."""
    env = {
        **os.environ, **run_env,
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str((state_dir / "prefect").resolve()),
        "PREFECT_WORKER_QUERY_SECONDS": os.environ.get("PREFECT_WORKER_QUERY_SECONDS", "2"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }  # fmt: skip
    prefect = str(Path(sys.executable).with_name("prefect"))
    command = [prefect, "worker", "start", "--pool", LOCAL_POOL, "--name", WORKER_NAME]
    popen, log_path = _start_detached("prefect-worker", command, env, state_dir)
    return {"pid": popen.pid, "address": f"pool {LOCAL_POOL}", "log_path": str(log_path)}


def wait_worker(entry: dict, timeout_s: float = 90.0) -> None:
    """Waits until the worker has registered with the pool; StackError when it exits or not."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    while True:
        if not _pid_alive(entry["pid"]):
            raise StackError(
                f"the Prefect worker exited; log: {entry['log_path']}\n{_tail(entry['log_path'])}"
            )
        with get_client(sync_client=True) as client:
            workers = client.read_workers_for_work_pool(LOCAL_POOL)
        if any(w.name == WORKER_NAME for w in workers):
            return
        if time.monotonic() > deadline:
            raise StackError(f"the Prefect worker did not register in {timeout_s:.0f} s; "
                             f"log: {entry['log_path']}\n{_tail(entry['log_path'])}")  # fmt: skip
        time.sleep(0.5)


def bring_up_ui(state_dir: Path, api_url: str, address_env: Mapping[str, str]) -> dict:
    """Store HTTP server, work pool, worker and deployments; the state entries to record."""
    store_root = Path(os.environ.get("NLFPIPE_STORE_ROOT", state_dir / "store")).resolve()
    entries: dict = {"store_http": start_store_http(store_root, state_dir)}
    try:
        run_env = run_environment(address_env, entries["store_http"]["address"])
        with prefect_api(api_url):
            create_local_pool()
            # The worker starts up while the deployments are made.
            entries["prefect_worker"] = start_worker(api_url, run_env, state_dir)
            entries["deployments"] = deploy_local(run_env)
            wait_worker(entries["prefect_worker"])
    except BaseException:
        for entry in entries.values():
            if isinstance(entry, dict) and _pid_alive(entry["pid"]):
                os.killpg(entry["pid"], signal.SIGTERM)
        raise
    return entries
