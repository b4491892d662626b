"""The run summary: stages with timings and cache hits, people found, links to the outputs."""

from collections.abc import Callable

from pydantic import BaseModel, Field

from orchestrator.outcome import StageOutcome

#: Counts that stages report for the number of people (first present wins).
_PEOPLE_COUNTS = ("tracks", "people", "persons")


class RunSummary(BaseModel):
    """What one video's run did and where its results are."""

    video: str
    stages: list[StageOutcome] = Field(default_factory=list)
    people_found: int = 0
    frames: int = 0
    fps_factor: int = 1
    wall_seconds: float = 0.0
    #: Part of the wall time spent paused, waiting for a person (subject selection in the UI).
    waiting_seconds: float = 0.0
    summary_uri: str = ""
    parameters: dict = Field(default_factory=dict)
    #: stage -> the models, device and precision its manifest records (see models_used)
    models: dict[str, dict] = Field(default_factory=dict)

    @property
    def compute_seconds(self) -> float:
        return sum(s.compute_seconds for s in self.stages)

    @property
    def stage_wall_seconds(self) -> float:
        return sum(s.wall_seconds for s in self.stages)

    @property
    def cache_hits(self) -> int:
        return sum(s.cache_hit for s in self.stages)

    def outputs(self) -> dict[str, str]:
        """`stage.output` -> URI of every artifact the run produced or reused."""
        return {
            f"{s.stage}.{name}": ref.uri for s in self.stages for name, ref in s.outputs.items()
        }


def models_used(stages: list[StageOutcome], read_json: Callable[[str], dict]) -> dict[str, dict]:
    """Stage -> the identity its manifest records (model files with sha256, device, precision);
    `read_json` reads a manifest by URI. A stage without models records none."""
    used: dict[str, dict] = {}
    for outcome in stages:
        if not outcome.manifest_uri or outcome.stage in used:
            continue
        identity = read_json(outcome.manifest_uri).get("params", {}).get("identity")
        if identity:
            used[outcome.stage] = identity
    return used


def people_in(outcome: StageOutcome) -> int:
    """People a stage found: its `tracks` list, else its count of tracks/people."""
    if isinstance(outcome.values.get("tracks"), list):
        return len(outcome.values["tracks"])
    for name in _PEOPLE_COUNTS:
        if name in outcome.counts:
            return int(outcome.counts[name])
    return 0


def markdown(summary: RunSummary, results: str = "") -> str:
    """The summary as a Markdown artifact: totals, a stage table, then `results` (a table of
    links, orchestrator/artifacts.py)."""
    lines = [
        f"# nlfpipe run: {summary.video}",
        "",
        f"**People found:** {summary.people_found} &nbsp; **Frames:** {summary.frames} &nbsp; "
        f"**fps factor:** {summary.fps_factor} &nbsp; **Cache hits:** "
        f"{summary.cache_hits}/{len(summary.stages)}",
        "",
        f"**Compute:** {summary.compute_seconds:.1f} s &nbsp; **Waiting for you:** "
        f"{summary.waiting_seconds:.1f} s &nbsp; **Wall:** {summary.wall_seconds:.1f} s",
        "",
        "| stage | result | compute (s) | call (s) | attempts | counts |",
        "|---|---|---:|---:|---:|---|",
    ]
    for s in summary.stages:
        counts = ", ".join(f"{k}={v:g}" for k, v in sorted(s.counts.items()))
        verdict = "cache hit" if s.cache_hit else "computed"
        lines.append(
            f"| {s.stage} | {verdict} | {s.compute_seconds:.2f} | {s.wall_seconds:.2f} | "
            f"{s.attempts} | {counts} |"
        )
    if results:
        lines += ["", results]
    return "\n".join(lines)
