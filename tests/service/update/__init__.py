"""Tests of the update pipeline (``service/update/``)."""
