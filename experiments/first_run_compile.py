"""Which numba kernels a command compiles on its first run, and the CPU time each takes.

Runs ``fpanalysis check --demo`` (or the CLI arguments given) in this process and records
numba's ``numba:compile`` events; prints, for every top-level compilation, when it started and
the CPU time of the compiling thread (robust to a loaded machine, unlike wall time), then the
run's wall and process CPU time and the load average.  Point NUMBA_CACHE_DIR at an empty folder
to see a first run (with a filled cache nothing compiles):

    NUMBA_CACHE_DIR=$(mktemp -d) python -m experiments.first_run_compile
    NUMBA_CACHE_DIR=$(mktemp -d) python -m experiments.first_run_compile analyze mlp --n 64
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any


def main(argv: list[str]) -> int:
    from numba.core import event

    t0, load0 = time.perf_counter(), os.getloadavg()
    starts: list[tuple[float, float, str]] = []  # (wall, thread CPU, name) of open compilations
    done: list[tuple[float, float, str]] = []  # (start wall, thread CPU seconds, name), outermost only

    class Listener(event.Listener):
        def on_start(self, ev: Any) -> None:
            name = str(ev.data.get("dispatcher", "?")) if isinstance(ev.data, dict) else "?"
            starts.append((time.perf_counter() - t0, time.thread_time(), name))

        def on_end(self, ev: Any) -> None:
            wall, cpu, name = starts.pop()
            if not starts:
                done.append((wall, time.thread_time() - cpu, name))

    event.register("numba:compile", Listener())
    from fpanalysis.cli import main as cli

    rc = cli(argv or ["check", "--demo"])
    wall, cpu = time.perf_counter() - t0, time.process_time()
    print(f"\n{'start':>8s} {'compile CPU':>11s}  kernel", file=sys.stderr)
    for start, secs, name in done:
        short = name.split(" at 0x")[0].replace("CPUDispatcher(<function ", "")
        print(f"{start:7.1f}s {secs:10.2f}s  {short}", file=sys.stderr)
    total = sum(d[1] for d in done)
    print(f"compiled {len(done)} kernels in {total:.1f} s of CPU; run: {wall:.1f} s wall, {cpu:.1f} s process CPU; "
          f"load average {load0[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
