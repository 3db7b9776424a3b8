"""Helpers shared by the experiment scripts: environment record and atomic JSON writes."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> dict[str, Any]:
    """Versions, machine and git commit, recorded in every result file."""
    env: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                           "cpu_count": os.cpu_count()}
    for mod in ("numpy", "numba", "torch", "scipy", "mpmath"):
        try:
            env[mod] = __import__(mod).__version__
        except ImportError:
            env[mod] = None
    try:
        env["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        env["git_commit"] = None
    return env


def write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    """Write ``payload`` as standard JSON so that ``path`` holds either the old file or the
    complete new one (temporary file in the same folder, fsync, rename).  numpy scalars become
    numbers; non-finite numbers the strings ``"nan"``, ``"inf"``, ``"-inf"``, as in the
    reports (docs/report_schema.md; read back with ``fpanalysis._json.restore_nonfinite``)."""
    from fpanalysis._json import dumps

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(dumps(payload, indent=1))
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def parse_overrides(cfg: Any, argv: list[str]) -> Any:
    """Apply ``--key=value`` overrides to a dataclass config (types from the defaults)."""
    from dataclasses import fields, replace

    kinds = {f.name: type(getattr(cfg, f.name)) for f in fields(cfg)}
    changes: dict[str, Any] = {}
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise SystemExit(f"expected --key=value, got {arg!r}; keys: {', '.join(kinds)}")
        key, val = arg[2:].split("=", 1)
        key = key.replace("-", "_")
        if key not in kinds:
            raise SystemExit(f"unknown option {key!r}; keys: {', '.join(kinds)}")
        t = kinds[key]
        if t is bool:
            changes[key] = val.lower() in ("1", "true", "yes")
        elif t in (tuple, list):
            changes[key] = type(getattr(cfg, key))(x.strip() for x in val.split(",") if x.strip())
        else:
            changes[key] = t(val)
    return replace(cfg, **changes)


def relative_to_repo(folder: str) -> str:
    """``folder`` relative to the repository when inside it (result files carry no machine paths)."""
    try:
        return str(Path(folder).resolve().relative_to(Path(__file__).resolve().parent.parent))
    except ValueError:
        return folder


def read_stage(path: Path) -> dict:
    """A cached stage's JSON results ({} when the file is missing; an unreadable file is said and
    started again).  :func:`write_json` stores non-finite numbers as "nan"/"inf"/"-inf" strings;
    they come back as floats."""
    import json

    from fpanalysis._json import restore_nonfinite

    if not path.exists():
        return {}
    try:
        return restore_nonfinite(json.loads(path.read_text()))
    except ValueError:
        print(f"{path}: unreadable, starting it again", file=sys.stderr)
        return {}
