"""The one fake Slurm of the unit tests, and the fake service statuses steps wait for.

:class:`FakeSlurm` satisfies ``wfm_orchestrator.slurm.api.SlurmApi`` (what the
service and step managers call) and ``SlurmNodes`` (the datanodes' health), as the real
``SlurmClient`` does:
tests/unit/test_slurm_api.py runs mypy on this file to keep it so. It holds
jobs in a dict the test edits (``put``, ``set_state``, or ``jobs_by_id``
directly, as slurmctld losing or reusing an id would) and records every call.
The fixtures that build worlds on it are in tests/conftest.py.
"""

from __future__ import annotations

import itertools

from wfm_orchestrator.errors import SlurmAuthError, SlurmUnavailable
from wfm_orchestrator.slurm import JobSpec, JobState
from wfm_orchestrator.slurm.nodes import NodeState


class FakeSlurm:
    """Slurm as the managers see it: submit, one read of every job, cancel.

    ``cancel_ends_jobs``: a cancel ends a PENDING or RUNNING job CANCELLED at once
    (the step tests); without it the job keeps its state until the test sets one,
    as a job stopping within KillWait does (the service tests).
    """

    def __init__(self, cancel_ends_jobs: bool = False):
        self.cancel_ends_jobs = cancel_ends_jobs
        self.jobs_by_id: dict[int, JobState] = {}
        self.submitted: list[tuple[JobSpec, str, str | None]] = []  # (spec, user, token)
        self.specs: dict[int, JobSpec] = {}  # job id -> what was submitted
        self.cancelled: list[tuple[int, str]] = []  # (job id, signal)
        self.reads = 0  # calls of jobs()
        self.ids = itertools.count(100)
        self.down = False  # slurmrestd cannot reach slurmctld
        self.refuse_user_tokens = False  # slurmctld refuses users' own tokens
        self.node_states: dict[str, NodeState] = {}  # what nodes() lists (set_node)
        self.node_reads = 0  # calls of nodes()

    # --- the interface the managers use (slurm/api.py) ---------------------------

    def submit(self, spec: JobSpec, user: str, user_token: str | None = None) -> int:
        if self.down:
            raise SlurmUnavailable("connection refused")
        if self.refuse_user_tokens and user_token:
            raise SlurmAuthError("token refused")
        job_id = next(self.ids)
        self.submitted.append((spec, user, user_token))
        self.specs[job_id] = spec
        self.put(job_id, spec.name, spec.comment, "PENDING", "Resources", nodes=(), user=user,
                 partition=spec.partition)
        return job_id

    def jobs(self) -> list[JobState]:
        self.reads += 1
        if self.down:
            raise SlurmUnavailable("connection refused")
        return list(self.jobs_by_id.values())

    def nodes(self) -> list[NodeState]:
        self.node_reads += 1
        if self.down:
            raise SlurmUnavailable("connection refused")
        return list(self.node_states.values())

    def cancel(self, job_id: int, signal: str = "SIGTERM", user: str | None = None,
               user_token: str | None = None) -> bool:
        self.cancelled.append((job_id, signal))
        job = self.jobs_by_id.get(job_id)
        if self.cancel_ends_jobs and job is not None and job.state in ("PENDING", "RUNNING"):
            self.set_state(job_id, "CANCELLED")
        return job is not None  # False: Slurm no longer knows the job

    # --- what the tests do to it ----------------------------------------------------

    @property
    def cancelled_ids(self) -> list[int]:
        return [job_id for job_id, _ in self.cancelled]

    def put(self, job_id: int, name: str, comment: str, state: str, reason: str = "",
            nodes: tuple[str, ...] = ("dn1",), exit_code: int | None = None,
            user: str = "alice", partition: str | None = None) -> None:
        """Make Slurm list this job (a new one, or one replacing whatever had that id).

        ``partition``: by default the partition of the job listed with that id (the
        orchestrator's own job moving on), "" for a new id.
        """
        if partition is None:
            listed = self.jobs_by_id.get(job_id)
            partition = listed.partition if listed is not None else ""
        self.jobs_by_id[job_id] = JobState(job_id, name, comment, state, reason, nodes,
                                           exit_code, user, partition)

    def set_node(self, name: str, state: str = "IDLE", *flags: str, reason: str = "",
                 partitions: tuple[str, ...] = ("data",)) -> None:
        """Make Slurm list node ``name`` in ``state`` with ``flags`` (IDLE: up)."""
        self.node_states[name] = NodeState(name, state, flags, reason, partitions)

    def set_state(self, job_id: int, state: str, exit_code: int | None = None,
                  nodes: tuple[str, ...] = ("cn1",)) -> None:
        """Move a listed job to ``state`` (its reason cleared; running on ``nodes``)."""
        j = self.jobs_by_id[job_id]
        self.put(job_id, j.name, j.comment, state, "", nodes, exit_code, j.user, j.partition)


class FakeServices:
    """The service manager as the step manager sees it: ``status(name)`` or None."""

    def __init__(self) -> None:
        self.table: dict[str, dict[str, str]] = {}
        self.claims: list[tuple[str, str]] = []

    def status(self, name: str) -> dict[str, str] | None:
        return self.table.get(name)

    def claim(self, name: str, by: str) -> None:
        self.claims.append((name, by))

    def usable(self, name: str = "alice_s1_sbb", user: str = "alice",
               status: str = "ALLOCATED") -> None:
        """Give service ``name`` of ``user`` this status (usable by default)."""
        self.table[name] = {"user": user, "name": name, "status": status, "detail": "d"}
