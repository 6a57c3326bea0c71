"""Tests of the core (``twinfer/``)."""
