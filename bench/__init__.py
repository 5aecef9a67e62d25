"""Benchmarks: scripts that print figures (never timed tests). A package so that ``bench/ingest.py`` does
not shadow the ``ingest`` package for mypy."""
