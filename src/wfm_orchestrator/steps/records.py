"""What the orchestrator knows of a step and of each of its Slurm jobs (rows of
``step`` and ``step_job``; their SQL is in repositories/steps.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..model import StepPhase
from ..slurm.states import has_ended
from .request import StepRequest


@dataclass(frozen=True)
class Step:
    name: str
    user: str
    request: StepRequest
    launch_id: str
    phase: StepPhase = StepPhase.WAITING
    detail: str = ""
    abort_requested: float | None = None
    created: float = 0.0
    updated: float = 0.0
    # Handed to the step's data mover jobs only; proves a progress comes from one of them.
    # Kept out of repr: a Step may end up in a log line.
    mover_secret: str = field(default="", repr=False)


@dataclass(frozen=True)
class StepJob:
    step: str
    key: str
    job_id: int | None = None
    state: str = ""
    reason: str = ""
    nodes: str = ""
    exit_code: int | None = None
    progress: str = ""
    progress_time: float | None = None
    updated: float = 0.0

    @property
    def ended(self) -> bool:
        return has_ended(self.state)
