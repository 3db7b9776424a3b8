"""The experiments behind the paper figures, run as modules from the repository root.

    python -m experiments.train --smoke
    python -m experiments.sweep --out=experiments/results/cpu_sweep/digits ...

Each script writes JSON results under ``experiments/results`` (see README.md); helpers shared
by the scripts live in :mod:`experiments._common`.
"""
