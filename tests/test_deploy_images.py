"""Container images: hadolint, the conventions of the one image template (deploy/Dockerfile) as
each service's build resolves it, slam's extension build, and hashed requirements that match
their .in.

No Docker engine is needed: the Dockerfiles are linted and read the way BuildKit resolves their
stages for given build arguments, and the requirement files are parsed.
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
from tests.support.deploy import (
    DEPLOY,
    ROOT,
    TEMPLATE,
    build_stages,
    compiled_python,
    copied_from,
    instructions,
    resolve,
)

HADOLINT = Path(sys.executable).parent / "hadolint"
DOCKERFILES = sorted(DEPLOY.rglob("Dockerfile"))
REQUIREMENT_DIRS = sorted(p.parent for p in DEPLOY.glob("*/requirements.in"))
SERVICES = [p.name for p in REQUIREMENT_DIRS if p.name != "codegen"]
CUDA_RUNTIME = re.compile(
    r"^nvidia/cuda:(\d+\.\d+\.\d+)-cudnn-runtime-ubuntu24\.04(@sha256:[0-9a-f]{64})?$"
)
CUDA_DEVEL = re.compile(
    r"^nvidia/cuda:(\d+\.\d+\.\d+)-cudnn-devel-ubuntu24\.04(@sha256:[0-9a-f]{64})?$"
)
SLIM = "python:3.11-slim-bookworm"
PYTHON_OF_BASE = {"slim": "3.11", "cuda": "3.12"}


def _base(stage: str) -> str:
    return "cuda" if STAGES[stage].learned else "slim"


def _stage_chain(stage: str) -> list:
    return resolve(TEMPLATE, {"STAGE": stage, "BASE": _base(stage)}, target="stage")


def _lines(chain: list) -> list[str]:
    return [line for stage in chain for line in stage.lines]


def _env(lines: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in lines:
        if line.startswith("ENV "):
            env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    return env


def test_every_service_builds_from_the_template_and_only_slam_has_its_own() -> None:
    assert {p.relative_to(DEPLOY).as_posix() for p in DOCKERFILES} == {
        "Dockerfile",
        "slam/Dockerfile",
    }
    assert {"ingest", "tracking", "semseg", "pose", "fitting", "orchestrator"} <= set(SERVICES)
    assert set(STAGES) <= set(SERVICES), "every stage has deploy/<stage>/requirements.in"


def test_hadolint_is_clean() -> None:
    result = subprocess.run(
        [str(HADOLINT), "--no-color", *map(str, DOCKERFILES)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_ignored_rule_is_justified(dockerfile: Path) -> None:
    lines = dockerfile.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            above = lines[i - 1] if i else ""
            assert above.startswith("#") and "hadolint" not in above, (
                f"{dockerfile}:{i + 1}: say why the rule is ignored in a comment just above"
            )


def test_template_names_no_stage_and_no_port() -> None:
    """What differs between stages comes from the build args and the stage table only."""
    text = "\n".join(instructions(TEMPLATE))
    for spec in STAGES.values():
        assert not re.search(rf"\b{spec.stage}\b", text), f"the template names {spec.stage}"
        assert str(spec.port) not in text and spec.service_name not in text


def test_template_bases_are_pinned() -> None:
    _, stages, _ = build_stages(TEMPLATE)
    assert stages["base-slim"].base == SLIM
    assert CUDA_RUNTIME.match(stages["base-cuda"].base), stages["base-cuda"].base
    for stage in stages.values():
        assert "latest" not in stage.base


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_image_as_built(stage: str) -> None:
    chain = _stage_chain(stage)
    names = [s.name for s in chain]
    base = _base(stage)
    assert names[:3] == [SLIM if base == "slim" else chain[0].name, f"base-{base}", "base"]
    if base == "cuda":
        assert CUDA_RUNTIME.match(names[0])
    assert names[-1] == "stage" and f"health-{base}" in names
    assert "builder" not in names, "the build tools stay out of the runtime image"

    lines = _lines(chain)
    env = _env(lines)
    assert env["NLFPIPE_STAGE"] == stage
    assert env["PYTHONUNBUFFERED"] == "1" and env["NLFPIPE_MODEL_CACHE"] == "/models"
    for name in (
        "HOME",
        "TMPDIR",
        "XDG_CACHE_HOME",
        "TORCH_HOME",
        "NUMBA_CACHE_DIR",
        "MPLCONFIGDIR",
    ):
        assert env[name].startswith("/tmp"), f"{name} writable on a read-only root fs"
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] == "10001:10001", "runs as the fixed non-root uid"
    assert "COPY --from=stage-builder /opt/venv /opt/venv" in lines
    assert copied_from(chain) == {"stage-builder"}
    (healthcheck,) = [line for line in lines if line.startswith("HEALTHCHECK ")]
    assert 'nlfpipe health --stage \\"$NLFPIPE_STAGE\\"' in healthcheck
    start = re.search(r"--start-period=(\d+)s", healthcheck).group(1)
    assert int(start) == (600 if STAGES[stage].learned else 60), "time to load the models"
    (entrypoint,) = [line for line in lines if line.startswith("ENTRYPOINT ")]
    assert 'exec nlfpipe serve \\"$NLFPIPE_STAGE\\" \\"$@\\"' in entrypoint
    assert not any("/models/" in line or "models fetch" in line for line in lines), (
        "models are a volume, never baked into the image"
    )
    apt = next(line for line in lines if "xargs apt-get install" in line)
    assert f"source=deploy/{stage}," in apt, "the stage's own Debian packages (apt.txt)"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_builder_installs_the_stage_requirements_and_generates_code(stage: str) -> None:
    chain = resolve(TEMPLATE, {"STAGE": stage, "BASE": _base(stage)}, target="stage-builder")
    builder = "\n".join(_lines(chain))
    assert f"--require-hashes -r deploy/{stage}/requirements.txt" in builder
    assert "--require-hashes -r deploy/codegen/requirements.txt" in builder
    assert "scripts/gen_protos.py" in builder, "proto code generated in the build"
    assert "COPY orchestrator" not in builder, "stage images carry no orchestrator code"
    assert (DEPLOY / stage / "requirements.txt").is_file()
    assert compiled_python(DEPLOY / stage / "requirements.txt") == PYTHON_OF_BASE[_base(stage)], (
        f"deploy/{stage}/requirements.txt was resolved for another Python than its image's: "
        f"deploy/compile-requirements.sh {stage}"
    )


def test_orchestrator_image_as_built() -> None:
    chain = resolve(TEMPLATE, {"STAGE": "orchestrator"}, target="orchestrator")
    assert [s.name for s in chain][:2] == [SLIM, "base-slim"]
    lines = _lines(chain)
    assert copied_from(chain) == {"orchestrator-builder"}
    env = _env(lines)
    assert env["NLFPIPE_HOME"] == "/opt/nlfpipe" and env["PREFECT_HOME"].startswith("/tmp")
    assert "ENTRYPOINT" not in "\n".join(lines), "flow-run pods give their own command"
    assert any(line.startswith('CMD ["prefect", "worker"') for line in lines)
    builder = _lines(resolve(TEMPLATE, {"STAGE": "orchestrator"}, target="orchestrator-builder"))
    assert (
        "COPY orchestrator orchestrator" in builder and "COPY prefect.yaml prefect.yaml" in builder
    )
    assert "--require-hashes -r deploy/orchestrator/requirements.txt" in "\n".join(builder)


def test_slam_extensions_are_built_on_the_devel_image_of_the_runtime_cuda() -> None:
    dockerfile = DEPLOY / "slam" / "Dockerfile"
    global_args, stages, last = build_stages(dockerfile)
    devel = CUDA_DEVEL.match(stages["build"].base)
    runtime = CUDA_RUNTIME.match(build_stages(TEMPLATE)[1]["base-cuda"].base)
    assert devel and runtime and devel.group(1) == runtime.group(1), "same CUDA as the runtime"
    assert stages[last].base == "scratch", "only the built files leave the devel image"
    assert stages[last].lines == ("COPY --from=build /out/ /",)
    build = "\n".join(stages["build"].lines)
    commit = re.search(r"ARG DROID_SLAM_COMMIT=([0-9a-f]+)", build)
    assert commit and len(commit.group(1)) == 40, "DROID-SLAM at a pinned commit"
    assert "--require-hashes -r deploy/slam/requirements.txt" in build, "the image's own torch"
    assert "TORCH_CUDA_ARCH_LIST=" in build and "FORCE_CUDA=1" in build
    for extension in ("thirdparty/lietorch", "thirdparty/pytorch_scatter"):
        assert extension in build
    assert "--wheel-dir /out/wheels" in build and "droid_slam.pth" in build
    # The template installs what the extensions context holds: wheels/ and venv/.
    builder = "\n".join(
        _lines(resolve(TEMPLATE, {"STAGE": "slam", "BASE": "cuda"}, target="stage-builder"))
    )
    assert "COPY --from=extensions / /opt/extensions/" in builder
    assert "/opt/extensions/wheels/*.whl" in builder and "/opt/extensions/venv/." in builder
    _, template_stages, _ = build_stages(TEMPLATE)
    assert (
        template_stages["extensions"].base == "scratch" and not template_stages["extensions"].lines
    )


def test_context_allowlists_keep_secrets_and_venvs_out() -> None:
    for dockerfile in DOCKERFILES:
        ignore = Path(f"{dockerfile}.dockerignore").read_text().splitlines()
        assert ignore[1] == "*", f"{dockerfile}: the build context is an allowlist"
        assert not any(".env" in line or ".venv" in line for line in ignore if line.startswith("!"))
    template = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert {"!deploy/*/requirements.txt", "!deploy/*/apt.txt"} <= set(template)
    assert (DEPLOY / "slam" / "Dockerfile.dockerignore").read_text().splitlines()[2:] == [
        "!deploy/slam/requirements.txt"
    ]


def test_apt_lists_are_package_names() -> None:
    lists = sorted(DEPLOY.glob("*/apt.txt"))
    assert [p.parent.name for p in lists] == ["render"]
    for path in lists:
        names = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
        for name in filter(None, names):
            assert re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", name), f"{path}: {name!r}"
    render = set((DEPLOY / "render" / "apt.txt").read_text().split())
    assert {"libegl1", "libegl-mesa0", "libgl1-mesa-dri"} <= render, "headless EGL (Mesa)"


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
    opencv = {"opencv-python", "opencv-python-headless"} & set(pins)
    assert len(opencv) <= 1, "both OpenCV wheels would write the same cv2/ folder"


def test_slam_keeps_what_droid_needs_and_nothing_for_evaluation() -> None:
    pins = _read_txt(DEPLOY / "slam" / "requirements.txt")
    needed = {"torch", "pycolmap", "transformers", "opencv-python", "matplotlib", "bodycompress"}
    assert needed <= set(pins)
    assert "setuptools" in pins, "the extension build uses the image's own setuptools"
    assert pins["pycolmap"][0] == Version("4.2.1") and "evo" not in pins


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
