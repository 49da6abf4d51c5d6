"""The account the benchmarks reserve for: reservations must name an existing ordinary
account (accounts.py, issue #15), so the benchmarks take one of this machine's."""

from __future__ import annotations

import os
import pwd


def ordinary_user(min_uid: int = 1000) -> str:
    """$WFM_BENCH_USER, or the first account with a uid >= min_uid (not nobody)."""
    chosen = os.environ.get("WFM_BENCH_USER")
    if chosen:
        return chosen
    for entry in sorted(pwd.getpwall(), key=lambda p: p.pw_uid):
        if min_uid <= entry.pw_uid < 65534:
            return entry.pw_name
    raise SystemExit("no ordinary account (uid >= 1000) on this machine to reserve for: "
                     "create one (deploy/devcluster up creates alice and bob) or set "
                     "WFM_BENCH_USER")
