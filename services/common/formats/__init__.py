"""Artifact formats (docs/formats.md)."""
