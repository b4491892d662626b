"""Nothing was lost when the deployment moved to templates (issue 14): the rendered Kubernetes
overlays and Compose configs of today keep, field for field, every value the per-stage files had
(tests/data/deploy_before/, rendered from them), except the changes listed here; the new stages
are there too."""

import json
from pathlib import Path

import pytest
import yaml

from services.common.stages import STAGES
from tests.support.deploy import K8S, by_kind_name, compose_config, kustomize, leaves

BEFORE = Path(__file__).parent / "data" / "deploy_before"
NEW_STAGES = ("slam", "interpolation", "render")
# The only fields whose value changed: every image is built from the one template now.
COMPOSE_CHANGES = {"dockerfile": "deploy/Dockerfile"}


def _lost_or_changed(before: dict, after: dict) -> list[str]:
    now = dict(leaves(after))
    problems = []
    for path, value in leaves(before):
        if path not in now:
            problems.append(f"lost {'.'.join(map(str, path))} = {value!r}")
        elif now[path] != value and COMPOSE_CHANGES.get(path[-1]) != now[path]:
            problems.append(f"{'.'.join(map(str, path))}: {value!r} -> {now[path]!r}")
    return problems


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_kubernetes_objects_keep_every_field(overlay: str) -> None:
    before = by_kind_name(yaml.safe_load_all((BEFORE / f"k8s-{overlay}.yaml").read_text()))
    after = by_kind_name(kustomize(K8S / "overlays" / overlay))
    problems = []
    for key, doc in before.items():
        if key not in after:
            problems.append(f"{key} is gone")
            continue
        problems += [f"{key}: {p}" for p in _lost_or_changed(doc, after[key])]
    assert not problems, "\n".join(problems)
    for stage in NEW_STAGES:
        assert {("Deployment", stage), ("Service", stage)} <= set(after) - set(before)
    added = {k for k in after if k not in before}
    assert added == {(kind, s) for s in NEW_STAGES for kind in ("Deployment", "Service")}


@pytest.mark.parametrize(
    ("snapshot", "files"),
    [
        ("compose", ("docker-compose.yml",)),
        ("compose-cpu", ("docker-compose.yml", "deploy/compose/cpu.yml")),
    ],
)
def test_compose_config_keeps_every_field(snapshot: str, files: tuple[str, ...]) -> None:
    before = json.loads((BEFORE / f"{snapshot}.json").read_text())
    after = compose_config(*files)
    problems = _lost_or_changed(before, after)
    assert not problems, "\n".join(problems)
    changed = [
        name
        for name, service in before["services"].items()
        if "build" in service
        and after["services"][name]["build"]["dockerfile"] != (service["build"]["dockerfile"])
    ]
    assert changed, "the per-stage Dockerfiles are gone"
    for stage in NEW_STAGES:
        assert stage in after["services"] and stage not in before["services"]
    assert set(STAGES) <= set(after["services"])
