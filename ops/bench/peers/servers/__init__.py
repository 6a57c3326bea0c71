"""Peer servers, each run from its own virtual environment by ``ops/bench/peers/run.py``."""
