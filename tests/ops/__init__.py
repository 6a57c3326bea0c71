"""Tests of the operations files (``ops/``, ``Dockerfile``)."""
