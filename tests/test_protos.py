"""The gRPC contracts: buf lint, and the shape every stage's contract shares (docs/architecture.md).

Stage protos are discovered from protos/nlfpipe/<stage>/v1/<stage>.proto and compiled here into a
descriptor set with source info, so the checks cover protos added later without editing this file.
"""

import os
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
BUF = ROOT / "node_modules" / ".bin" / "buf"
COMMON = "nlfpipe.common.v1"
FieldProto = descriptor_pb2.FieldDescriptorProto

STAGE_PROTOS = sorted(
    p for p in PROTO_ROOT.glob("nlfpipe/*/v1/*.proto") if p.parent.parent.name != "common"
)
STAGES = [p.parent.parent.name for p in STAGE_PROTOS]


@pytest.fixture(scope="module")
def descriptors(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """Every proto under protos/, compiled with protoc, by file name."""
    out = tmp_path_factory.mktemp("descriptors") / "all.pb"
    names = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{files('grpc_tools') / '_proto'}",
        "--include_source_info",
        f"--descriptor_set_out={out}",
        *names,
    ]
    assert protoc.main(args) == 0, "protoc failed on protos/ (run scripts/gen_protos.py to see why)"
    file_set = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return {f.name: f for f in file_set.file}


def test_stage_protos_are_discovered() -> None:
    assert {"slam", "interpolation", "render"} <= set(STAGES)


def test_buf_lint_passes() -> None:
    if not BUF.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{BUF} is missing: `make setup` installs it (npm @bufbuild/buf@1)")
        pytest.skip(f"{BUF} is missing: install it with `make setup` (npm @bufbuild/buf@1)")
    result = subprocess.run(
        [str(BUF), "lint"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "BUF_CACHE_DIR": str(ROOT / "node_modules" / ".buf-cache")},
    )
    assert result.returncode == 0, f"buf lint found problems:\n{result.stdout}{result.stderr}"


def test_buf_yaml_uses_standard_lint_and_file_breaking() -> None:
    import yaml

    config = yaml.safe_load((ROOT / "buf.yaml").read_text())
    assert config["version"] == "v2"
    assert config["modules"] == [{"path": "protos"}]
    assert config["lint"]["use"] == ["STANDARD"]
    assert config["breaking"]["use"] == ["FILE"]


def _message(fd: descriptor_pb2.FileDescriptorProto, name: str) -> descriptor_pb2.DescriptorProto:
    by_name = {m.name: m for m in fd.message_type}
    assert name in by_name, f"{fd.name} has no message {name}"
    return by_name[name]


def _field(message: descriptor_pb2.DescriptorProto, name: str) -> FieldProto:
    by_name = {f.name: f for f in message.field}
    assert name in by_name, f"message {message.name} has no field {name}"
    return by_name[name]


@pytest.mark.parametrize("proto", STAGE_PROTOS, ids=STAGES)
def test_stage_contract(proto: Path, descriptors: dict) -> None:
    stage = proto.parent.parent.name
    assert proto.name == f"{stage}.proto", (
        "one contract per stage: protos/nlfpipe/<stage>/v1/<stage>.proto"
    )
    fd = descriptors[str(proto.relative_to(PROTO_ROOT))]
    package = f"nlfpipe.{stage}.v1"
    assert fd.package == package
    assert "nlfpipe/common/v1/common.proto" in fd.dependency

    services = {s.name: s for s in fd.service}
    service_name = f"{stage.capitalize()}Service"
    assert service_name in services, f"{fd.name} must define service {service_name}"
    methods = {m.name: m for m in services[service_name].method}
    assert "Run" in methods, f"{service_name} must have rpc Run"
    run = methods["Run"]
    assert run.input_type == f".{package}.RunRequest"
    assert run.output_type == f".{package}.RunResponse"
    assert run.server_streaming and not run.client_streaming, "Run must be server-streaming"

    request = _message(fd, "RunRequest")
    force = _field(request, "force")
    assert force.type == FieldProto.TYPE_BOOL and force.label == FieldProto.LABEL_OPTIONAL
    assert not force.HasField("oneof_index"), "`bool force` is a plain field"

    response = _message(fd, "RunResponse")
    progress, result = _field(response, "progress"), _field(response, "result")
    assert progress.type_name == f".{COMMON}.Progress"
    assert result.type_name == f".{package}.RunResult"
    assert progress.HasField("oneof_index") and progress.oneof_index == result.oneof_index
    oneof = response.oneof_decl[progress.oneof_index]
    assert not oneof.name.startswith("_"), "progress/result must share a real oneof, not `optional`"
    assert len(response.field) == 2, "RunResponse carries only the progress/result oneof"

    summary = _field(_message(fd, "RunResult"), "summary")
    assert summary.type_name == f".{COMMON}.StageSummary"


