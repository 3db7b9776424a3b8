"""Paper figures drawn from the JSON results under ``experiments/results`` (see README.md).

Run ``python -m paper_figures.make_all``; each ``figN_*.py`` module has ``make(results_dir,
out_dir) -> list[Path]``.  matplotlib is imported here only, torch never.
"""
