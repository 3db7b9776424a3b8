"""Numba kernels, private to the package: plain numbers and arrays in and out.

Nothing here imports a module above it.  Each kernel has a short numpy twin used as its test
oracle (in the module that calls it, or in the tests).  ``bits``: binary16/float bit
manipulation and the target's features; ``rng``: the counter-based generator of stochastic
rounding; ``round``: rounding to a format; ``ops``: correctly rounded arithmetic; ``gemm``: dot
products and matrix products per profile; ``exact``: the Kulisch-style exact accumulator;
``stats``: per-layer statistics of the analysis; ``scaled``: block-scaled (MX, NVFP4) quantisation; ``workspace``: reused scratch arrays.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_dir", "kernels_cached"]

#: The environment variable numba reads for its cache folder.
CACHE_ENV = "NUMBA_CACHE_DIR"


def _writable(folder: Path) -> bool:
    """Whether files can be created in ``folder`` (made if missing).  Tries for real: a
    read-only file system refuses even root, which ``os.access`` does not see."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".fpanalysis-probe-"):
            pass
        return True
    except OSError:
        return False


def _choose_cache_dir() -> str | None:
    """Where numba should cache the compiled kernels, or None to leave numba's own choice.

    numba caches next to the source (``__pycache__``) and falls back to a folder under the
    user's home; when neither is writable (a read-only install with a read-only HOME) every
    ``cache=True`` kernel fails with "cannot cache function".  Then a folder in the system's
    temporary directory is used instead: kernels still compile, and later runs reuse them.
    """
    if os.environ.get(CACHE_ENV):
        return None
    if _writable(Path(__file__).resolve().parent / "__pycache__"):
        return None
    home_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fpanalysis-numba"
    for candidate in (home_cache, Path(tempfile.gettempdir()) / f"fpanalysis-numba-{os.getuid()}"):
        if _writable(candidate):
            return str(candidate)
    return None


def _configure_cache() -> None:
    chosen = _choose_cache_dir()
    if chosen is None:
        return
    os.environ[CACHE_ENV] = chosen
    if "numba" in sys.modules:  # numba read its configuration at import: make it read again
        from numba.core import config

        config.reload_config()


def cache_dir() -> Path:
    """The folder that holds (or will hold) the compiled kernels."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path(__file__).resolve().parent / "__pycache__"


def kernels_cached() -> bool:
    """Whether compiled kernels of this Python version are in the cache (a first run compiles
    them, which takes tens of seconds on a small machine)."""
    tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    folder = cache_dir()
    try:
        return any(tag in p.name for p in folder.rglob("*.nbi"))
    except OSError:
        return False


_configure_cache()
if not os.environ.get("FPANALYSIS_NO_PROGRESS") and not kernels_cached():
    print("fpanalysis: compiling kernels (first run only; later runs load them from "
          f"{cache_dir()})", file=sys.stderr, flush=True)
