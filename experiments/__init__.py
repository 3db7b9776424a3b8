"""The experiments behind the paper figures: run them from the repository root as
``python -m experiments.NAME``.

    python -m experiments.train --smoke
    python -m experiments.sweep --out=experiments/results/cpu_sweep/digits ...

Each script writes JSON results under ``experiments/results`` (see README.md); helpers shared
by the scripts live in :mod:`experiments._common`.
"""
