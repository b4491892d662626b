"""Kubernetes manifests (k8s/): schema-validated offline, built with kustomize where kubectl exists,
and checked for the rules of docs/deploy-kubernetes.md (probes, hardening, GPU, network policies).

Two paths: `kubectl kustomize` + `kubernetes-validate --strict` on each overlay's output (skipped
when kubectl is missing), and a pure-Python path that always runs: every kustomization's files
exist, and every manifest of the base and the components validates on its own.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from services.common.stages import STAGES

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
BASE = K8S / "base"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
KUBERNETES_VERSION = "1.33.0"
KUBECTL = shutil.which("kubectl")
GRACE_SECONDS = 30
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job"}
DEPLOYED_STAGES = [s for s in STAGES if (BASE / f"{s}.yaml").exists()]


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def _validate(doc: dict) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def _base_docs() -> list[dict]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    return [d for name in kustomization["resources"] for d in _docs(BASE / name)]


def _by_kind_name(docs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def _pod_spec(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


def test_overlays_dev_and_prod_exist() -> None:
    assert {"dev", "prod"} <= set(OVERLAYS)


@pytest.mark.parametrize("kustomization", _kustomizations(), ids=lambda p: str(p.parent.name))
def test_kustomization_references_exist(kustomization: Path) -> None:
    spec = yaml.safe_load(kustomization.read_text())
    here = kustomization.parent
    for entry in spec.get("resources", []) + spec.get("components", []):
        assert (here / entry).exists(), f"{kustomization}: {entry} does not exist"
    for generator in spec.get("configMapGenerator", []) + spec.get("secretGenerator", []):
        for entry in generator.get("files", []):
            assert (here / entry.split("=", 1)[-1]).is_file(), f"{kustomization}: {entry}"


def test_base_lists_every_manifest_file() -> None:
    listed = set(yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}


def test_every_base_and_component_manifest_validates_strictly() -> None:
    files = [p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"]
    errors = []
    for path in files:
        for doc in _docs(path):
            try:
                _validate(doc)
            except kubernetes_validate.ValidationError as e:
                errors.append(f"{path.relative_to(ROOT)} {doc.get('kind')}: {e.message}")
    assert not errors, "\n".join(errors)


def test_base_job_template_is_hardened_and_reads_the_shared_settings() -> None:
    template = json.loads((BASE / "prefect" / "base-job-template.json").read_text())
    manifest = template["job_configuration"]["job_manifest"]
    pod = manifest["spec"]["template"]
    assert pod["metadata"]["labels"]["nlfpipe.io/role"] == "orchestrator"
    (container,) = pod["spec"]["containers"]
    assert container["args"] == "{{ command }}"
    refs = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
    assert refs == {"nlfpipe-config", "nlfpipe-s3"}
    _check_container_hardening(container, "flow-run")
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    variables = template["variables"]["properties"]
    for placeholder in ("image", "namespace", "env", "command", "name", "labels"):
        assert placeholder in variables
    used = set(re.findall(r"\{\{ *(\w+) *\}\}", json.dumps(template["job_configuration"])))
    assert used <= set(variables), f"placeholders without a variable: {used - set(variables)}"
    # prefect-kubernetes refuses a Job manifest without these two (checked with 0.8.0).
    assert pod["spec"]["completions"] == 1 and pod["spec"]["parallelism"] == 1


def _check_container_hardening(container: dict, where: str) -> None:
    security = container.get("securityContext", {})
    assert security.get("readOnlyRootFilesystem") is True, f"{where}: read-only root filesystem"
    assert security.get("allowPrivilegeEscalation") is False, f"{where}: no privilege escalation"
    assert security.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: drop ALL"
    resources = container.get("resources", {})
    assert resources.get("requests") and resources.get("limits"), f"{where}: requests and limits"


def test_every_workload_is_hardened() -> None:
    docs = _base_docs() + _docs(K8S / "components" / "models-fetch" / "models-fetch-job.yaml")
    for doc in (d for d in docs if d["kind"] in WORKLOAD_KINDS):
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        pod = _pod_spec(doc)
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for container in pod["containers"]:
            _check_container_hardening(container, where)


@pytest.mark.parametrize("stage", DEPLOYED_STAGES)
def test_stage_deployment_and_service(stage: str) -> None:
    spec = STAGES[stage]
    docs = _by_kind_name(_docs(BASE / f"{stage}.yaml"))
    deployment, service = docs[("Deployment", stage)], docs[("Service", stage)]
    pod = _pod_spec(deployment)
    (container,) = pod["containers"]
    assert container["image"] == f"nlfpipe/{stage}:dev"
    assert container["ports"] == [{"name": "grpc", "containerPort": spec.port}]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["NLFPIPE_PORT"] == str(spec.port)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": spec.port, "service": spec.service_name}
    startup = container["startupProbe"]
    allowed = startup["periodSeconds"] * startup["failureThreshold"]
    assert allowed >= (600 if spec.learned else 120), "startup probe long enough to load models"
    assert pod["terminationGracePeriodSeconds"] > GRACE_SECONDS
    assert pod["automountServiceAccountToken"] is False
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True and "/tmp" in mounts
    labels = deployment["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "stage"
    assert pod is not None and _pod_spec(deployment)["containers"][0]["name"] == stage
    assert (labels.get("nlfpipe.io/accelerator") == "gpu") == spec.learned
    # components/gpu switches the device by position: env[1] must stay NLFPIPE_DEVICE.
    assert container["env"][1]["name"] == "NLFPIPE_DEVICE"
    assert service["spec"]["ports"] == [
        {"name": "grpc", "port": spec.port, "targetPort": "grpc", "appProtocol": "grpc"}
    ]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_config_map_has_every_deployed_stage_address() -> None:
    config = _by_kind_name(_base_docs())[("ConfigMap", "nlfpipe-config")]["data"]
    for stage in DEPLOYED_STAGES:
        spec = STAGES[stage]
        assert config[spec.addr_env] == f"{stage}:{spec.port}"
    assert int(config["NLFPIPE_GRACE_SECONDS"]) == GRACE_SECONDS


def test_network_policies() -> None:
    policies = {
        d["metadata"]["name"]: d["spec"] for d in _base_docs() if d["kind"] == "NetworkPolicy"
    }
    stages = policies["stages-from-orchestrator"]
    assert stages["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": "stage"}
    (rule,) = stages["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"nlfpipe.io/role": "orchestrator"}}}]
    minio = policies["minio-from-stages-and-orchestrator"]
    assert minio["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "minio"}
    (rule,) = minio["ingress"]
    allowed = [peer["podSelector"]["matchLabels"] for peer in rule["from"]]
    assert allowed == [
        {"app.kubernetes.io/component": "stage"},
        {"nlfpipe.io/role": "orchestrator"},
    ]
    docs = _by_kind_name(_base_docs())
    worker = docs[("Deployment", "prefect-worker")]["spec"]["template"]["metadata"]["labels"]
    assert worker["nlfpipe.io/role"] == "orchestrator"


def test_worker_pool_matches_prefect_yaml() -> None:
    worker = _by_kind_name(_base_docs())[("Deployment", "prefect-worker")]
    command = _pod_spec(worker)["containers"][0]["command"]
    pool = command[command.index("--pool") + 1]
    assert command[command.index("--type") + 1] == "kubernetes"
    prefect_yaml = ROOT / "prefect.yaml"
    if not prefect_yaml.exists():
        pytest.skip("prefect.yaml (the orchestrator's) is not there yet")
    deployments = yaml.safe_load(prefect_yaml.read_text())["deployments"]
    pools = {d["work_pool"]["name"] for d in deployments}
    assert pool in pools, f"worker pool {pool!r} is not a work pool of prefect.yaml ({pools})"
    for deployment in (d for d in deployments if d["work_pool"]["name"] == pool):
        env = deployment["work_pool"].get("job_variables", {}).get("env", {})
        for stage in DEPLOYED_STAGES:
            spec = STAGES[stage]
            if spec.addr_env in env:
                assert env[spec.addr_env] == f"{stage}:{spec.port}"


@pytest.fixture(scope="module")
def built_overlays() -> dict[str, list[dict]]:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed: the pure-Python checks above still ran")
    built = {}
    for overlay in OVERLAYS:
        result = subprocess.run(
            [KUBECTL, "kustomize", str(K8S / "overlays" / overlay)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"kubectl kustomize {overlay}:\n{result.stderr}"
        built[overlay] = [d for d in yaml.safe_load_all(result.stdout) if d]
    return built


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds_and_validates_strictly(built_overlays: dict, overlay: str) -> None:
    errors = []
    for doc in built_overlays[overlay]:
        try:
            _validate(doc)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {e.message}")
    assert not errors, "\n".join(errors)
    namespaces = {d["metadata"].get("namespace") for d in built_overlays[overlay]}
    namespaces.discard(None)
    assert len(namespaces) == 1, f"{overlay}: everything in one namespace, got {namespaces}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_uses_one_orchestrator_image(built_overlays: dict, overlay: str) -> None:
    docs = _by_kind_name(built_overlays[overlay])
    worker_image = _pod_spec(docs[("Deployment", "prefect-worker")])["containers"][0]["image"]
    deploy = _pod_spec(docs[("Job", "prefect-deploy")])["containers"][0]
    env = {e["name"]: e.get("value") for e in deploy["env"]}
    assert env["NLFPIPE_ORCHESTRATOR_IMAGE"] == worker_image == deploy["image"]


def test_prod_gives_learned_stages_a_gpu_and_dev_does_not(built_overlays: dict) -> None:
    for overlay, expect_gpu in (("prod", True), ("dev", False)):
        docs = _by_kind_name(built_overlays[overlay])
        for stage in DEPLOYED_STAGES:
            pod = _pod_spec(docs[("Deployment", stage)])
            container = pod["containers"][0]
            gpus = container["resources"]["limits"].get("nvidia.com/gpu")
            wants = expect_gpu and STAGES[stage].learned
            assert (gpus == "1") == wants, f"{overlay}/{stage}: nvidia.com/gpu={gpus}"
            if wants:
                assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
                assert pod["nodeSelector"]
                assert container["env"][1] == {"name": "NLFPIPE_DEVICE", "value": "cuda"}
