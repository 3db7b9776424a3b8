"""Experiment scripts: run them from the repository root as ``python -m experiments.NAME``."""
