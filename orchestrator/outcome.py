"""What a stage call hands to the next one: references and a summary, never data."""

from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from pydantic import BaseModel, Field

from nlfpipe.common.v1 import common_pb2


class ArtifactRefModel(BaseModel):
    """An object in the artifact store (mirrors `nlfpipe.common.v1.ArtifactRef`)."""

    uri: str
    sha256: str = ""
    size_bytes: int = 0
    media_type: str = ""

    def to_proto(self) -> common_pb2.ArtifactRef:
        return common_pb2.ArtifactRef(**self.model_dump())

    @classmethod
    def from_proto(cls, ref: common_pb2.ArtifactRef) -> "ArtifactRefModel":
        return cls(
            uri=ref.uri, sha256=ref.sha256, size_bytes=ref.size_bytes, media_type=ref.media_type
        )


class StageOutcome(BaseModel):
    """The result of one stage call: output references, counts, timings and the cache verdict."""

    stage: str
    outputs: dict[str, ArtifactRefModel] = Field(default_factory=dict)
    values: dict[str, Any] = Field(default_factory=dict)
    cache_hit: bool = False
    cache_key: str = ""
    manifest_uri: str = ""
    compute_seconds: float = 0.0
    algorithm_version: str = ""
    counts: dict[str, float] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)
    wall_seconds: float = 0.0
    attempts: int = 1

    def ref(self, name: str) -> common_pb2.ArtifactRef:
        """The proto reference of output `name` (KeyError lists the outputs there are)."""
        try:
            return self.outputs[name].to_proto()
        except KeyError:
            raise KeyError(
                f"stage {self.stage} has no output {name!r}; it has {sorted(self.outputs)}"
            ) from None


def outcome_from_result(stage: str, result: Message, wall_seconds: float) -> StageOutcome:
    """Splits a stage's RunResult into artifact references, its summary and other values."""
    outcome = StageOutcome(stage=stage, wall_seconds=wall_seconds)
    as_dict = MessageToDict(
        result,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
    )
    for field, value in result.ListFields():
        if isinstance(value, common_pb2.ArtifactRef):
            outcome.outputs[field.name] = ArtifactRefModel.from_proto(value)
        elif isinstance(value, common_pb2.StageSummary):
            outcome.cache_hit = value.cache_hit
            outcome.cache_key = value.cache_key
            outcome.manifest_uri = value.manifest.uri
            outcome.compute_seconds = value.compute_seconds
            outcome.algorithm_version = value.algorithm_version
            outcome.counts = dict(value.counts)
            outcome.timings = dict(value.timings)
        elif field.message_type is not None and field.message_type.name == "ArtifactRef":
            for i, ref in enumerate(value):
                outcome.outputs[f"{field.name}_{i}"] = ArtifactRefModel.from_proto(ref)
        elif _is_artifact_map(field):
            for key, ref in sorted(value.items()):
                outcome.outputs[f"{field.name}_{key}"] = ArtifactRefModel.from_proto(ref)
        else:
            outcome.values[field.name] = as_dict.get(field.name)
    return outcome


def _is_artifact_map(field) -> bool:
    """A `map<string, ArtifactRef>` field (e.g. render's exports by file name)."""
    entry = field.message_type
    if entry is None or not entry.GetOptions().map_entry:
        return False
    value = entry.fields_by_name["value"].message_type
    return value is not None and value.name == "ArtifactRef"
