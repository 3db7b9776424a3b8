"""``fpanalysis verify`` prints one table whose rows all have the same columns: the arithmetic
suite's rows used to carry the operation under "op" (an empty "check" column) and ``None`` as
the first mismatch of passing rows."""
from __future__ import annotations

from fpanalysis._table import format_table
from fpanalysis.verify import COLUMNS, SUITES, run_suites
from fpanalysis.verify.ops import verify_ops


def test_arithmetic_rows_fill_every_column_of_the_table() -> None:
    rows = verify_ops(n_pairs=40, seed=1, formats=("fp16",), ops=("add", "sqrt"))
    assert rows
    for r in rows:
        assert set(COLUMNS) <= set(r), sorted(r)
        assert r["check"] in ("add", "sqrt")
        assert r["mismatches"] == 0 and r["first_mismatch"] == ""
    table = format_table(rows, COLUMNS)
    assert "None" not in table
    body = table.splitlines()[2:]
    assert all(line.split()[0] in ("add", "sqrt") for line in body)


def test_run_suites_reports_a_missing_oracle_as_a_row_not_an_exception() -> None:
    def broken(n, seed, exhaustive, progress):
        raise ImportError("oracle package 'nothing' is not installed")

    from fpanalysis.verify import Suite

    rows = run_suites(10, suites=[Suite("broken", broken)])
    assert len(rows) == 1 and rows[0]["mismatches"] == -1
    assert rows[0]["check"] == "broken suite" and "nothing" in rows[0]["first_mismatch"]
    assert [s.name for s in SUITES] == ["rounding and conversions", "arithmetic", "linear algebra", "tensor cores"]


def test_tensor_core_suite_gets_its_own_block_count() -> None:
    """``--n`` (10^5 operands) used to be the tensor-core suite's block count too, which made the
    default ``fpanalysis verify`` run for about 40 minutes; that suite now runs
    TENSORCORE_BLOCKS blocks per case unless told otherwise."""
    from fpanalysis.verify import TENSORCORE_BLOCKS, TENSORCORE_BLOCKS_FULL, Suite

    seen: dict[str, int] = {}

    def record(name):  # type: ignore[no-untyped-def]
        def run(n, seed, exhaustive, progress):  # type: ignore[no-untyped-def]
            seen[name] = n
            return []
        return run

    suites = [Suite("ops", record("ops")), Suite("tc", record("tc"), blocks=True)]
    run_suites(10**5, suites=suites)
    assert seen == {"ops": 10**5, "tc": TENSORCORE_BLOCKS}
    run_suites(10**6, exhaustive=True, suites=suites)
    assert seen == {"ops": 10**6, "tc": TENSORCORE_BLOCKS_FULL}
    run_suites(7, suites=suites, blocks=300)
    assert seen == {"ops": 7, "tc": 300}
    assert TENSORCORE_BLOCKS <= 5000 < TENSORCORE_BLOCKS_FULL == 10**5
    assert [s.blocks for s in SUITES] == [False, False, False, True]
