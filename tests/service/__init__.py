"""Tests of the supervisor process (``service/``)."""
