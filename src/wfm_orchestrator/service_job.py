"""What the orchestrator knows of one service's Slurm job: the record and its tag."""

from __future__ import annotations

from dataclasses import dataclass

from .slurm.states import has_ended

TAG_PREFIX = "wfm-orchestrator:service:"


def job_tag(name: str, seq: int, nonce: str = "") -> str:
    """The comment that identifies a service's job, also after a restart.

    The nonce makes the tag of a job not yet submitted unguessable, so nobody can
    submit a look-alike in advance; a record stored before nonces existed has none
    and keeps the tag its job was submitted with.
    """
    return f"{TAG_PREFIX}{name}:{seq}:{nonce}" if nonce else f"{TAG_PREFIX}{name}:{seq}"


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
    nonce: str = ""  # random, created with the record: part of the tag ("" in old rows)
    # When the job entered ``state`` (None in rows stored before: ``updated`` counts): a
    # bound job PENDING that long is replaced (stuck_job_timeout), not one whose reason
    # merely changed, nor one requeued after it ran a while.
    state_since: float | None = None
    # A replaced job (stuck_job_timeout) still to be cancelled: kept until Slurm shows it
    # ended or forgot it, so that a restart finishes the replacement (docs/reliability.md).
    replaced_job: int | None = None
    replacements: int = 0  # how many jobs of this service were replaced
    replaced_why: str = ""  # the last replacement, as its status says it

    @property
    def pending_since(self) -> float:
        """Since when the job is in its state (the row's last change for old rows)."""
        return self.updated if self.state_since is None else self.state_since

    @property
    def tag(self) -> str:
        return job_tag(self.name, self.seq, self.nonce)

    @property
    def ended(self) -> bool:
        return has_ended(self.state)
