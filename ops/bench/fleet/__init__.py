"""Fleet rollout benchmark: see run.py."""
