"""Shared fixtures: a real S3 server process and both store backends."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.store import ArtifactStore, LocalFolderStore, S3Store
from tests.support.s3 import bucket_store, moto_server


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint


_bucket_counter = iter(range(1_000_000))


@pytest.fixture
def s3_store(s3_endpoint: str) -> S3Store:
    return bucket_store(s3_endpoint, f"test-{next(_bucket_counter)}")


@pytest.fixture
def local_store(tmp_path: Path) -> LocalFolderStore:
    return LocalFolderStore(tmp_path / "store")


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> ArtifactStore:
    return request.getfixturevalue(f"{request.param}_store")
