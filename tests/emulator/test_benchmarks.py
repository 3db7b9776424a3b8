"""The benchmark harness (the speed goals themselves are checked by the benchmark scripts,
never by timed tests)."""

from __future__ import annotations

from fpanalysis.benchmarks import GEMM_GOALS, bench_gemm, time_interleaved


def test_time_interleaved_settles_then_times_each_method() -> None:
    calls: list[str] = []
    methods = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    wall, cpu = time_interleaved(methods, rounds=3, burst=2, settle_s=0.0, max_rounds={"b": 1})
    assert [len(wall["a"]), len(wall["b"])] == [6, 2]
    assert [len(cpu["a"]), len(cpu["b"])] == [6, 2]
    assert all(t >= 0 for t in wall["a"] + wall["b"])
    # round 1: a once untimed + twice timed, then b likewise; later rounds skip b
    assert calls == ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["a"] * 3


def test_bench_gemm_reports_every_goal() -> None:
    res = bench_gemm(n=48, rounds=1)
    assert set(res["goals"]) == {f"{k}_vs_blas" for k in GEMM_GOALS}
    assert set(res["goals"]) <= set(res["ratios"])
    assert all(v > 0 for v in res["ratios"].values())
    assert res["seconds"]["numpy_fp32_blas"] > 0
