"""One stage table, everywhere: every stage of services.common.stages (and docs/architecture.md)
has an image built from the template with its own requirements, a compose service and a
Kubernetes Deployment/Service, all with the same port, health service name, address variable
and kind (CPU or learned); and every environment variable the code reads or the deployment sets
is documented in docs/configuration.md."""

import re

import pytest

from services.common.stages import STAGES
from tests.support.deploy import (
    DEPLOY,
    K8S,
    ROOT,
    TEMPLATE,
    by_kind_name,
    compiled_python,
    compose_config,
    kustomize,
    resolve,
    stage_components,
    stage_values,
)

DOC = ROOT / "docs" / "configuration.md"
SERVED_STAGES = [
    s
    for s in STAGES
    if (ROOT / "services" / s / "service.py").exists()
    and (ROOT / "protos" / "nlfpipe" / s / "v1" / f"{s}.proto").exists()
]
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
    return compose_config()


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict]:
    return by_kind_name(kustomize(K8S / "base"))


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_is_deployed_the_same_way_everywhere(stage: str, compose: dict, k8s: dict) -> None:
    spec = STAGES[stage]
    base = "cuda" if spec.learned else "slim"

    # The image: the template, built with the stage's token, its kind and its own requirements.
    service = compose["services"].get(stage)
    assert service, f"docker-compose.yml has no service {stage}"
    build = service["build"]
    assert build["dockerfile"] == "deploy/Dockerfile"
    assert build["args"] == {"STAGE": stage, **({"BASE": "cuda"} if spec.learned else {})}
    chain = resolve(
        TEMPLATE,
        build["args"],
        target="stage",
        contexts=tuple(build.get("additional_contexts", {})),
    )
    assert f"base-{base}" in [s.name for s in chain]
    for name in ("requirements.in", "requirements.txt"):
        assert (DEPLOY / stage / name).is_file(), f"deploy/{stage}/{name} is missing"
    assert (
        compiled_python(DEPLOY / stage / "requirements.txt")
        == {"slim": "3.11", "cuda": "3.12"}[base]
    )
    env_lines = [line for s in chain for line in s.lines if line.startswith("ENV ")]
    assert f"ENV NLFPIPE_STAGE={stage}" in env_lines, "the image serves and checks its stage"

    # Compose: port, address, kind.
    assert service["environment"]["NLFPIPE_PORT"] == str(spec.port)
    assert service["expose"] == [str(spec.port)]
    worker_env = compose["services"]["prefect-worker"]["environment"]
    assert worker_env.get(spec.addr_env) == f"{stage}:{spec.port}"

    # Kubernetes: the stage's values, the built Deployment/Service, the address in the ConfigMap.
    values = stage_values(stage)
    assert (values["port"], values["service"]) == (str(spec.port), spec.service_name)
    assert ("learned-stage" in stage_components(stage)) == spec.learned
    (container,) = k8s[("Deployment", stage)]["spec"]["template"]["spec"]["containers"]
    assert container["ports"][0]["containerPort"] == spec.port
    assert container["readinessProbe"]["grpc"]["service"] == spec.service_name
    assert container["image"] == service["image"], "the same image name in compose and k8s"
    assert k8s[("Service", stage)]["spec"]["ports"][0]["port"] == spec.port
    config = k8s[("ConfigMap", "nlfpipe-config")]["data"]
    assert config[spec.addr_env] == f"{stage}:{spec.port}"


def test_every_deploy_folder_is_a_stage_or_a_known_image() -> None:
    folders = {p.parent.name for p in DEPLOY.glob("*/requirements.in")}
    assert folders - set(STAGES) == {"orchestrator", "codegen"}


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


def test_every_variable_the_deployment_sets_is_documented(compose: dict, k8s: dict) -> None:
    names = set()
    for service in compose["services"].values():
        names |= {n for n in service.get("environment", {}) if ENV_NAME.fullmatch(n)}
    names |= set(k8s[("ConfigMap", "nlfpipe-config")]["data"])
    for line in (line for s in resolve(TEMPLATE, {"STAGE": "ingest"}, "stage") for line in s.lines):
        if line.startswith("ENV "):
            names |= {n for n in re.findall(r"(\w+)=", line) if ENV_NAME.fullmatch(n)}
    example = ROOT / ".env.example"
    names |= {
        line.split("=", 1)[0]
        for line in example.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    missing = names - _documented()
    assert not missing, f"document these in docs/configuration.md: {sorted(missing)}"
