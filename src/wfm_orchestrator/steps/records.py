"""What the orchestrator knows of a step and of each of its Slurm jobs (rows of
``step`` and ``step_job``; their SQL is in repositories/steps.py)."""

from __future__ import annotations

from dataclasses import dataclass

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
