"""What the use cases need from a Slurm client, as Protocols that mypy checks.

:class:`~wfm_orchestrator.slurm.client.SlurmClient` satisfies them, and so does
the unit tests' fake (tests/fake_slurm.py); tests/unit/test_slurm_api.py runs mypy
to prove both still do, so neither can drift from what the managers call.
"""

from __future__ import annotations

from typing import Protocol

from .jobs import JobSpec
from .nodes import NodeState
from .states import JobState


class SlurmJobs(Protocol):
    """The follower's read: every job slurmctld knows, in one call."""

    def jobs(self) -> list[JobState]: ...


class SlurmNodes(Protocol):
    """The follower's other read: every node's state (the datanodes' health), in one call."""

    def nodes(self) -> list[NodeState]: ...


class SlurmApi(SlurmJobs, Protocol):
    """Everything the service and step managers do with Slurm."""

    def submit(self, spec: JobSpec, user: str, user_token: str | None = None) -> int: ...

    def cancel(self, job_id: int, signal: str = "SIGTERM", user: str | None = None,
               user_token: str | None = None) -> bool: ...
