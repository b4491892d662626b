"""Stage runs are content-addressed, cached by manifest, and never publish partial results."""

import json
import threading
from pathlib import Path

import pytest

from services.common.errors import ArtifactNotFound, Cancelled, PreconditionFailed
from services.common.stagerun import (
    OutputFile,
    StageOutputs,
    StageRun,
    cache_key,
    run_stage,
)


def _upper(run: StageRun) -> StageOutputs:
    text = run.inputs["text"].read_text()
    out = run.workdir / "upper.txt"
    with run.step("transform"):
        out.write_text(text.upper() * run.params["repeat"])
    run.progress(1, 1, "done")
    return StageOutputs({"upper": OutputFile(out, "text/plain")}, counts={"chars": len(text)})


def test_cache_key_depends_on_everything_and_nothing_else() -> None:
    base = cache_key("s", "1", {"a": "x"}, {"p": 1, "q": [1, 2]})
    assert base == cache_key("s", "1", {"a": "x"}, {"q": [1, 2], "p": 1})
    variants = [
        cache_key("t", "1", {"a": "x"}, {"p": 1, "q": [1, 2]}),
        cache_key("s", "2", {"a": "x"}, {"p": 1, "q": [1, 2]}),
        cache_key("s", "1", {"a": "y"}, {"p": 1, "q": [1, 2]}),
        cache_key("s", "1", {"a": "x"}, {"p": 2, "q": [1, 2]}),
    ]
    assert len({base, *variants}) == 5


def test_compute_then_cache_hit_then_force(store) -> None:
    source = store.put_bytes("inputs/t.txt", b"abc", "text/plain")
    calls = []

    def compute(run: StageRun) -> StageOutputs:
        calls.append(1)
        return _upper(run)

    kwargs = dict(
        stage="upper", version="1", inputs={"text": source}, params={"repeat": 2}, compute=compute
    )
    first = run_stage(store, **kwargs)
    assert not first.cache_hit and len(calls) == 1
    assert store.get_bytes(first.outputs["upper"].key) == b"ABCABC"
    assert first.outputs["upper"].key == f"stages/upper/{first.cache_key}/upper"
    assert first.counts == {"chars": 3}
    assert "transform" in first.timings

    manifest = json.loads(store.get_bytes(first.manifest.key))
    assert manifest["inputs"]["text"]["sha256"] == source.sha256
    assert manifest["params"] == {"repeat": 2}
    assert manifest["outputs"]["upper"]["sha256"] == first.outputs["upper"].sha256
    assert manifest["versions"]["python"]

    second = run_stage(store, **kwargs)
    assert second.cache_hit and len(calls) == 1
    assert second.outputs == first.outputs
    assert second.compute_seconds == 0.0

    third = run_stage(store, **kwargs, force=True)
    assert not third.cache_hit and len(calls) == 2


def test_failed_compute_publishes_nothing(store) -> None:
    source = store.put_bytes("inputs/t.txt", b"abc", "text/plain")

    def broken(run: StageRun) -> StageOutputs:
        (run.workdir / "half.txt").write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_stage(
            store, stage="broken", version="1", inputs={"text": source}, params={}, compute=broken
        )
    assert store.list("stages/broken/") == []


def test_output_without_manifest_is_not_a_cache_hit(store) -> None:
    source = store.put_bytes("inputs/t.txt", b"abc", "text/plain")
    first = run_stage(
        store,
        stage="upper",
        version="1",
        inputs={"text": source},
        params={"repeat": 1},
        compute=_upper,
    )
    store.delete([first.manifest.key])
    again = run_stage(
        store,
        stage="upper",
        version="1",
        inputs={"text": source},
        params={"repeat": 1},
        compute=_upper,
    )
    assert not again.cache_hit


def test_cancellation_stops_and_publishes_nothing(local_store) -> None:
    source = local_store.put_bytes("inputs/t.txt", b"abc", "text/plain")
    cancel = threading.Event()

    def slow(run: StageRun) -> StageOutputs:
        for i in range(1000):
            if i == 3:
                cancel.set()
            run.progress(i, 1000)
        raise AssertionError("not reached")

    with pytest.raises(Cancelled):
        run_stage(
            local_store,
            stage="slow",
            version="1",
            inputs={"text": source},
            params={},
            compute=slow,
            cancel=cancel,
        )
    assert local_store.list("stages/") == []


def test_missing_and_changed_inputs(local_store, tmp_path: Path) -> None:
    missing = local_store.put_bytes("inputs/t.txt", b"abc", "text/plain")
    local_store.delete([missing.key])
    with pytest.raises(ArtifactNotFound):
        run_stage(
            local_store, stage="u", version="1", inputs={"text": missing}, params={}, compute=_upper
        )
    stale = local_store.put_bytes("inputs/t.txt", b"abc", "text/plain")
    local_store.put_bytes("inputs/t.txt", b"changed", "text/plain")
    with pytest.raises(PreconditionFailed, match="stale"):
        run_stage(
            local_store, stage="u", version="1", inputs={"text": stale}, params={}, compute=_upper
        )


def test_progress_is_rate_limited_but_final_event_arrives(local_store) -> None:
    source = local_store.put_bytes("inputs/t.txt", b"abc", "text/plain")
    events = []

    def chatty(run: StageRun) -> StageOutputs:
        for i in range(1, 10001):
            run.progress(i, 10000, "working")
        return _upper(run)

    run_stage(
        local_store,
        stage="chatty",
        version="1",
        inputs={"text": source},
        params={"repeat": 1},
        compute=chatty,
        on_progress=events.append,
    )
    assert len(events) < 100
    assert any(e.done == 10000 and e.total == 10000 for e in events)


def test_input_without_stored_digest_is_hashed(s3_store, tmp_path: Path) -> None:
    src = tmp_path / "t.txt"
    src.write_bytes(b"abc")
    s3_store.client.fput_object(s3_store.bucket, "foreign/t.txt", str(src))
    ref = s3_store.stat("foreign/t.txt")
    assert ref.sha256 == ""
    result = run_stage(s3_store, stage="upper", version="1", inputs={"text": ref},
                       params={"repeat": 1}, compute=_upper)
    manifest = json.loads(s3_store.get_bytes(result.manifest.key))
    assert manifest["inputs"]["text"]["sha256"] == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
