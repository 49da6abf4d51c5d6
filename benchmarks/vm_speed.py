"""This VM's speed now, as one figure: the milliseconds a fixed pure-Python job takes.

    python3 benchmarks/vm_speed.py        (scale_all.sh prints it before each round)

VMs of one kind differ (one ran the restart in 0.47 s of CPU, another in 0.75 s, the
same code) and one VM's speed drifts by the minute. A figure of #21's goals is only
comparable with another taken at a like speed: this is that speed. The job is the kind
of work the server does (small dicts and strings made, formatted, encoded as JSON), on
one CPU, the best of five runs (the least disturbed).
"""

from __future__ import annotations

import os
import time

import ujson


def job() -> int:
    items = [{"name": f"scale_{i}", "status": "ALLOCATED", "id": i,
              "detail": f"allocated on dn{i % 2000} (no Slurm configured)"}
             for i in range(100_000)]
    return len(ujson.dumps(items)) + len(sorted(items, key=lambda d: d["name"]))


def main() -> int:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        job()
        runs.append((time.perf_counter() - started) * 1000)
    print(f"vm speed: {min(runs):.1f} ms for the fixed job (best of 5; lower is faster; "
          f"median {sorted(runs)[2]:.1f} ms)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
