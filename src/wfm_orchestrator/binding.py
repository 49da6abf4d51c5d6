"""Who may bind, use and tear down a reservation through the burst-buffer plugin (#15).

The plugin runs inside Slurm for every job that carries ``#BB_LUA wfm_service`` or
``wfm_use``, whoever wrote it; it tells the orchestrator which job it acts for and that
job's uid, and this module decides (docs/security.md, "The plugin's calls"):

* a job binds a reservation only when its uid is the reservation user's, and, for the
  types the orchestrator starts itself, only when it is the service job the
  orchestrator submitted;
* a job uses a service only when its uid is the service user's;
* a teardown releases only the reservation its own job bound (the recorded binder);
* a job stops (destroy_persistent) only a service of its uid's user;
* ``scontrol show bbstat`` lists, where Slurm says who asks, only that uid's services.

A job of the user that passes these checks *claims* the reservation (unclaimed_timeout):
a use (status lookup with the job's id) or a binding by a job the orchestrator did not
submit itself.

A uid is compared with the uid of the reservation's user on this host: the admin node
and the cluster must share their accounts (LDAP, SSSD), as Slurm itself requires.
"""

from __future__ import annotations

from typing import Any

from .accounts import Accounts
from .errors import Forbidden, InvalidRequest, NotFound, WfmError
from .model import ReservationState
from .reservation import Reservation
from .resource_manager import ResourceManager
from .services import ServiceManager
from .store import Ticket

DELETED = "reservation deleted (DELETE server/allocation: burst-buffer teardown or Session Manager)"


class MustAskSlurm(WfmError):
    """Deciding needs Slurm's answer (a blocking call) and the caller may not block.

    Raised before anything changed: the caller may ask again where blocking is allowed.
    """


class _Unrecorded(Exception):
    """Inside the resource manager's lock: the service job's id is not recorded yet."""


class Binding:
    def __init__(self, rm: ResourceManager, services: ServiceManager | None,
                 accounts: Accounts):
        self.rm = rm
        self.services = services
        self.accounts = accounts

    # --- GET server/allocation -------------------------------------------------

    def bind(self, name: str, job_id: int | None = None, uid: int | None = None, *,
             may_block: bool = True) -> tuple[dict[str, Any], Ticket]:
        """Bind ``name`` for Slurm job ``job_id`` of ``uid``; the allocation and its ticket.

        Without an identity (the spec's form, for an administrator) nothing is checked.
        """
        if job_id is None and uid is None:
            found = self.rm.allocate(name)
            self.rm.claim(name, "GET server/allocation (no job named)")
            return found
        if job_id is None or uid is None:
            missing = "job_id" if job_id is None else "uid"
            raise InvalidRequest(missing, "a binding names both its job (job_id) and the "
                                 "job's uid: the parameter is missing")
        found = self.rm.get(name)
        owner_uid = self.accounts.lookup(found.request.user) if found is not None else None
        who = f"job {job_id} (uid {uid})"

        def may_bind(rec: Reservation) -> None:
            # Under the resource manager's lock: the record checked is the one bound.
            if found is None or rec.request.user != found.request.user or owner_uid != uid:
                raise Forbidden("uid", f"{who} may not bind reservation {name}: it belongs "
                                "to another user (a job binds only its own user's "
                                "reservations)")
            if rec.state == ReservationState.ALLOCATED and rec.bound_job == job_id:
                return  # its own setup again
            if self.services is None or not self.services.launches(rec):
                return
            job = self.services.job(name)
            if job is None or job.seq != rec.seq or job.job_id is None:
                raise _Unrecorded()
            if job.job_id != job_id:
                raise Forbidden("job_id", self._not_service_job(who, name, job.job_id))

        try:
            found = self.rm.allocate(name, job_id, may_bind)
        except _Unrecorded:
            pass
        else:
            rec = self.rm.get(name)
            if rec is not None and (self.services is None or not self.services.launches(rec)):
                self.rm.claim(name, f"job {job_id} of uid {uid} (its own service job)")
            return found
        # The orchestrator submitted (or is submitting) the job but holds no id for it yet.
        if not may_block:
            raise MustAskSlurm(f"binding {name!r} for job {job_id} needs Slurm's answer")
        rec = self.rm.get(name)
        assert self.services is not None
        if rec is None or not self.services.confirm_job(rec, job_id):
            raise Forbidden("job_id", self._not_service_job(who, name, None))
        return self.rm.allocate(name, job_id, may_bind)

    @staticmethod
    def _not_service_job(who: str, name: str, recorded: int | None) -> str:
        theirs = (f"job {recorded}" if recorded is not None
                  else "none submitted yet, or not this one")
        return (f"{who} may not bind reservation {name}: it is not the service job the "
                f"orchestrator submitted for it ({theirs}); the orchestrator starts this "
                "type of service itself")

    # --- DELETE server/allocation ----------------------------------------------

    def unbind(self, name: str, job_id: int | None = None) -> Ticket:
        """Release ``name``; with ``job_id`` (a teardown), only if that job bound it."""
        detail = DELETED if job_id is None else f"{DELETED}, by job {job_id}"
        return self.rm.release(name, detail=detail, bound_by=job_id)[1]

    # --- GET ephemeralservice/status for a step job ------------------------------

    def usable(self, name: str, uid: int, status: dict[str, Any] | None,
               job_id: int | None = None, verb: str = "use") -> dict[str, Any]:
        """``status`` (of service ``name``) if uid's jobs may ``verb`` it; else NotUsable.

        The same answer whether the service exists or not: a job learns nothing of
        other users' services. With ``job_id`` (a job that uses, creates or destroys
        the service), that job claims it.
        """
        if status is not None and self.accounts.lookup(status["user"]) == uid:
            if job_id is not None:
                self.rm.claim(name, f"job {job_id} of uid {uid}")
            return status
        raise NotUsable(name, uid, verb)

    def users_of(self, uid: int) -> set[str]:
        """The users of reservations whose account has ``uid``: the services a list for uid
        shows (``scontrol show bbstat`` for uid, 23.02+). Resolved before the list is read,
        so that no account lookup runs under the resource manager's lock."""
        return {user for user in self.rm.users() if self.accounts.lookup(user) == uid}


class NotUsable(NotFound):
    """A step job may not use the service: it does not exist or is another user's."""

    def __init__(self, name: str, uid: int, verb: str = "use"):
        super().__init__("service", name)
        self.args = (f"no service {name} of uid {uid}: a job may {verb} only its own "
                     "user's services",)
