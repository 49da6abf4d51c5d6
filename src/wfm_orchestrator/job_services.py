"""Use case: services for the length of one job, asked for in its batch script (#18).

A job carrying ``#BB_LUA wfm_job type=... [name=<short>] ...`` gets, at its burst-buffer
setup, one reservation per line made **for the job's user** under a name derived from
the job (``<user>_job<id>[_<short>]``, model.job_service_name), started like any other
service (services.py submits its service job, with the SlurmUser token naming the user:
the plugin has no token of the user's), and released at the job's teardown.

The plugin says which job and uid it acts for; whoever holds its token could say
anything, so Slurm is asked: the job must exist, not have ended, run as the uid's account
and carry a ``wfm_job`` directive. A holder of the token can then reserve only for a user
who has such a job, never for anyone. Nothing here knows HTTP.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from functools import partial
from typing import Any

from .accounts import Accounts
from .config import Config
from .errors import Forbidden, InvalidRequest, NoSlurm, NotFound
from .follower import Advance, JobIndex
from .model import SHORT_RE, SHORT_RULE, check_user, job_service_name, parse_reserve
from .reservation import Reservation
from .resource_manager import ResourceManager
from .services import ServiceManager
from .slurm import JobState
from .slurm.api import SlurmJobs
from .store import Ticket

log = logging.getLogger(__name__)

# What a line of the directive turns into: the reserve body less what the orchestrator
# decides itself (the full name, the user, the token).
BODY_KEYS = frozenset({"name", "type", "servers", "attributes", "location"})
_DIRECTIVE_RE = re.compile(r"^\s*#BB_LUA\s+wfm_job(?:\s|$)", re.MULTILINE)


def carries_job_directive(job: JobState) -> bool:
    """Does Slurm's record of the job hold a ``#BB_LUA wfm_job`` line?"""
    return _DIRECTIVE_RE.search(job.burst_buffer) is not None


