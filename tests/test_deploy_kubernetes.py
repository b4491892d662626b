"""Kubernetes manifests (k8s/): built with kustomize (kubectl's) and schema-validated offline with
`kubernetes-validate --strict`, and checked for the rules of docs/deploy-kubernetes.md (probes,
hardening, GPU, network policies, the two model cache sources, release images).

Every stage's Deployment and Service is written once (components/stage) and filled from the
stage's values (base/stages/<stage>/kustomization.yaml); the checks read what kustomize builds.
"""

import json
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from services.common.stages import STAGES
from tests.support.deploy import (
    K8S,
    by_kind_name,
    kustomize,
    kustomize_variant,
    stage_components,
    stage_values,
)

BASE = K8S / "base"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
KUBERNETES_VERSION = "1.33.0"
GRACE_SECONDS = 30
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job"}
DEPLOYED_STAGES = sorted(p.name for p in (BASE / "stages").iterdir() if p.is_dir())
STAGE_VALUES = {
    "name",
    "image",
    "port",
    "service",
    "cpu",
    "memory",
    "cpu-limit",
    "memory-limit",
    "tmp-size",
}


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _validation_errors(docs: list[dict]) -> list[str]:
    errors = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {e.message}")
    return errors


def _pod_spec(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def base_docs() -> list[dict]:
    return kustomize(BASE)


@pytest.fixture(scope="module")
def built_overlays() -> dict[str, list[dict]]:
    return {overlay: kustomize(K8S / "overlays" / overlay) for overlay in OVERLAYS}


def test_overlays_dev_and_prod_exist() -> None:
    assert {"dev", "prod"} <= set(OVERLAYS)


@pytest.mark.parametrize(
    "kustomization", sorted(K8S.rglob("kustomization.yaml")), ids=lambda p: str(p.parent.name)
)
def test_kustomization_references_exist(kustomization: Path) -> None:
    spec = yaml.safe_load(kustomization.read_text())
    here = kustomization.parent
    for entry in spec.get("resources", []) + spec.get("components", []):
        assert (here / entry).exists(), f"{kustomization}: {entry} does not exist"
    for entry in spec.get("transformers", []):
        assert (here / entry).is_file(), f"{kustomization}: {entry} does not exist"
    for generator in spec.get("configMapGenerator", []) + spec.get("secretGenerator", []):
        for entry in generator.get("files", []):
            assert (here / entry.split("=", 1)[-1]).is_file(), f"{kustomization}: {entry}"


def test_base_lists_every_manifest_file_and_stage() -> None:
    listed = set(yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"])
    files = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == files | {f"stages/{stage}" for stage in DEPLOYED_STAGES}
    assert set(DEPLOYED_STAGES) == set(STAGES), "every stage of the stage table is deployed"


def test_every_manifest_file_validates_strictly() -> None:
    """The files themselves, the stage template with its placeholders included; kustomize's own
    transformer configurations (apiVersion builtin) are not Kubernetes objects."""
    docs = [
        doc
        for path in K8S.rglob("*.yaml")
        if path.name != "kustomization.yaml"
        for doc in _docs(path)
        if doc.get("apiVersion") != "builtin"
    ]
    errors = _validation_errors(docs)
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("stage", DEPLOYED_STAGES)
def test_stage_values_follow_the_stage_table(stage: str) -> None:
    spec = STAGES[stage]
    values = stage_values(stage)
    assert set(values) == STAGE_VALUES
    assert values["name"] == stage and values["image"] == f"nlfpipe/{stage}:dev"
    assert values["port"] == str(spec.port) and values["service"] == spec.service_name
    components = stage_components(stage)
    assert components[0] == "stage"
    assert ("learned-stage" in components) == spec.learned


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


def test_every_workload_is_hardened(built_overlays: dict) -> None:
    for overlay, docs in built_overlays.items():
        for doc in (d for d in docs if d["kind"] in WORKLOAD_KINDS):
            where = f"{overlay}: {doc['kind']}/{doc['metadata']['name']}"
            pod = _pod_spec(doc)
            assert pod["securityContext"]["runAsNonRoot"] is True, where
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
            for container in pod["containers"]:
                _check_container_hardening(container, where)


@pytest.mark.parametrize("stage", DEPLOYED_STAGES)
def test_stage_deployment_and_service(base_docs: list[dict], stage: str) -> None:
    spec = STAGES[stage]
    values = stage_values(stage)
    docs = by_kind_name(base_docs)
    deployment, service = docs[("Deployment", stage)], docs[("Service", stage)]
    pod = _pod_spec(deployment)
    (container,) = pod["containers"]
    assert container["name"] == stage and container["image"] == f"nlfpipe/{stage}:dev"
    assert container["ports"] == [{"name": "grpc", "containerPort": spec.port}]
    assert container["env"][0] == {"name": "NLFPIPE_PORT", "value": str(spec.port)}
    # components/gpu switches the device by position: env[1] must stay NLFPIPE_DEVICE.
    device = "auto" if spec.learned else "cpu"
    assert container["env"][1] == {"name": "NLFPIPE_DEVICE", "value": device}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": spec.port, "service": spec.service_name}
    startup = container["startupProbe"]
    allowed = startup["periodSeconds"] * startup["failureThreshold"]
    assert allowed == (900 if spec.learned else 300), "startup probe long enough to load models"
    assert container["resources"] == {
        "requests": {"cpu": values["cpu"], "memory": values["memory"]},
        "limits": {"cpu": values["cpu-limit"], "memory": values["memory-limit"]},
    }
    assert pod["terminationGracePeriodSeconds"] > GRACE_SECONDS
    assert pod["automountServiceAccountToken"] is False
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True and "/tmp" in mounts
    # components/models-from-store replaces the model cache by position: index 1.
    assert container["volumeMounts"][1]["name"] == pod["volumes"][1]["name"] == "models"
    assert pod["volumes"][1]["persistentVolumeClaim"]["claimName"] == "nlfpipe-models"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tmp"]["emptyDir"]["sizeLimit"] == values["tmp-size"]
    labels = deployment["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "stage"
    assert labels["app.kubernetes.io/name"] == stage
    assert (labels.get("nlfpipe.io/accelerator") == "gpu") == spec.learned
    assert service["metadata"]["labels"]["app.kubernetes.io/name"] == stage
    assert service["spec"]["ports"] == [
        {"name": "grpc", "port": spec.port, "targetPort": "grpc", "appProtocol": "grpc"}
    ]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == stage


def test_stage_values_and_placeholders_never_reach_the_cluster(built_overlays: dict) -> None:
    for overlay, docs in built_overlays.items():
        names = {(d["kind"], d["metadata"]["name"]) for d in docs}
        assert not names & {("ConfigMap", "stage"), ("ConfigMap", "release")}, overlay
        assert not {n for n in names if re.fullmatch(r"(stage|release)-\w+", n[1])}, overlay
        text = yaml.safe_dump_all(docs)
        assert "50050" not in text and "StageService" not in text and "/stage:" not in text


def test_config_map_has_every_stage_address(base_docs: list[dict]) -> None:
    config = by_kind_name(base_docs)[("ConfigMap", "nlfpipe-config")]["data"]
    for stage in DEPLOYED_STAGES:
        spec = STAGES[stage]
        assert config[spec.addr_env] == f"{stage}:{spec.port}"
    assert int(config["NLFPIPE_GRACE_SECONDS"]) == GRACE_SECONDS


def test_network_policies(base_docs: list[dict]) -> None:
    policies = {d["metadata"]["name"]: d["spec"] for d in base_docs if d["kind"] == "NetworkPolicy"}
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
    docs = by_kind_name(base_docs)
    worker = docs[("Deployment", "prefect-worker")]["spec"]["template"]["metadata"]["labels"]
    assert worker["nlfpipe.io/role"] == "orchestrator"
    for stage in DEPLOYED_STAGES:
        pod_labels = docs[("Deployment", stage)]["spec"]["template"]["metadata"]["labels"]
        assert pod_labels["app.kubernetes.io/component"] == "stage", f"{stage}: behind the policy"


def test_worker_pool_matches_prefect_yaml(base_docs: list[dict]) -> None:
    worker = by_kind_name(base_docs)[("Deployment", "prefect-worker")]
    command = _pod_spec(worker)["containers"][0]["command"]
    pool = command[command.index("--pool") + 1]
    assert command[command.index("--type") + 1] == "kubernetes"
    deployments = yaml.safe_load((K8S.parent / "prefect.yaml").read_text())["deployments"]
    pools = {d["work_pool"]["name"] for d in deployments}
    assert pool in pools, f"worker pool {pool!r} is not a work pool of prefect.yaml ({pools})"
    for deployment in (d for d in deployments if d["work_pool"]["name"] == pool):
        env = deployment["work_pool"].get("job_variables", {}).get("env", {})
        for stage in DEPLOYED_STAGES:
            spec = STAGES[stage]
            if spec.addr_env in env:
                assert env[spec.addr_env] == f"{stage}:{spec.port}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds_and_validates_strictly(built_overlays: dict, overlay: str) -> None:
    errors = _validation_errors(built_overlays[overlay])
    assert not errors, "\n".join(errors)
    namespaces = {d["metadata"].get("namespace") for d in built_overlays[overlay]}
    namespaces.discard(None)
    assert len(namespaces) == 1, f"{overlay}: everything in one namespace, got {namespaces}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_uses_one_orchestrator_image(built_overlays: dict, overlay: str) -> None:
    docs = by_kind_name(built_overlays[overlay])
    worker_image = _pod_spec(docs[("Deployment", "prefect-worker")])["containers"][0]["image"]
    deploy = _pod_spec(docs[("Job", "prefect-deploy")])["containers"][0]
    env = {e["name"]: e.get("value") for e in deploy["env"]}
    assert env["NLFPIPE_ORCHESTRATOR_IMAGE"] == worker_image == deploy["image"]


def test_prod_takes_every_nlfpipe_image_from_its_registry_and_tag(built_overlays: dict) -> None:
    spec = yaml.safe_load((K8S / "overlays" / "prod" / "kustomization.yaml").read_text())
    (release,) = [g for g in spec["configMapGenerator"] if g["name"] == "release"]
    values = dict(literal.split("=", 1) for literal in release["literals"])
    images = {
        (d["kind"], d["metadata"]["name"]): _pod_spec(d)["containers"][0]["image"]
        for d in built_overlays["prod"]
        if d["kind"] in WORKLOAD_KINDS
    }
    for (kind, name), image in images.items():
        if kind == "StatefulSet":
            assert not image.startswith(values["registry"]), f"{name} keeps its public image"
        else:
            repository, tag = image.rsplit(":", 1)
            assert repository.startswith(values["registry"] + "/") and tag == values["tag"], image
    for stage in DEPLOYED_STAGES:
        assert images[("Deployment", stage)] == f"{values['registry']}/{stage}:{values['tag']}"


def test_release_images_keep_a_registry_port(tmp_path: Path) -> None:
    def release(spec: dict) -> None:
        spec["configMapGenerator"][0]["literals"] = ["registry=host.local:5000/ml", "tag=1.2.3"]

    built = by_kind_name(kustomize_variant(tmp_path, "prod", edit=release))
    pose = _pod_spec(built[("Deployment", "pose")])["containers"][0]["image"]
    assert pose == "host.local:5000/ml/pose:1.2.3"


def test_prod_gives_learned_stages_a_gpu_and_dev_does_not(built_overlays: dict) -> None:
    for overlay, expect_gpu in (("prod", True), ("dev", False)):
        docs = by_kind_name(built_overlays[overlay])
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


def test_render_gpu_variant_renders_with_the_nvidia_driver(tmp_path: Path) -> None:
    docs = kustomize_variant(tmp_path, "prod", components_before=("render-gpu",))
    assert not _validation_errors(docs)
    built = by_kind_name(docs)
    pod = _pod_spec(built[("Deployment", "render")])
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu" and pod["nodeSelector"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["NLFPIPE_DEVICE"] == "cuda"
    assert "graphics" in env["NVIDIA_DRIVER_CAPABILITIES"].split(",")
    assert container["image"].endswith("/render:0.1.0"), "the same image as the CPU variant"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_models_from_store_gives_every_stage_a_writable_cache(tmp_path: Path, overlay: str) -> None:
    docs = kustomize_variant(tmp_path, overlay, components_after=("models-from-store",))
    assert not _validation_errors(docs)
    built = by_kind_name(docs)
    assert built[("ConfigMap", "nlfpipe-config")]["data"]["NLFPIPE_MODEL_SOURCE"] == "store"
    assert ("PersistentVolumeClaim", "nlfpipe-models") not in built, "no shared volume needed"
    for stage in DEPLOYED_STAGES:
        pod = _pod_spec(built[("Deployment", stage)])
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["models"] == {"name": "models", "emptyDir": {"sizeLimit": "20Gi"}}
        mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
        assert mounts["/models"] == {"name": "models", "mountPath": "/models"}, "writable"
    fetch = _pod_spec(built[("Job", "models-fetch")])
    (container,) = fetch["containers"]
    assert container["command"] == ["nlfpipe", "models", "fetch", "--all", "--to-store"]
    assert {next(iter(r.values()))["name"] for r in container["envFrom"]} == {
        "nlfpipe-config",
        "nlfpipe-s3",
    }
    assert {v["name"]: v for v in fetch["volumes"]}["models"]["emptyDir"]
    policy = built[("NetworkPolicy", "minio-from-models-fetch")]["spec"]
    assert policy["ingress"][0]["from"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "models-fetch"}}}
    ]
