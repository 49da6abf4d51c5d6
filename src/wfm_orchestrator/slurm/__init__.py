"""Slurm through slurmrestd: pure builders (jobs.py), pure readers (states.py), one client.

The public interface others call::

    from wfm_orchestrator.slurm import SlurmClient, JobSpec, JobState
    client = SlurmClient(url, api_version="auto", token_file=..., slurm_user="slurm",
                         timeout=10)
    job_id = client.submit(JobSpec(...), user="alice", user_token=None)
    client.cancel(job_id, signal="SIGTERM", user=None)
    states = client.job_states([job_id])   # {id: JobState(job_id, name, comment, state,
                                           #                reason, nodes, exit_code, user)}
    client.jobs(); client.job(job_id); client.ping()

See docs/slurm.md.
"""

from .client import SlurmClient, token_claims
from .jobs import (
    BBDirective,
    Dependency,
    JobSpec,
    build_job_script,
    service_directive,
    use_directive,
    validate_spec,
)
from .states import (
    ACTIVE_STATES,
    ENDED_STATES,
    GONE,
    TERMINAL_STATES,
    JobState,
    exit_status_text,
    gone_reason,
    has_ended,
)
from .versions import AUTO, SUPPORTED, build_submit_body

__all__ = [
    "ACTIVE_STATES",
    "AUTO",
    "BBDirective",
    "Dependency",
    "ENDED_STATES",
    "GONE",
    "JobSpec",
    "JobState",
    "SUPPORTED",
    "SlurmClient",
    "TERMINAL_STATES",
    "build_job_script",
    "build_submit_body",
    "exit_status_text",
    "gone_reason",
    "has_ended",
    "service_directive",
    "token_claims",
    "use_directive",
    "validate_spec",
]
