"""Dot-product error growth with the length n, measured against the bounds (figure 2).

For each format (fp16, bf16), data distribution and length ``n``, ``trials`` random vector
pairs with entries in the format are multiplied by the emulator (:func:`fpanalysis.linalg.matmul`,
one batched call per method) in three arithmetic settings:

* ``ieee`` / ``sequential``: every product and addition rounded to the format, left to right;
* ``ieee`` / ``pairwise``: the same roundings, Higham's pairwise order;
* ``fp32-accumulate``: exact products, binary32 accumulation, one final rounding (cuBLAS/torch).

The exact dot product (:func:`fpanalysis.reference.exact_dot`, correctly rounded float64) gives
the relative error ``|s^ - s| / (|x|^T |y|)``, the quantity the classical bounds bound:

* ``gamma_n = n u / (1 - n u)`` (Higham 2002, eq. (3.5)), vacuous (``inf``) once ``n u >= 1``;
* ``gamma_k`` with ``k = ceil(log2 n) + 1`` for pairwise summation (Higham 2002, section 4.2);
* the fp32-accumulate bound of :func:`fpanalysis.bounds.accumulation_bound` (divided by
  ``|x|^T|y|``, largest over the trials);
* the probabilistic ``gamma~_n(lam) ~ lam sqrt(n) u`` of Higham & Mary (SIAM J. Sci. Comput.
  41(5), 2019, Thm 3.4), ``lam`` from :func:`fpanalysis.bounds.choose_lambda` so that one dot
  product violates it with probability at most ``failure_prob``.

Writes ``results/error_growth.json``: per (format, distribution, n) the max / median / mean
relative error of each method over the trials and the bounds.

    python -m experiments.error_growth            # full (about a minute on one core, after compilation)
    python -m experiments.error_growth --smoke    # seconds, to results/_scratch/
    python -m experiments.error_growth --trials=50 --n_max_log2=18
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from experiments._common import RESULTS, environment, parse_overrides, write_json

METHODS = (("ieee", "sequential"), ("ieee", "pairwise"), ("fp32-accumulate", "sequential"))


@dataclass
class Config:
    formats: tuple = ("fp16", "bf16")
    distributions: tuple = ("uniform", "normal")  # uniform [0, 1) (all terms positive), standard normal
    n_min_log2: int = 3
    n_max_log2: int = 17
    points_per_octave: int = 2
    trials: int = 20
    failure_prob: float = 1e-6
    seed: int = 0
    out: str = str(RESULTS / "error_growth.json")


def lengths(cfg: Config) -> list[int]:
    """Lengths ``round(2**(k / points_per_octave))`` from ``2**n_min_log2`` to ``2**n_max_log2``."""
    ppo = max(1, cfg.points_per_octave)
    ks = range(cfg.n_min_log2 * ppo, cfg.n_max_log2 * ppo + 1)
    return sorted({round(2.0 ** (k / ppo)) for k in ks})


def _draw(rng: np.random.Generator, dist: str, shape: tuple[int, ...]) -> np.ndarray:
    if dist == "uniform":
        return rng.uniform(0.0, 1.0, shape)
    if dist == "normal":
        return rng.standard_normal(shape)
    raise ValueError(f"unknown distribution {dist!r}; valid distributions are: uniform, normal")


def measure(fmt: str, dist: str, n: int, trials: int, failure_prob: float, rng: np.random.Generator) -> dict:
    """One (format, distribution, n) point: errors of every method and the bounds."""
    from fpanalysis.bounds.accumulation import (
        accumulation_bound,
        choose_lambda,
        gamma,
        gamma_tilde,
        rounding_depth,
        unit_roundoff,
    )
    from fpanalysis.linalg import matmul
    from fpanalysis.reference import exact_dot
    from fpanalysis.rounding import round_to

    u = unit_roundoff(fmt)
    X = round_to(_draw(rng, dist, (trials, 1, n)), fmt, dtype=np.float32)
    Y = round_to(_draw(rng, dist, (trials, n, 1)), fmt, dtype=np.float32)
    x64, y64 = X[:, 0, :].astype(np.float64), Y[:, :, 0].astype(np.float64)
    exact = np.array([exact_dot(x64[t], y64[t]) for t in range(trials)])
    A = np.array([exact_dot(np.abs(x64[t]), np.abs(y64[t])) for t in range(trials)])
    A = np.where(A > 0, A, np.nan)  # an all-zero pair has no relative error
    row: dict = {"format": fmt, "distribution": dist, "n": n, "u": u, "trials": trials, "errors": {}}
    for profile, order in METHODS:
        got = matmul(X, Y, fmt, profile, order=order)[:, 0, 0].astype(np.float64)
        rel = np.abs(got - exact) / A
        row["errors"][f"{profile}/{order}"] = {
            "max": float(np.nanmax(rel)), "median": float(np.nanmedian(rel)), "mean": float(np.nanmean(rel)),
        }
    lam = choose_lambda(failure_prob, n, u)
    fp32acc = accumulation_bound(A, n, fmt, "fp32-accumulate", abs_result=np.abs(exact)).value / A
    ieee_full = accumulation_bound(A, n, fmt, "ieee", abs_result=np.abs(exact)).value / A
    row["bounds"] = {
        "gamma_n": gamma(rounding_depth(n), u),
        "gamma_pairwise": gamma(rounding_depth(n, "pairwise"), u),
        "ieee_sequential_full": float(np.nanmax(ieee_full)),
        "fp32_accumulate": float(np.nanmax(fp32acc)),
        "lam_sqrt_n_u": lam * np.sqrt(n) * u,
        "gamma_tilde": gamma_tilde(rounding_depth(n), u, lam),
        "lambda": lam,
    }
    return row


def main(argv: list[str]) -> None:
    smoke = "--smoke" in argv
    cfg = parse_overrides(Config(), [a for a in argv if a != "--smoke"])
    if smoke:
        cfg = replace(cfg, n_max_log2=10, points_per_octave=1, trials=3,
                      out=str(RESULTS / "_scratch" / "error_growth_smoke.json"))
    from fpanalysis.bounds.accumulation import unit_roundoff

    rng = np.random.default_rng(cfg.seed)
    rows = []
    t0 = time.time()
    for fmt in cfg.formats:
        for dist in cfg.distributions:
            for n in lengths(cfg):
                r = measure(fmt, dist, n, cfg.trials, cfg.failure_prob, rng)
                rows.append(r)
                e = r["errors"]
                print(f"{fmt:5s} {dist:8s} n={n:7d}  ieee-seq {e['ieee/sequential']['max']:.2e}  "
                      f"pairwise {e['ieee/pairwise']['max']:.2e}  fp32acc {e['fp32-accumulate/sequential']['max']:.2e}"
                      f"   gamma_n {r['bounds']['gamma_n']:.2e}")
    vacuous = {f: int(np.ceil(1.0 / unit_roundoff(f))) for f in cfg.formats}
    write_json(Path(cfg.out), {
        "experiment": "error_growth", "config": asdict(cfg),
        "methods": [f"{p}/{o}" for p, o in METHODS],
        "error": "|s^ - s| / (|x|^T |y|), s exact (fpanalysis.reference.exact_dot)",
        "vacuous_n": vacuous, "rows": rows, "wall_s": time.time() - t0, "environment": environment(),
    })
    print(f"wrote {cfg.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
