"""Settings come from environment variables, with errors that name the variable."""

from pathlib import Path

import pytest

from services.common.settings import SettingsError, load_settings


def test_defaults() -> None:
    s = load_settings({})
    assert s.store_backend == "local"
    assert s.store_root == Path(".nlfpipe/store")
    assert s.s3_bucket == "nlfpipe"
    assert s.device == "auto"
    assert s.grace_seconds == 30.0
    assert s.port is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"NLFPIPE_STORE": "ftp"}, "NLFPIPE_STORE='ftp' is not valid"),
        ({"NLFPIPE_STORE": "s3"}, "needs NLFPIPE_S3_ENDPOINT"),
        ({"NLFPIPE_DEVICE": "tpu"}, "NLFPIPE_DEVICE"),
        ({"NLFPIPE_GRACE_SECONDS": "soon"}, "NLFPIPE_GRACE_SECONDS='soon' is not a number"),
        ({"NLFPIPE_GRACE_SECONDS": "-1"}, "must be at least 0"),
        ({"NLFPIPE_S3_SECURE": "maybe"}, "NLFPIPE_S3_SECURE='maybe' is not a boolean"),
        ({"NLFPIPE_PORT": "70000"}, "NLFPIPE_PORT='70000' is not a TCP port"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        load_settings(env)


def test_s3_settings() -> None:
    s = load_settings(
        {"NLFPIPE_STORE": "S3", "NLFPIPE_S3_ENDPOINT": "minio:9000", "NLFPIPE_S3_SECURE": "true"}
    )
    assert (s.store_backend, s.s3_endpoint, s.s3_secure) == ("s3", "minio:9000", True)
