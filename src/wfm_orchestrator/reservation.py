"""One reservation of datanode resources, as the resource manager holds it in memory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .allocator import Placement
from .model import ReservationState, ReserveRequest


# slots: one of these lives per reservation (100,000 and more), a __dict__ each cost
# ~100 bytes more.
@dataclass(slots=True)
class Reservation:
    request: ReserveRequest
    state: ReservationState
    seq: int
    created: float
    updated: float
    # Shared with the allocator while it holds resources (its reserve's or restore's list).
    placement: list[Placement] | None = None
    detail: str = ""
    # The Slurm job that bound it (plugin setup with its job id): the only job whose
    # teardown may release it. None when unbound, or bound by a call without a job id.
    bound_job: int | None = None
    # When it took its resources (reserved, or admitted from the queue): the start of
    # its unclaimed_timeout. None in rows stored before (then ``created`` counts).
    held_since: float | None = None
    # Who first claimed it for its user ("job 42 of uid 1001", "step alice_s1_step_0"):
    # "" while none did. An unclaimed reservation is released after unclaimed_timeout.
    claimed: str = ""

    @property
    def name(self) -> str:
        return self.request.name

    def allocation(self) -> dict[str, Any]:
        """The spec's v2.0.0_server_allocation_response."""
        props = [
            {"server_name": p.server, "cores": len(p.core_list), "core_list": list(p.core_list),
             "msize": p.msize, "ssize": p.ssize}
            for p in self.placement or ()
        ]
        return {"name": self.name, "servers": len(props), "properties": props}
