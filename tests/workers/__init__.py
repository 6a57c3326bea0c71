"""Tests of the HTTP worker (``workers/``)."""
