"""Offline readers of the deployment files for tests/test_deploy_*.py (no Docker engine, no
cluster): Compose's normalized config, kustomize builds, the stages' Kubernetes values, and the
image template read the way BuildKit resolves its stages for given build arguments."""

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = ROOT / "k8s"
TEMPLATE = DEPLOY / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
COMPOSE = Path(sys.executable).parent / "docker-compose"
KUBECTL = shutil.which("kubectl")


def compose(
    *args: str, files: tuple[str, ...] = ("docker-compose.yml",), env_file: Path = ENV_EXAMPLE
) -> subprocess.CompletedProcess:
    """Runs docker-compose (the Python-packaged Compose v2, no engine) on the given files."""
    command = [str(COMPOSE), "--env-file", str(env_file)]
    for name in files:
        command += ["-f", str(ROOT / name)]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT)},
    )


@cache
def compose_config(*files: str) -> dict:
    """The normalized configuration, every profile included; the repository root as <ROOT>."""
    result = compose(
        "--profile", "tools", "config", "--format", "json", files=files or ("docker-compose.yml",)
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.replace(str(ROOT), "<ROOT>"))


@cache
def _kustomize_text(path: str) -> str:
    assert KUBECTL, "kubectl (with its built-in kustomize) is needed"
    result = subprocess.run(
        [KUBECTL, "kustomize", path], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"kubectl kustomize {path}:\n{result.stderr}"
    return result.stdout


def kustomize(path: Path) -> list[dict]:
    """`kubectl kustomize` of a kustomization folder, as documents (fresh copies)."""
    return [d for d in yaml.safe_load_all(_kustomize_text(str(path))) if d]


def kustomize_variant(
    tmp: Path,
    overlay: str,
    components_before: tuple[str, ...] = (),
    components_after: tuple[str, ...] = (),
    edit: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Builds a copy of an overlay with more components, as a user would list them in it, and
    with `edit` applied to its kustomization."""
    spec = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
    up = os.path.relpath(K8S, tmp)
    resources = []
    for entry in spec["resources"]:
        if entry.startswith("../../"):
            resources.append(f"{up}/{entry[6:]}")
        else:  # a file of the overlay's own: kustomize reads files only below the root
            shutil.copy(K8S / "overlays" / overlay / entry, tmp / entry)
            resources.append(entry)
    spec["resources"] = resources
    own = [f"{up}/{c[6:]}" for c in spec.get("components", [])]
    spec["components"] = (
        [f"{up}/components/{c}" for c in components_before]
        + own
        + [f"{up}/components/{c}" for c in components_after]
    )
    if edit:
        edit(spec)
    (tmp / "kustomization.yaml").write_text(yaml.safe_dump(spec))
    return kustomize(tmp)


def by_kind_name(docs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def leaves(node: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """(path, value) of every scalar, empty map and empty list; list items by position."""
    if isinstance(node, dict):
        if not node:
            yield path, {}
        for key, value in node.items():
            yield from leaves(value, (*path, key))
    elif isinstance(node, list):
        if not node:
            yield path, []
        for i, value in enumerate(node):
            yield from leaves(value, (*path, i))
    else:
        yield path, node


def stage_values(stage: str) -> dict[str, str]:
    """The values a stage gives components/stage (k8s/base/stages/<stage>/kustomization.yaml)."""
    path = K8S / "base" / "stages" / stage / "kustomization.yaml"
    spec = yaml.safe_load(path.read_text())
    (generator,) = [g for g in spec["configMapGenerator"] if g["name"] == "stage"]
    return dict(literal.split("=", 1) for literal in generator["literals"])


def stage_components(stage: str) -> list[str]:
    path = K8S / "base" / "stages" / stage / "kustomization.yaml"
    return [Path(c).name for c in yaml.safe_load(path.read_text())["components"]]


# The image template, read as BuildKit resolves it.


@dataclass(frozen=True)
class BuildStage:
    name: str
    base: str  # FROM argument as written (may hold ${ARG})
    lines: tuple[str, ...]  # instructions after FROM, continuation lines joined, no comments


def instructions(dockerfile: Path) -> list[str]:
    """Instructions with continuation lines joined and comments dropped."""
    lines = [
        line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")
    ]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def build_stages(dockerfile: Path) -> tuple[dict[str, str], dict[str, BuildStage], str]:
    """(global ARG defaults, stages by name, name of the last stage)."""
    global_args: dict[str, str] = {}
    stages: dict[str, BuildStage] = {}
    current: tuple[str, str, list[str]] | None = None
    for i, line in enumerate(instructions(dockerfile)):
        if line.startswith("FROM "):
            if current:
                stages[current[0]] = BuildStage(current[0], current[1], tuple(current[2]))
            parts = line.split()
            name = parts[3] if len(parts) > 3 and parts[2].upper() == "AS" else f"stage-{i}"
            current = (name, parts[1], [])
        elif current is None and line.startswith("ARG "):
            key, _, default = line[4:].partition("=")
            global_args[key] = default.strip('"')
        elif current is not None:
            current[2].append(line)
    assert current, f"{dockerfile}: no FROM"
    stages[current[0]] = BuildStage(current[0], current[1], tuple(current[2]))
    return global_args, stages, current[0]


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), text)


def resolve(
    dockerfile: Path,
    build_args: dict[str, str],
    target: str | None = None,
    contexts: tuple[str, ...] = (),
) -> list[BuildStage]:
    """The chain of stages a build goes through, from its external base image to the target,
    with ${ARG} expanded in every line. Stages named in `contexts` (named build contexts) are
    replaced by the context, as BuildKit does."""
    global_args, stages, last = build_stages(dockerfile)
    args = {**global_args, **build_args}
    chain: list[BuildStage] = []
    name = target or last
    while name in stages and name not in contexts:
        stage = stages[name]
        chain.append(
            BuildStage(
                name, expand(stage.base, args), tuple(expand(line, args) for line in stage.lines)
            )
        )
        name = expand(stage.base, args)
    chain.append(BuildStage(name, name, ()))
    return chain[::-1]


def copied_from(chain: list[BuildStage]) -> set[str]:
    """Stages that the chain's COPY --from / RUN --mount lines read."""
    names = set()
    for stage in chain:
        for line in stage.lines:
            names |= set(re.findall(r"--from=([\w.-]+)", line))
    return names


def compiled_python(requirements_txt: Path) -> str:
    """The Python version pip-compile resolved a requirements.txt with (from its header)."""
    match = re.search(
        r"autogenerated by pip-compile with Python (\d+\.\d+)", requirements_txt.read_text()
    )
    assert match, f"{requirements_txt}: not a pip-compile output"
    return match.group(1)
