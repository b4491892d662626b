"""Container images: hadolint, Dockerfile conventions, and hashed requirements that match their .in.

No Docker engine is needed: the Dockerfiles are linted and read, the requirement files parsed.
"""

import re
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest
from grpc_tools import protoc
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from services.common.stages import STAGES

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
HADOLINT = Path(sys.executable).parent / "hadolint"
DOCKERFILES = sorted(DEPLOY.glob("*/Dockerfile"))
SERVICES = [p.parent.name for p in DOCKERFILES]
STAGE_SERVICES = [s for s in SERVICES if s in STAGES]
REQUIREMENT_DIRS = sorted(p.parent for p in DEPLOY.glob("*/requirements.in"))
CUDA_BASE = re.compile(
    r"^FROM nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+"
    r"(@sha256:[0-9a-f]{64})?( AS \w+)?$"
)
SLIM_BASE = "FROM python:3.11-slim-bookworm AS base"


def _instructions(dockerfile: Path) -> list[str]:
    """Instructions with continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _stage_blocks(dockerfile: Path) -> dict[str, list[str]]:
    blocks: dict[str, list[str]] = {}
    current = ""
    for line in _instructions(dockerfile):
        if line.startswith("FROM "):
            current = line.split()[-1]
        blocks.setdefault(current, []).append(line)
    return blocks


def _env(lines: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in lines:
        if line.startswith("ENV "):
            env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    return env


def test_every_service_has_an_image() -> None:
    assert {"ingest", "tracking", "semseg", "pose", "fitting", "orchestrator"} <= set(SERVICES)


def test_hadolint_is_clean() -> None:
    result = subprocess.run(
        [str(HADOLINT), "--no-color", *map(str, DOCKERFILES)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=SERVICES)
def test_every_ignored_rule_is_justified(dockerfile: Path) -> None:
    lines = dockerfile.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            above = lines[i - 1] if i else ""
            assert above.startswith("#") and "hadolint" not in above, (
                f"{dockerfile}:{i + 1}: say why the rule is ignored in a comment just above"
            )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=SERVICES)
def test_image_conventions(dockerfile: Path) -> None:
    service = dockerfile.parent.name
    blocks = _stage_blocks(dockerfile)
    assert {"base", "builder", "runtime"} <= set(blocks), "base, builder and runtime stages"
    base = blocks["base"][0]
    if service in STAGES and STAGES[service].learned:
        assert CUDA_BASE.match(base), f"learned stage on a pinned CUDA runtime base, got {base!r}"
    else:
        assert base == SLIM_BASE
    text = "\n".join(_instructions(dockerfile))
    assert "latest" not in base

    builder = "\n".join(blocks["builder"])
    assert f"-r deploy/{service}/requirements.txt" in builder
    assert builder.count("--require-hashes") >= 2, "service and build requirements hash-checked"
    assert "scripts/gen_protos.py" in builder, "proto code generated in the build"

    runtime = blocks["runtime"]
    users = [line.split()[1] for line in runtime if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "runs as a non-root user"
    env = _env(runtime)
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert env.get("NLFPIPE_MODEL_CACHE") == "/models"
    assert env.get("NUMBA_CACHE_DIR", "").startswith("/tmp/")
    for name in ("HOME", "TMPDIR", "XDG_CACHE_HOME", "TORCH_HOME"):
        assert env.get(name, "").startswith("/tmp"), f"{name} writable on a read-only root fs"
    assert "COPY --from=builder /opt/venv /opt/venv" in runtime
    assert "grpcio-tools" not in text.split("FROM base AS runtime")[-1]
    assert "models fetch" not in text and "/models/" not in "\n".join(runtime), (
        "models are a volume, never baked into the image"
    )
    healthchecks = [line for line in runtime if line.startswith("HEALTHCHECK ")]
    assert len(healthchecks) == 1


@pytest.mark.parametrize("service", STAGE_SERVICES)
def test_stage_image_serves_its_port_and_health_name(service: str) -> None:
    spec = STAGES[service]
    runtime = _stage_blocks(DEPLOY / service / "Dockerfile")["runtime"]
    assert _env(runtime).get("NLFPIPE_PORT") == str(spec.port)
    assert f"EXPOSE {spec.port}" in runtime
    (healthcheck,) = [line for line in runtime if line.startswith("HEALTHCHECK ")]
    assert "nlfpipe health 127.0.0.1:${NLFPIPE_PORT}" in healthcheck
    assert f"--service {spec.service_name}" in healthcheck
    assert f'ENTRYPOINT ["nlfpipe", "serve", "{service}"]' in runtime


def test_context_allowlists_keep_secrets_and_venvs_out() -> None:
    for dockerfile in DOCKERFILES:
        ignore = dockerfile.with_name("Dockerfile.dockerignore").read_text().splitlines()
        assert ignore[1] == "*", f"{dockerfile}: the build context is an allowlist"
        assert f"!deploy/{dockerfile.parent.name}/requirements.txt" in ignore


def _read_in(path: Path) -> list[Requirement]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line and not line.startswith("-")]


def _read_txt(path: Path) -> dict[str, tuple[Version, int]]:
    """Pinned name -> (version, number of hashes) of a pip-compile --generate-hashes output."""
    pins: dict[str, tuple[Version, int]] = {}
    text = re.sub(r"\\\n", " ", path.read_text())
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^([A-Za-z0-9._-]+)==(\S+)((?:\s+--hash=sha256:[0-9a-f]{64})*)\s*$", line)
        assert match, f"{path}: not an exact, hashed pin: {line[:120]!r}"
        name, version, hashes = match.groups()
        pins[canonicalize_name(name)] = (Version(version), hashes.count("--hash="))
    return pins


@pytest.mark.parametrize("folder", REQUIREMENT_DIRS, ids=[p.name for p in REQUIREMENT_DIRS])
def test_requirements_txt_is_compiled_from_in(folder: Path) -> None:
    pins = _read_txt(folder / "requirements.txt")
    assert pins, "empty requirements.txt"
    for name, (_, hashes) in pins.items():
        assert hashes >= 1, f"{name} has no hash (pip --require-hashes needs one for every pin)"
    for req in _read_in(folder / "requirements.in"):
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} of requirements.in is missing from requirements.txt: recompile"
        version = pins[name][0]
        assert req.specifier.contains(version, prereleases=True), (
            f"{name}=={version} does not satisfy {req} of requirements.in: recompile "
            f"(deploy/compile-requirements.sh {folder.name})"
        )


@pytest.fixture(scope="module")
def generated_code_needs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Version]:
    """The grpcio and protobuf versions that code generated by this grpcio-tools requires."""
    out = tmp_path_factory.mktemp("gen")
    proto_root = ROOT / "protos"
    args = [
        "protoc",
        f"-I{proto_root}",
        f"-I{files('grpc_tools') / '_proto'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        "nlfpipe/common/v1/common.proto",
    ]
    assert protoc.main(args) == 0
    grpc_code = (out / "nlfpipe/common/v1/common_pb2_grpc.py").read_text()
    pb2_code = (out / "nlfpipe/common/v1/common_pb2.py").read_text()
    grpc_version = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", grpc_code).group(1)
    pb = re.search(r"Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),", pb2_code).groups()
    return {"grpcio": Version(grpc_version), "protobuf": Version(".".join(pb))}


def test_images_generate_code_with_the_checked_grpcio_tools() -> None:
    import importlib.metadata

    pins = _read_txt(DEPLOY / "codegen" / "requirements.txt")
    assert pins["grpcio-tools"][0] == Version(importlib.metadata.version("grpcio-tools")), (
        "deploy/codegen pins the grpcio-tools whose generated code these tests inspect"
    )


@pytest.mark.parametrize("service", SERVICES)
def test_runtime_pins_satisfy_generated_code(service: str, generated_code_needs: dict) -> None:
    pins = _read_txt(DEPLOY / service / "requirements.txt")
    for package, minimum in generated_code_needs.items():
        assert package in pins, f"{service} image lacks {package}"
        assert pins[package][0] >= minimum, (
            f"{service}: {package}=={pins[package][0]} is older than the {minimum} that the "
            "generated code requires"
        )
    for package in ("grpcio-health-checking", "grpcio-reflection"):
        assert package in pins, f"{service} image lacks {package} (used by services.common.server)"
