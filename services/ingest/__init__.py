"""The ingest stage: source -> probed, optionally cut, normalized H.264 video."""