class JobServices:
    """Also a tracker of the one follower (follower.py): a service whose job Slurm lists
    as ended, or no longer lists, for ``teardown_grace`` seconds is released, in case its
    teardown was lost (slurmctld restarted from an older state)."""

    noun = "job-scoped service"  # for the follower's logs

    def __init__(self, config: Config, rm: ResourceManager, services: ServiceManager,
                 slurm: SlurmJobs | None, accounts: Accounts):
        self.config = config
        self.rm = rm
        self.services = services
        self.slurm = slurm
        self.accounts = accounts
        self._ended: dict[str, float] = {}  # name -> when its job was first seen ended
        self._lock = threading.Lock()
        if slurm is not None and not any(isinstance(t, JobServices)
                                         for t in services.follower.trackers):
            services.follower.add(self)

    # --- POST server/jobservice ---------------------------------------------------

    def reserve(self, job_id: int, uid: int, body: Any) -> tuple[Reservation, Ticket]:
        """Reserve the service of one ``wfm_job`` line (``body``) for Slurm job ``job_id``
        of ``uid``; the reservation and the ticket to answer after. Blocks (asks Slurm).

        The same line again for the same job answers the same reservation (setup re-run
        after a restart or a requeue).
        """
        if not isinstance(body, Mapping):
            raise InvalidRequest("body", "expected a JSON object (a reserve body without "
                                 "user and token)")
        unknown = sorted(set(body) - BODY_KEYS)
        if unknown:
            raise InvalidRequest(unknown[0], "unknown field (valid: "
                                 f"{', '.join(sorted(BODY_KEYS))}; the user and the name "
                                 "come from the job)")
        short = body.get("name")
        if short is not None and (not isinstance(short, str) or not SHORT_RE.match(short)):
            raise InvalidRequest("name", f"the short name of a job's service is {SHORT_RULE}")
        user = self._owner(job_id, uid)
        if self.slurm is not None and body.get("type") in self.config.service_types \
                and not self.config.impersonate_users:
            raise InvalidRequest(
                "type", f"a job-scoped {body.get('type')} service is started with the "
                "SlurmUser token on the user's behalf (the plugin holds no token of the "
                "user's), and impersonate_users = no: set impersonate_users = yes in wfm.conf")
        full = {**{k: v for k, v in body.items() if k != "name"},
                "name": job_service_name(user, job_id, short), "user": user,
                "user_slurm_token": ""}
        request = parse_reserve(full, self.config, job_id=job_id)
        rec, ticket = self.rm.reserve(request)
        self.rm.claim(rec.name, f"job {job_id} of uid {uid} (its own job-scoped service)")
        log.info("job-scoped service %s: reserved for Slurm job %d of %s (uid %d): %s",
                 rec.name, job_id, user, uid, rec.state.value)
        return rec, ticket

    def _owner(self, job_id: int, uid: int) -> str:
        """The user of Slurm job ``job_id``, if it may have job-scoped services for uid."""
        if self.slurm is None:
            raise NoSlurm()
        job = next((j for j in self.slurm.jobs() if j.job_id == job_id), None)
        who = f"job {job_id} (uid {uid})"
        if job is None or job.is_terminal:
            raise Forbidden("job_id", f"{who} may not have a job-scoped service: Slurm "
                            f"{'lists it ' + job.state if job else 'does not know it'}")
        owner_uid = self.accounts.lookup(job.user) if job.user else None
        if owner_uid != uid:
            raise Forbidden("uid", f"{who} may not have a job-scoped service: the job runs "
                            "as another user (a service is reserved only for its job's user)")
        if not carries_job_directive(job):
            raise Forbidden("job_id", f"{who} may not have a job-scoped service: its script "
                            "carries no '#BB_LUA wfm_job' directive")
        return check_user(job.user, "user")

    # --- DELETE server/jobservice ---------------------------------------------------

    def release(self, job_id: int) -> tuple[list[str], Ticket | None]:
        """Stop and release every job-scoped service of job ``job_id``, and nothing else.

        The names released, and the ticket of the last release (None: nothing left,
        already released: a teardown run again).
        """
        why = f"job {job_id} ended (burst-buffer teardown of its job-scoped services)"
        names: list[str] = []
        ticket = None
        for rec in self.rm.live():
            if rec.request.job_id != job_id:
                continue
            try:
                if self.services.slurm is None:
                    self.rm.release_reason(rec.name, why)
                    ticket = self.rm.release(rec.name, detail=why)[1]
                else:
                    ticket = self.services.release(rec.name, why)[1]
            except NotFound:
                continue  # released meanwhile
            names.append(rec.name)
        if names:
            log.info("job %d ended: releasing its job-scoped services %s", job_id,
                     ", ".join(names))
        return names, ticket


    # --- the follower: a teardown that never came ---------------------------------

    def live(self) -> list[tuple[str, Advance]]:
        return [(rec.name, partial(self._advance, rec)) for rec in self.rm.live()
                if rec.request.job_id is not None]

    def _advance(self, rec: Reservation, jobs: JobIndex) -> None:
        job_id = rec.request.job_id
        seen = jobs.by_id.get(job_id)  # type: ignore[arg-type]
        now = self.services.clock()
        if seen is not None and seen.user == rec.request.user and not seen.is_terminal:
            with self._lock:
                self._ended.pop(rec.name, None)
            return
        with self._lock:
            since = self._ended.setdefault(rec.name, now)
        if now - since < self.config.teardown_grace:
            return
        how = (f"ended {seen.state}" if seen is not None and seen.user == rec.request.user
               else "is no longer known to Slurm")
        why = (f"job {job_id} {how} and no burst-buffer teardown released its job-scoped "
               f"service within {self.config.teardown_grace:.0f} s (teardown_grace): "
               "released by the orchestrator")
        log.warning("job-scoped service %s: %s", rec.name, why)
        try:
            self.services.release(rec.name, why)
        except NotFound:
            pass  # released meanwhile
        with self._lock:
            self._ended.pop(rec.name, None)


__all__ = ["BODY_KEYS", "JobServices", "carries_job_directive"]
