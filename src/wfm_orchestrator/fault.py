"""Fault injection for the crash tests: die at a named point, as kill -9 would."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def fault(point: str) -> None:
    """Die here when WFM_FAULT names this point (docs/reliability.md)."""
    if os.environ.get("WFM_FAULT") == point:
        log.critical("WFM_FAULT=%s: exiting with status 137 (fault injection)", point)
        os._exit(137)
