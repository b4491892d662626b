"""One stage table, everywhere: every stage that has a contract and a service package has an image,
a compose service and a Kubernetes Deployment/Service, with the same port, health service name and
address variable as docs/architecture.md and services.common.stages; and every environment
variable the code reads is documented in docs/configuration.md."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from services.common.stages import STAGES

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "configuration.md"
SERVED_STAGES = [
    s
    for s in STAGES
    if (ROOT / "services" / s / "service.py").exists()
    and (ROOT / "protos" / "nlfpipe" / s / "v1" / f"{s}.proto").exists()
]
DEPLOYED_STAGES = sorted(
    set(SERVED_STAGES) | {s for s in STAGES if (ROOT / "deploy" / s / "Dockerfile").exists()}
)
ENV_NAME = re.compile(r"\b(NLFPIPE_[A-Z0-9_]*[A-Z0-9]|[A-Z]+_ADDR)\b")


def test_architecture_table_matches_the_stage_module() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| (\w+) \| `([\w.]+)` \| (\d+) \| `(\w+)` \|$", text, re.MULTILINE)
    table = {stage: (service, int(port), env) for stage, service, port, env in rows}
    assert table == {s: (v.service_name, v.port, v.addr_env) for s, v in STAGES.items()}


def test_served_stages_are_found() -> None:
    assert {"ingest", "tracking", "pose"} <= set(SERVED_STAGES)


@pytest.fixture(scope="module")
def compose() -> dict:
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "docker-compose"),
            "--env-file",
            str(ROOT / ".env.example"),
            "-f",
            str(ROOT / "docker-compose.yml"),
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _k8s(stage: str) -> dict[str, dict]:
    path = ROOT / "k8s" / "base" / f"{stage}.yaml"
    assert path.exists(), f"k8s/base/{stage}.yaml is missing (docs/adding-a-stage.md)"
    return {d["kind"]: d for d in yaml.safe_load_all(path.read_text()) if d}


@pytest.mark.parametrize("stage", DEPLOYED_STAGES)
def test_stage_is_deployed_the_same_way_everywhere(stage: str, compose: dict) -> None:
    spec = STAGES[stage]
    folder = ROOT / "deploy" / stage
    for name in ("Dockerfile", "requirements.in", "requirements.txt"):
        assert (folder / name).is_file(), f"deploy/{stage}/{name} is missing"
    dockerfile = (folder / "Dockerfile").read_text()
    assert f"NLFPIPE_PORT={spec.port}" in dockerfile and f"EXPOSE {spec.port}" in dockerfile
    assert f"--service {spec.service_name}" in dockerfile

    service = compose["services"].get(stage)
    assert service, f"docker-compose.yml has no service {stage}"
    assert service["environment"]["NLFPIPE_PORT"] == str(spec.port)
    assert service["build"]["dockerfile"] == f"deploy/{stage}/Dockerfile"
    worker_env = compose["services"]["prefect-worker"]["environment"]
    assert worker_env.get(spec.addr_env) == f"{stage}:{spec.port}"

    k8s = _k8s(stage)
    assert set(k8s) >= {"Deployment", "Service"}
    kustomization = yaml.safe_load((ROOT / "k8s" / "base" / "kustomization.yaml").read_text())
    assert f"{stage}.yaml" in kustomization["resources"]
    (container,) = k8s["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["ports"][0]["containerPort"] == spec.port
    assert container["readinessProbe"]["grpc"]["service"] == spec.service_name
    assert k8s["Service"]["metadata"]["name"] == stage
    assert k8s["Service"]["spec"]["ports"][0]["port"] == spec.port
    config = next(
        d
        for d in yaml.safe_load_all((ROOT / "k8s" / "base" / "config.yaml").read_text())
        if d["kind"] == "ConfigMap"
    )
    assert config["data"][spec.addr_env] == f"{stage}:{spec.port}"


def test_every_deploy_folder_is_a_stage_or_a_known_image() -> None:
    images = {p.parent.name for p in (ROOT / "deploy").glob("*/Dockerfile")}
    assert images - set(STAGES) == {"orchestrator"}


def _documented() -> set[str]:
    return set(re.findall(r"`([A-Z][A-Z0-9_<>]*)`", DOC.read_text()))


def test_settings_variables_are_documented() -> None:
    read = set(
        re.findall(r'"(NLFPIPE_[A-Z0-9_]+)"', (ROOT / "services/common/settings.py").read_text())
    )
    assert {"NLFPIPE_STORE", "NLFPIPE_MODEL_CACHE", "NLFPIPE_GRACE_SECONDS"} <= read
    assert read - _documented() == set(), "add these to docs/configuration.md"


def test_every_variable_the_code_reads_is_documented() -> None:
    sources = [
        p
        for folder in ("services", "orchestrator")
        for p in (ROOT / folder).rglob("*.py")
        if "tests" not in p.parts
    ]
    names = {n for p in sources for n in ENV_NAME.findall(p.read_text())}
    names |= {spec.addr_env for spec in STAGES.values()}
    missing = names - _documented()
    assert not missing, f"document these in docs/configuration.md: {sorted(missing)}"


def test_every_variable_the_deployment_sets_is_documented(compose: dict) -> None:
    names = set()
    for service in compose["services"].values():
        names |= {n for n in service.get("environment", {}) if ENV_NAME.fullmatch(n)}
    for doc in yaml.safe_load_all((ROOT / "k8s" / "base" / "config.yaml").read_text()):
        if doc["kind"] == "ConfigMap":
            names |= set(doc["data"])
    example = ROOT / ".env.example"
    names |= {
        line.split("=", 1)[0]
        for line in example.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    missing = names - _documented()
    assert not missing, f"document these in docs/configuration.md: {sorted(missing)}"
