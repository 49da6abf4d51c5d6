"""What the orchestrator knows of one service's Slurm job: the record and its tag."""

from __future__ import annotations

from dataclasses import dataclass

from .slurm.states import has_ended

TAG_PREFIX = "wfm-orchestrator:service:"


def job_tag(name: str, seq: int) -> str:
    """The comment that identifies a service's job, also after a restart."""
    return f"{TAG_PREFIX}{name}:{seq}"


@dataclass(frozen=True)
class ServiceJob:
    """One service's Slurm job (a row of ``service_job``)."""

    name: str
    seq: int
    job_id: int | None = None
    state: str = ""  # Slurm's job state, "GONE" once Slurm forgot an unfinished job
    reason: str = ""
    nodes: str = ""
    exit_code: int | None = None
    error: str = ""  # why the job could not be submitted
    release_requested: float | None = None
    updated: float = 0.0

    @property
    def ended(self) -> bool:
        return has_ended(self.state)