def _comment_paths(fd: descriptor_pb2.FileDescriptorProto) -> set[tuple[int, ...]]:
    return {
        tuple(loc.path)
        for loc in fd.source_code_info.location
        if loc.leading_comments.strip() or loc.trailing_comments.strip()
    }


def _elements(fd: descriptor_pb2.FileDescriptorProto):
    """(path, description) of every service, rpc, message, field, oneof, enum and enum value."""
    fdp = descriptor_pb2.FileDescriptorProto
    dp = descriptor_pb2.DescriptorProto

    def enums(path: tuple[int, ...], enum_list, prefix: str):
        for i, enum in enumerate(enum_list):
            yield (*path, i), f"enum {prefix}{enum.name}"
            for j, value in enumerate(enum.value):
                yield (*path, i, 2, j), f"enum value {enum.name}.{value.name}"

    def messages(path: tuple[int, ...], message_list, prefix: str):
        for i, message in enumerate(message_list):
            here = (*path, i)
            if message.options.map_entry:
                continue
            yield here, f"message {prefix}{message.name}"
            for j, field in enumerate(message.field):
                yield (*here, dp.FIELD_FIELD_NUMBER, j), f"field {message.name}.{field.name}"
            for j, oneof in enumerate(message.oneof_decl):
                if not oneof.name.startswith("_"):  # synthetic oneofs of `optional` fields
                    yield (
                        (*here, dp.ONEOF_DECL_FIELD_NUMBER, j),
                        f"oneof {message.name}.{oneof.name}",
                    )
            yield from messages(
                (*here, dp.NESTED_TYPE_FIELD_NUMBER), message.nested_type, f"{message.name}."
            )
            yield from enums(
                (*here, dp.ENUM_TYPE_FIELD_NUMBER), message.enum_type, f"{message.name}."
            )

    for i, service in enumerate(fd.service):
        yield (fdp.SERVICE_FIELD_NUMBER, i), f"service {service.name}"
        for j, method in enumerate(service.method):
            yield (fdp.SERVICE_FIELD_NUMBER, i, 2, j), f"rpc {service.name}.{method.name}"
    yield from messages((fdp.MESSAGE_TYPE_FIELD_NUMBER,), fd.message_type, "")
    yield from enums((fdp.ENUM_TYPE_FIELD_NUMBER,), fd.enum_type, "")


def test_every_element_is_commented(descriptors: dict) -> None:
    missing = []
    for name, fd in descriptors.items():
        if not name.startswith("nlfpipe/"):
            continue
        commented = _comment_paths(fd)
        missing += [f"{name}: {what}" for path, what in _elements(fd) if path not in commented]
    assert not missing, "elements without a comment:\n" + "\n".join(missing)


def test_enums_start_with_unspecified(descriptors: dict) -> None:
    def all_enums(fd):
        yield from fd.enum_type
        stack = list(fd.message_type)
        while stack:
            message = stack.pop()
            yield from message.enum_type
            stack += message.nested_type

    for name, fd in descriptors.items():
        if name.startswith("nlfpipe/"):
            for enum in all_enums(fd):
                zero = enum.value[0]
                assert zero.number == 0 and zero.name.endswith("_UNSPECIFIED"), (
                    f"{name}: {enum.name}"
                )


def test_stage_table_matches_protos(descriptors: dict) -> None:
    stages = pytest.importorskip(
        "services.common.stages", reason="services.common.stages not there yet"
    )
    for stage in STAGES:
        assert stage in stages.STAGES, (
            f"protos/nlfpipe/{stage} has no entry in services.common.stages"
        )
        fd = descriptors[f"nlfpipe/{stage}/v1/{stage}.proto"]
        declared = {f"{fd.package}.{s.name}" for s in fd.service}
        assert stages.STAGES[stage].service_name in declared


def test_generated_code_imports_for_every_stage(tmp_path: Path) -> None:
    """scripts/gen_protos.py turns every proto into importable Python modules."""
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    generate = (
        "import pathlib, sys\n"
        "import scripts.gen_protos as gen\n"
        f"gen.OUT = pathlib.Path({str(tmp_path)!r})\n"
        "sys.exit(gen.main())\n"
    )
    subprocess.run([sys.executable, "-c", generate], cwd=ROOT, env=env, check=True, timeout=120)
    imports = "; ".join(f"import nlfpipe.{s}.v1.{s}_pb2_grpc" for s in STAGES)
    subprocess.run([sys.executable, "-c", imports], cwd=tmp_path, env=env, check=True, timeout=60)
