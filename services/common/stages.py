"""The table of stages: one token per stage, used for packages, protos, images and addresses."""

from dataclasses import dataclass


@dataclass(frozen=True)
class StageSpec:
    """Names and defaults of one stage's service."""

    stage: str
    port: int
    service_name: str
    addr_env: str
    learned: bool

    @property
    def default_address(self) -> str:
        return f"127.0.0.1:{self.port}"


def _spec(stage: str, port: int, service: str, learned: bool) -> StageSpec:
    return StageSpec(stage, port, f"nlfpipe.{stage}.v1.{service}", f"{stage.upper()}_ADDR", learned)


STAGES: dict[str, StageSpec] = {
    s.stage: s
    for s in (
        _spec("ingest", 50051, "IngestService", learned=False),
        _spec("tracking", 50052, "TrackingService", learned=True),
        _spec("semseg", 50053, "SemsegService", learned=True),
        _spec("slam", 50054, "SlamService", learned=True),
        _spec("pose", 50055, "PoseService", learned=True),
        _spec("fitting", 50056, "FittingService", learned=False),
        _spec("interpolation", 50057, "InterpolationService", learned=True),
        _spec("render", 50058, "RenderService", learned=False),
    )
}


def stage_spec(stage: str) -> StageSpec:
    """Looks up a stage by token, with an error that lists the valid ones."""
    try:
        return STAGES[stage]
    except KeyError:
        raise ValueError(f"unknown stage {stage!r}; expected one of: {', '.join(STAGES)}") from None
