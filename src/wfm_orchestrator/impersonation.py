"""Submitting a user's job: with the user's own Slurm token, or, only when the site allows
it (``impersonate_users = yes``), with the SlurmUser token naming the user (issue #15).

The SlurmUser may submit as anyone, so its use on a user's behalf is a decision of the
site, not a silent fallback; each use is logged with the user, the item and the job.
"""

from __future__ import annotations

import logging

from .config import Config
from .errors import ImpersonationRefused, SlurmAuthError
from .slurm import JobSpec
from .slurm.api import SlurmApi

log = logging.getLogger(__name__)


def submit_as_user(slurm: SlurmApi, config: Config, spec: JobSpec, user: str,
                   user_token: str | None, item: str) -> int:
    """Submit ``spec`` as ``user``; the Slurm job id. ``item`` names the service or step
    (and the job's part of it) for the log and the refusal."""
    if user_token:
        try:
            return slurm.submit(spec, user=user, user_token=user_token)
        except SlurmAuthError as e:
            why = f"Slurm refused {user}'s token ({e})"
    else:
        why = f"no Slurm token of {user} was given"
    if not config.impersonate_users:
        raise ImpersonationRefused(
            f"{why}; submitting with the SlurmUser token on {user}'s behalf is off "
            "(impersonate_users = no): give the user's own Slurm token, or set "
            "impersonate_users = yes in wfm.conf")
    job_id = slurm.submit(spec, user=user, user_token=None)
    log.info("%s: %s; Slurm job %d submitted for %s with the SlurmUser token "
             "(impersonate_users = yes)", item, why, job_id, user)
    return job_id


__all__ = ["submit_as_user"]
