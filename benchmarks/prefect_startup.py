"""Which part of Prefect's start-up `nlfpipe run` pays, and which part it can avoid.

Measures, each in a fresh process: importing prefect (what the CLI pays to run a flow at all);
Prefect's API server (the app of ephemeral mode, as `nlfpipe run` starts it) until /health
answers, with a new database (created and migrated) and with the database kept from before;
and the first flow run of a process against that server (client set-up, the flow and task
runs' API calls). The last line printed is one JSON object (seconds, load before and after).

Usage: .venv/bin/python benchmarks/prefect_startup.py [--repeat 2]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_FIRST_FLOW = """
import time
started = time.monotonic()
from prefect import flow, task

@task
def one():
    return 1

@flow
def tiny():
    return one()

imported = time.monotonic()
tiny()
print(imported - started, time.monotonic() - imported)
"""


def _seconds(command: list[str], env: dict) -> float:
    started = time.monotonic()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.monotonic() - started


def _server_ready_s(state_dir: Path) -> tuple[float, "object"]:
    from orchestrator.stack import EmbeddedPrefect

    server = EmbeddedPrefect(state_dir)
    started = time.monotonic()
    server.start()
    server.wait_ready()
    return time.monotonic() - started, server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    rows: dict[str, list[float]] = {
        k: [] for k in ("import_prefect_s", "server_new_db_s", "server_kept_db_s",
                        "first_flow_import_s", "first_flow_run_s")
    }  # fmt: skip
    for _ in range(args.repeat):
        rows["import_prefect_s"].append(_seconds([sys.executable, "-c", "import prefect"], env))
        with tempfile.TemporaryDirectory(prefix="nlfpipe-prefect-") as tmp:
            state = Path(tmp)
            seconds, server = _server_ready_s(state)
            server.stop()
            rows["server_new_db_s"].append(seconds)
            seconds, server = _server_ready_s(state)
            rows["server_kept_db_s"].append(seconds)
            client_env = {**env, "PREFECT_API_URL": server.api_url}
            try:
                done = subprocess.run(
                    [sys.executable, "-c", _FIRST_FLOW], env=client_env,
                    check=True, capture_output=True, text=True,
                )  # fmt: skip
            finally:
                server.stop()
            imported, ran = map(float, done.stdout.split()[-2:])
            rows["first_flow_import_s"].append(imported)
            rows["first_flow_run_s"].append(ran)
    result = {k: round(min(v), 3) for k, v in rows.items()}
    result["load_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
