"""Ephemeral services on Slurm: the service job of each reservation, its status, its release.

Once a reservation holds resources (FREE), the service's job is submitted on
the datanode partition as the reserving user, pinned to the reserved
datanodes with their cores and memory, with a ``#BB_LUA wfm_service`` line
naming the service; our burst-buffer plugin binds it at job start (GET
server/allocation -> ALLOCATED) and frees it at teardown (DELETE
server/allocation).

Work is driven from durable records (the ``service_job`` table): a service
whose job is not known yet is submitted by the worker, after looking for a
job carrying its tag (``comment``) in case an earlier run submitted it and
crashed before storing the id. The follower (follower.py) does all Slurm I/O
on its worker thread: on its one ``GET /jobs`` per cycle this manager follows
every job, submits what is pending, cancels what was released, and frees the
resources of services whose job ended without a teardown. Slurm being down
only delays it. The SQL of ``service_job`` is in repositories/service_jobs.py.

Lock order: the resource manager's lock, then this one. Nothing here calls
the resource manager while holding its own lock.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from functools import partial
from typing import Any

import ujson

from .config import Config
from .errors import NoSlurm, NotFound, SlurmUnavailable, WfmError
from .fault import fault
from .follower import Advance, Cancels, Follower, JobIndex, log_look_alike
from .impersonation import submit_as_user
from .model import ReservationState, ServiceStatus, down_note
from .paging import Page
from .repositories import service_jobs
from .resource_manager import Reservation, ResourceManager, iso_time
from .service_job import ServiceJob, job_tag
from .slurm import GONE, JobSpec, exit_status_text, gone_reason, service_directive
from .slurm.api import SlurmApi
from .store import Store, Ticket
from .worker import Worker

log = logging.getLogger(__name__)

State = ReservationState


def _nothing() -> None:
    pass


HOUSEKEEPING_INTERVAL = 600.0  # s between two looks for released services to forget
UNCLAIMED_INTERVAL = 30.0  # s at most between two looks for unclaimed reservations
FOLLOW_RELEASED = 600.0  # s: Slurm keeps an ended job MinJobAge (300 s by default)


# --- the status (pure) -------------------------------------------------------


def derive_status(rec: Reservation, position: int, job: ServiceJob | None, *,
                  slurm: bool, launch: bool) -> tuple[ServiceStatus, str, float]:
    """The spec's status, what is awaited, and when it last changed (docs/state-machines.md)."""
    S = ServiceStatus
    when = max(rec.updated, job.updated if job else 0.0)
    servers = ", ".join([p.server for p in rec.placement or ()])
    if rec.state == State.QUEUED:
        # The detail says what it waits for: resources, or its user's Limit.
        return (S.STAGINGIN, f"queued at position {position}: "
                f"{rec.detail or 'waiting for resources'}", when)
    if rec.state == State.RELEASED:
        return S.STOPPED, rec.detail, when
    bound = rec.state == State.ALLOCATED
    if job is None or job.job_id is None:
        if job is not None and job.release_requested:
            return S.STAGINGOUT, "release requested before the service job started", when
        if job is not None and job.error:
            return (S.STAGINGIN, f"resources reserved on {servers}; the service job could not "
                    f"be submitted: {job.error}", when)
        if not slurm or not launch:
            why = ("no Slurm configured" if not slurm
                   else f"no launch command configured for type {rec.request.type}")
            if bound:
                return S.ALLOCATED, f"allocated on {servers} ({why})", when
            return (S.STAGINGIN, f"resources reserved (FREE) on {servers}; waiting for a job "
                    f"with '#BB_LUA wfm_service name={rec.name}' to bind them ({why})", when)
        return S.STAGINGIN, f"resources reserved on {servers}; submitting the service job", when
    jid = job.job_id
    if job.release_requested:
        # Why it is released (unclaimed_timeout, a destroy_persistent job), if said.
        why = f"{rec.detail}; " if rec.detail else ""
        if job.ended:
            return (S.STAGEDOUT, f"{why}Slurm job {jid} ended {job.state}; waiting for the "
                    f"burst-buffer teardown to free {servers}", when)
        return S.STAGINGOUT, f"{why}stopping: Slurm job {jid} {job.state or 'submitted'}", when
    if job.ended:
        how = (f" ({job.reason})" if job.reason else "") + exit_status_text(job.exit_code)
        return (S.TEARDOWN, f"Slurm job {jid} ended {job.state}{how}; freeing {servers}", when)
    if job.state in ("", "PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "RESV_DEL_HOLD"):
        if bound:
            return S.STAGEDIN, f"Slurm job {jid} {job.state.lower() or 'submitted'}: burst " \
                               f"buffer set up on {servers}, starting", when
        reason = f": {job.reason}" if job.reason else ""
        return S.STAGINGIN, f"Slurm job {jid} {job.state.lower() or 'submitted'}{reason}", when
    if bound:
        return S.ALLOCATED, f"Slurm job {jid} {job.state.lower()} on {servers}", when
    return (S.STAGINGIN, f"Slurm job {jid} {job.state.lower()}, not yet bound by the "
            "burst-buffer plugin", when)


_VALUE = {status: status.value for status in ServiceStatus}  # a lookup, not enum's property


def _not_released(rec: Reservation) -> bool:
    return rec.state is not State.RELEASED  # the one state whose status is STOPPED


def job_scoped(rec: Reservation) -> dict[str, Any]:
    """The keys marking a job-scoped service (#18) in its status; what its job's
    environment needs too (servers, mount point)."""
    return {"scope": "job", "job_id": rec.request.job_id,
            "servers": [p.server for p in rec.placement or ()],
            "mountpoint": rec.request.mountpoint or ""}


# Reasons of a job a person holds (scontrol hold, or the user's own): never replaced,
# the hold is theirs to lift. Slurm's holds (REQUEUE_HOLD, RESV_DEL_HOLD) are job states
# other than PENDING and so are not replaced either.
HELD_REASONS = frozenset({"JobHeldAdmin", "JobHeldUser"})


def stuck_for(rec: Reservation, job: ServiceJob, now: float, timeout: float) -> float | None:
    """Seconds a bound service job has been kept PENDING, if that calls for its replacement.

    Replaced (stuck_job_timeout, 0 = never): the job bound the reservation (its
    burst buffer is set up: Slurm should start it within seconds), it has been PENDING
    ``timeout`` s since the later of that binding and its entering PENDING (a job
    requeued after it ran counts from the requeue), no release was asked and no person
    holds it. None otherwise.
    """
    if (not timeout or rec.state != State.ALLOCATED or job.job_id is None
            or rec.bound_job != job.job_id or job.state != "PENDING"
            or job.reason in HELD_REASONS or job.release_requested):
        return None
    waited = now - max(rec.updated, job.pending_since)
    return waited if waited >= timeout else None


def replacement_note(job: ServiceJob) -> str:
    """What a live service's status adds once its job was replaced ("" before)."""
    if not job.replacements:
        return ""
    times = "1 time" if job.replacements == 1 else f"{job.replacements} times"
    return f" [recovered {times}: {job.replaced_why}]"


# --- the manager ---------------------------------------------------------------


class ServiceManager:
    noun = "service"  # for the follower's logs

    def __init__(self, config: Config, rm: ResourceManager, store: Store,
                 slurm: SlurmApi | None, clock: Callable[[], float] = time.time,
                 follower: Follower | None = None):
        self.config = config
        self.rm = rm
        self.store = store
        self.slurm = slurm
        self.clock = clock
        self._lock = threading.Lock()
        self._jobs: dict[str, ServiceJob] = {}
        # Shared with the step manager in the server (one read of Slurm per cycle).
        self.follower = follower or Follower(slurm, config.reconcile_interval,
                                             config.slurm_timeout * 3, flush=store.flush)
        self.follower.add(self)
        # Forgets old released services; runs with or without Slurm.
        self.housekeeping = Worker("housekeeping", self.forget_released, HOUSEKEEPING_INTERVAL,
                                   30.0)
        # Releases the reservations no job of their user claimed (unclaimed_timeout).
        self.unclaimed = Worker("unclaimed", self.release_unclaimed,
                                min(UNCLAIMED_INTERVAL, max(config.unclaimed_timeout / 10, 1.0)),
                                30.0)
        self._cancels = Cancels(config.release_timeout)  # keyed by service name
        # Called once per service job replaced (stuck_job_timeout): metrics at the edge.
        self.on_replaced: Callable[[], None] = _nothing
        # Called once per second job of a reservation cancelled (_cancel_duplicates).
        self.on_duplicate: Callable[[], None] = _nothing
        # Raises SlurmUnavailable unless this orchestrator surely leads, with every earlier
        # write durable (a leader lease: lease.submission_guard, set by cli.build_all).
        self.still_leading: Callable[[], None] = _nothing
        self._load()
        rm.listeners.append(self._on_reservation)

    # --- state --------------------------------------------------------------

    def _load(self) -> None:
        for job in service_jobs.load_all(self.store):
            self._jobs[job.name] = job
        if self.slurm is None:
            return  # no service job to follow (launches): 100,000 calls less per start
        for rec in self.rm.live():
            if rec.state != State.QUEUED:
                self._on_reservation(rec)

    def launches(self, rec: Reservation) -> bool:
        """Does the orchestrator submit this reservation's service job itself?"""
        return self.slurm is not None and rec.request.type in self.config.service_types

    def _save(self, job: ServiceJob) -> Ticket:
        """Record a new version of a job (caller holds self._lock); its commit ticket."""
        self._jobs[job.name] = job
        return self.store.write([service_jobs.save(job)])

    def _on_reservation(self, rec: Reservation) -> None:
        """Called by the resource manager, under its lock, when a reservation changed."""
        if rec.state not in (State.FREE, State.ALLOCATED) or not self.launches(rec):
            return
        with self._lock:
            job = self._jobs.get(rec.name)
            if job is None or job.seq != rec.seq:
                self._save(ServiceJob(rec.name, rec.seq, updated=self.clock(),
                                      nonce=secrets.token_hex(8)))
                self.follower.wake()
            elif job.job_id is None and job.error:
                # A retry of the reserve (perhaps with a renewed token): try again.
                self._save(replace(job, error="", updated=self.clock()))
                self.follower.wake()

    def job(self, name: str) -> ServiceJob | None:
        with self._lock:
            return self._jobs.get(name)

    def confirm_job(self, rec: Reservation, job_id: int) -> bool:
        """Is Slurm job ``job_id`` the service job this manager submitted for ``rec``?

        Asked when the plugin binds with a job id the record does not hold yet: the
        submission's answer not yet recorded, or a restart before its adoption. Slurm
        says: the job must carry the record's tag (its nonce is secret) and run as the
        reservation's user on the datanode partition. A yes is recorded (adopted).
        """
        assert self.slurm is not None
        job = self.job(rec.name)
        if job is None or job.seq != rec.seq:
            return False
        if job.job_id is not None:
            return job.job_id == job_id
        seen = JobIndex.of(self.slurm.jobs()).by_id.get(job_id)
        if seen is None or seen.comment != job.tag \
                or not seen.runs_as(rec.request.user, self.config.datanode_partition):
            return False
        log.info("service %s: Slurm job %d binds it before its submission was recorded: "
                 "adopted (tag, user and partition match)", rec.name, job_id)
        self._update(job, job_id=job_id, state=seen.state, error="")
        return True

    # --- status -------------------------------------------------------------

    def _status(self, rec: Reservation, position: int,
                seen: tuple[Mapping[str, ServiceJob], Mapping[str, str], str] | None = None
                ) -> dict[str, Any]:
        """The status of ``rec``; with ``seen`` (_seen()) as the service jobs, the datanodes
        down in Slurm and Slurm's problem were then, else as they are now."""
        if seen is None:
            job = self.job(rec.name)
            down, problem = self.rm.down_in_slurm(), self.follower.problem
        else:
            jobs, down, problem = seen
            job = jobs.get(rec.name)
        if job is not None and job.seq != rec.seq:
            job = None
        req = rec.request
        status, detail, when = derive_status(rec, position, job, slurm=self.slurm is not None,
                                             launch=req.type in self.config.service_types)
        if down and rec.state in (State.FREE, State.ALLOCATED):
            note = down_note((p.server for p in rec.placement or ()), down)
            if note:
                detail += f"; {note}"
        if problem and status not in (ServiceStatus.STOPPED,):
            detail += f" [Slurm unreachable: {problem}]"
        if job is not None and status != ServiceStatus.STOPPED:
            detail += replacement_note(job)
        out: dict[str, Any] = {"user": req.user, "name": req.name, "status": _VALUE[status],
                               "detail": detail, "time": iso_time(when),
                               "type": req.type, "id": rec.seq,
                               "created": iso_time(rec.created)}
        if req.job_id is not None:
            out.update(job_scoped(rec))
        return out

    def status(self, name: str) -> dict[str, str] | None:
        found = self.rm.snapshot(name)
        return self._status(*found) if found else None

    def statuses(self, user: str | None = None) -> list[dict[str, str]]:
        return [self._status(rec, pos) for rec, pos in self.rm.snapshots(user)]

    def newest_live(self, limit: int) -> list[dict[str, Any]]:
        """The statuses of the ``limit`` newest services not stopped (released), oldest
        first."""
        return [self._status(rec, pos)
                for rec, pos in self.rm.newest_snapshots(limit, _not_released)]

    def status_page(self, after: int | None, limit: int | None,
                    keep: Callable[[Reservation], bool] | None = None,
                    users: Iterable[str] | None = None) -> Page[dict[str, str]]:
        """Statuses in arrival order after reservation seq ``after`` (ResourceManager.page),
        rendered under its lock: one snapshot."""
        # What the statuses read beside the reservations, read once for the page, not
        # once per item (1,000 takings of our lock): the mapping itself, not a copy, as
        # the rendering of each item with its own lookup did.
        seen = (self._jobs, self.rm.down_in_slurm(), self.follower.problem)
        return self.rm.page(after, limit, keep, users,
                            lambda rec, pos: self._status(rec, pos, seen))

    def status_chunks(self, after: int | None = None,
                      keep: Callable[[Reservation], bool] | None = None,
                      users: Iterable[str] | None = None, size: int = 256
                      ) -> Iterator[list[dict[str, Any]]]:
        """Every status ``status_page`` would give without a limit, as one snapshot (the
        reservations, their jobs, Slurm's word) taken now and rendered ``size`` at a time
        (ResourceManager.listing): for the spec's unpaged list, streamed."""
        seen, chunks = self.rm.listing(after, keep, users, self._seen)
        return chunks(lambda rec, pos: self._status(rec, pos, seen), size)

    def _seen(self) -> tuple[Mapping[str, ServiceJob], Mapping[str, str], str]:
        """What a status reads beside its reservation, as it is now (called under the
        resource manager's lock: jobs change under ours, taken after it, as listeners do)."""
        with self._lock:
            jobs = self._jobs.copy()  # immutable jobs, replaced whole: a copy of references
        return jobs, self.rm.down_in_slurm(), self.follower.problem

    # --- release ----------------------------------------------------------------

    def claim(self, name: str, by: str) -> None:
        """``by`` (a job of the service's user, a step) claims it (unclaimed_timeout)."""
        self.rm.claim(name, by)

    def release(self, name: str, why: str = "") -> tuple[dict[str, str], Ticket]:
        """DELETE ephemeralservice/release/{name}: stop the service, then free its resources.

        The answer, and the ticket to answer it after: the release is durable once
        that commit is done (the intent to cancel, or the freed resources). ``why``
        (a destroy_persistent job, unclaimed_timeout) is said by its status and kept in
        its release detail.
        """
        if self.slurm is None:
            raise NoSlurm()
        rec = self.rm.get(name)
        if rec is None or rec.state == State.RELEASED:
            raise NotFound("service", name)
        if why:
            self.rm.release_reason(name, why)
        now = self.clock()
        free_now = False
        ticket: Ticket | None = None
        with self._lock:
            job = self._jobs.get(name)
            if job is not None and job.seq != rec.seq:
                job = None
            if rec.state == State.QUEUED or job is None or job.job_id is None or job.ended:
                free_now = True
                if job is not None and not job.release_requested:
                    self._save(replace(job, release_requested=now, updated=now))
            elif not job.release_requested:
                self._save(replace(job, release_requested=now, updated=now))
                self.follower.wake()
        if free_now:
            detail = ("released while queued" if rec.state == State.QUEUED
                      else "released before its service job started" if job is None
                      or job.job_id is None else f"released (Slurm job {job.job_id} had "
                      f"ended {job.state})")
            try:
                ticket = self.rm.release(name, detail=detail)[1]  # commits after our write
            except NotFound:
                ticket = None  # freed meanwhile by the plugin's teardown
        if ticket is None:
            # Commits after every earlier write, this release's intent (or a repeated
            # release's first one) included: the release is answered once it is durable.
            ticket = self.store.write([])
        return {"name": name, **{k: v for k, v in (self.status(name) or {}).items()
                                 if k in ("status", "detail")},
                "message": "release accepted"}, ticket

    # --- the worker ---------------------------------------------------------------

    def start(self) -> None:
        self.follower.start()
        self.housekeeping.start()
        if self.config.unclaimed_timeout:
            self.unclaimed.start()

    def stop(self) -> None:
        self.unclaimed.stop()
        self.housekeeping.stop()
        self.follower.stop()

    def release_unclaimed(self) -> list[str]:
        """Release every reservation none of its user's jobs claimed within unclaimed_timeout.

        A claim is the first of: a create_persistent, use_persistent or wfm_use job of
        the user (the plugin's status lookup with the job's id), a wfm_service job of the
        user binding it (not the service job the orchestrator submitted itself),
        step/launch naming it, GET server/allocation by an administrator.
        """
        timeout = self.config.unclaimed_timeout
        if not timeout:
            return []
        released = []
        for rec in self.rm.unclaimed(timeout):
            why = (f"released by the orchestrator: unclaimed_timeout ({timeout:.0f} s) passed "
                   f"and no job of {rec.request.user} claimed it (no create_persistent, "
                   "use_persistent or wfm_use job, no step named it)")
            log.warning("service %s: %s", rec.name, why)
            try:
                if self.slurm is None:
                    self.rm.release_reason(rec.name, why)
                    self.rm.release(rec.name, detail="resources freed")[1].wait()
                else:
                    self.release(rec.name, why)[1].wait()
            except NotFound:
                continue  # released meanwhile
            released.append(rec.name)
        return released

    def forget_released(self) -> list[str]:
        """Forget released services older than ``released_retention`` (rows and records).

        A released service whose Slurm job has not ended (a cancel that did not
        take) is kept: it is still followed and its job still cancelled.
        """
        with self._lock:
            followed = {job.name for job in self._jobs.values()
                        if (job.job_id is not None and not job.ended)
                        or job.replaced_job is not None}
        forgotten, forgot_rows = self.rm.forget_released(keep=followed.__contains__)
        forgot_rows.wait()  # housekeeping runs on its own thread
        if not forgotten:
            return []
        with self._lock:
            jobs = [self._jobs.pop(name) for name, seq in forgotten
                    if name in self._jobs and self._jobs[name].seq == seq]
            for name, _ in forgotten:
                self._cancels.forget(name)
            ticket = self.store.write([service_jobs.forget(job) for job in jobs])
        ticket.wait()
        log.info("forgot %d service(s) released more than %.0f s ago (released_retention)",
                 len(forgotten), self.config.released_retention)
        return [name for name, _ in forgotten]

    def _live_jobs(self) -> list[tuple[Reservation, ServiceJob]]:
        out = []
        for rec in self.rm.live():
            job = self.job(rec.name)
            if job is not None and job.seq == rec.seq and rec.state != State.QUEUED:
                out.append((rec, job))
        # A released service's job is followed until it ended at least FOLLOW_RELEASED s
        # ago: a slurmctld restart may requeue it (from an older saved state) after its
        # teardown freed the resources.
        since = self.clock() - FOLLOW_RELEASED
        with self._lock:
            unfinished = [j for j in self._jobs.values() if j.replaced_job is not None
                          or (j.job_id is not None
                              and (not j.ended or (j.state != GONE and j.updated > since)))]
        for job in unfinished:
            released = self.rm.get(job.name)
            if released is not None and released.state == State.RELEASED \
                    and released.seq == job.seq:
                out.append((released, job))
        return out

    def live(self) -> list[tuple[str, Advance]]:
        """The follower's view: each followed service and how to move it forward."""
        return [(rec.name, partial(self._advance, rec, job)) for rec, job in self._live_jobs()]

    def reconcile(self) -> None:
        """One cycle of the follower for the services alone (one read of Slurm's jobs)."""
        self.follower.cycle([self])

    def _advance(self, rec: Reservation, job: ServiceJob, jobs: JobIndex) -> None:
        assert self.slurm is not None
        now = self.clock()
        user, partition = rec.request.user, self.config.datanode_partition
        if job.replaced_job is not None:
            job = self._finish_replacement(rec, job, jobs, now)
            if rec.state == State.RELEASED and job.job_id is None:
                return  # released during its replacement: nothing to submit
        if job.job_id is None:
            found = jobs.adoptable(job.tag, user, partition, f"service {rec.name}")
            if found is not None:
                log.info("service %s: adopting Slurm job %d (submitted before a restart)",
                         rec.name, found.job_id)
                job = self._update(job, job_id=found.job_id, error="")
            elif job.release_requested or job.error:
                return
            else:
                # The job list was read before this submission: look at it next cycle.
                self._submit(rec, job)
                return
        self._cancel_duplicates(rec, job, jobs, now)
        seen = jobs.by_id.get(job.job_id)  # type: ignore[arg-type]
        if seen is not None and seen.comment == job.tag and not seen.runs_as(user, partition) \
                and not job.ended:
            log_look_alike(f"service {rec.name}", seen, user, partition)
        taken = seen is not None and (seen.name != rec.name or seen.comment not in ("", job.tag)
                                      or not seen.runs_as(user, partition))
        if taken:
            seen = None  # Slurm gave the id of a job it lost to another job: not ours
        if seen is None and job.state == "PENDING" and rec.state == State.FREE \
                and not job.release_requested:
            # A slurmctld crash forgets the jobs it accepted but had not saved yet. This
            # one never started (PENDING, reservation never bound): submit it again.
            log.warning("service %s: Slurm lost job %d before it started; submitting again",
                        rec.name, job.job_id)
            self._update(job, job_id=None, state="", reason="", nodes="", exit_code=None)
            self.follower.wake()
            return
        if seen is not None:
            job = self._update(job, state=seen.state, reason=seen.reason,
                               nodes=",".join(seen.nodes), exit_code=seen.exit_code)
        elif gone := gone_reason(job.state, job.updated, now, taken=taken):
            job = self._update(job, state=GONE, reason=gone)
        if seen is not None and (waited := stuck_for(rec, job, now,
                                                     self.config.stuck_job_timeout)):
            self._replace(rec, job, waited, jobs, now)
            return
        # PENDING without its reservation: its setup can only fail (the job held forever).
        orphan = rec.state == State.RELEASED and job.state == "PENDING"
        if (job.release_requested or orphan) and not job.ended:
            sent = self._cancels.sent(rec.name)
            # PENDING after the cancel: Slurm requeued it (a slurmctld restart during the
            # cancel runs the job again): cancel again now, not after release_timeout.
            if self._cancels.due(rec.name, now, again=job.state == "PENDING"):
                # Slurm's cancel (signal SIGKILL through slurmrestd, as scancel does)
                # sends SIGTERM to every task, waits KillWait, then kills: the
                # service stages out on SIGTERM. A bare SIGTERM would reach srun
                # first, which then kills the tasks outright (checked on 22.05).
                log.info("service %s: cancelling Slurm job %d (release%s)", rec.name,
                         job.job_id, ", again" if sent else "")
                self.slurm.cancel(job.job_id, signal="SIGKILL")  # type: ignore[arg-type]
                self._cancels.record(rec.name, now)
        if (job.ended and rec.state != State.RELEASED
                and now - job.updated >= self.config.teardown_grace):
            detail = (f"Slurm job {job.job_id} ended {job.state}; resources freed by the "
                      "orchestrator (no burst-buffer teardown within "
                      f"{self.config.teardown_grace:.0f} s)")
            if job.release_requested:
                detail = f"released; {detail}"
            log.warning("service %s: %s", rec.name, detail)
            try:
                self.rm.release(rec.name, detail=detail)  # the follower flushes after the item
            except NotFound:
                pass

    # --- a second job of one reservation (issue #20: never two) ----------------------

    def _cancel_duplicates(self, rec: Reservation, job: ServiceJob, jobs: JobIndex,
                           now: float) -> None:
        """Cancel every active job of this reservation's user and partition carrying its
        tag (any nonce of its seq) that is neither its recorded job, nor a replaced job
        still being cancelled, nor the job the reservation is bound to.

        Such a job is a second submission: a former leader paused past its lease between
        its lease check and its POST (docs/ha.md "Slurm submissions"), or a submission of
        ours whose answer was lost and which we submitted again. Slurm cannot fence a
        request, so the leader finds it afterwards and cancels it.

        Never our own submission in flight: only the follower's thread submits a
        service's job, in ``_advance``, and only while the record has no job id; it
        records the id Slurm returns (in memory, at once) before its next read of
        Slurm's jobs, and this runs on that thread, after the record has an id. So no
        submission of this reservation by this process can be in flight now, and every
        other job with the tag in this read was made by someone else or abandoned by us.
        (The plugin's binding, ``confirm_job``, may adopt a job on another thread while a
        submission is in flight: ``_submit`` then keeps the adopted job and leaves its
        own to this.) A job of another user or partition carrying the tag is a
        look-alike (someone copied the tag): not ours to cancel. With a leader lease, the
        cancel waits for the proof a submission waits for (``still_leading``).
        """
        assert job.job_id is not None and self.slurm is not None
        base = job_tag(rec.name, rec.seq)
        keep = {job.job_id, job.replaced_job, rec.bound_job}
        found = {j.job_id: j for j in (*jobs.by_tag.get(base, ()), *jobs.by_stem.get(base, ()))}
        due = []
        for other in found.values():
            if other.job_id in keep or other.name != rec.name \
                    or not other.runs_as(rec.request.user, self.config.datanode_partition):
                continue
            key = ("duplicate", rec.name, other.job_id)
            if other.is_terminal:
                self._cancels.forget(key)
            elif self._cancels.due(key, now):
                due.append((other, key))
        if not due:
            return
        # A deposed leader that has not noticed yet may hold in memory a job id it never
        # committed, and would cancel the new leader's job: a cancel needs what a
        # submission needs, our record durable under our lease with time left on it. The
        # next leader then loads the same record and agrees on which job is the second.
        try:
            self.still_leading()
        except SlurmUnavailable as e:
            log.warning("service %s: second Slurm job(s) %s not cancelled now: %s", rec.name,
                        ", ".join(str(other.job_id) for other, _ in due), e)
            return
        for other, key in due:
            log.warning("service %s: cancelling Slurm job %d (%s): it carries the service's "
                        "tag but is not its recorded job %d; a second submission (a former "
                        "leader paused past its lease, or a submission whose answer was "
                        "lost), never two jobs for one reservation", rec.name, other.job_id,
                        other.state or "submitted", job.job_id)
            self.slurm.cancel(other.job_id, signal="SIGKILL")
            self._cancels.record(key, now)
            self.on_duplicate()

    # --- replacing a bound job Slurm keeps PENDING (stuck_job_timeout) -------------

    def _replace(self, rec: Reservation, job: ServiceJob, waited: float, jobs: JobIndex,
                 now: float) -> None:
        """Replace the service's job, keeping the reservation; each step durable first.

        1. The record forgets the job and names it ``replaced_job`` (still to cancel),
           with a fresh nonce: the new job's tag is one the old job does not carry, so
           the old one is never adopted or confirmed as the service's job again.
        2. The reservation is unbound (FREE, placement kept): the old job's teardown
           then frees nothing (403), and its setup, should Slurm run it, binds nothing.
        3. The old job is cancelled (only now: its teardown comes after the unbind).
        4. The next cycle submits the new job as any first one (adoptable by its tag).
        A restart after 1, 2 or 3 finishes the rest (``_finish_replacement``).
        """
        old = job.job_id
        assert old is not None
        servers = ", ".join([p.server for p in rec.placement or ()])
        why = (f"Slurm job {old} stayed PENDING {waited:.0f} s after its burst buffer was set "
               f"up on {servers} (stuck_job_timeout {self.config.stuck_job_timeout:.0f} s): "
               "cancelled and replaced by a new job, the reservation kept")
        log.warning("service %s: %s (replacement %d)", rec.name, why, job.replacements + 1)
        with self._lock:
            current = self._jobs.get(job.name, job)
            ticket = self._save(replace(
                current, job_id=None, state="", reason="", nodes="", exit_code=None, error="",
                nonce=secrets.token_hex(8), replaced_job=old,
                replacements=current.replacements + 1, replaced_why=why, updated=now,
                state_since=now))
        ticket.wait()  # durable before the unbind: a restart must know what to finish
        fault("service_replace_recorded")
        self.on_replaced()
        self._finish_replacement(rec, self._jobs[job.name], jobs, now)
        self.follower.wake()

    def _finish_replacement(self, rec: Reservation, job: ServiceJob, jobs: JobIndex,
                            now: float) -> ServiceJob:
        """Unbind from the replaced job and cancel it; forget it once Slurm ended it."""
        old = job.replaced_job
        assert old is not None
        if rec.state == State.ALLOCATED and rec.bound_job == old:
            # Durable before the cancel: the cancel brings the old job's teardown.
            self.rm.unbind(rec.name, old).wait()
            fault("service_replace_unbound")
        seen = jobs.by_id.get(old)
        key = (rec.name, old)
        base = job_tag(rec.name, rec.seq)  # the replaced job's tag, but for its old nonce
        # Still the replaced job (not an id Slurm gave to another job) and not ended?
        if seen is None or seen.is_terminal or seen.name != rec.name \
                or not (seen.comment == base or seen.comment.startswith(base + ":")) \
                or not seen.runs_as(rec.request.user, self.config.datanode_partition):
            self._cancels.forget(key)
            return self._update(job, replaced_job=None)
        if self._cancels.due(key, now):
            log.info("service %s: cancelling Slurm job %d (replaced)", rec.name, old)
            self.slurm.cancel(old, signal="SIGKILL")  # type: ignore[union-attr]
            self._cancels.record(key, now)
            fault("service_replace_cancelled")
        return job

    def _update(self, job: ServiceJob, **changes: Any) -> ServiceJob:
        if all(getattr(job, k) == v for k, v in changes.items()):
            return job
        with self._lock:
            current = self._jobs.get(job.name, job)
            now = self.clock()
            if changes.get("state", current.state) != current.state:
                changes["state_since"] = now
            new = replace(current, **changes, updated=now)
            self._save(new)
        if "state" in changes:
            log.info("service %s: Slurm job %s %s%s", job.name, new.job_id, new.state,
                     f" ({new.reason})" if new.reason else "")
        return new

    def _submit(self, rec: Reservation, job: ServiceJob) -> ServiceJob:
        assert self.slurm is not None
        spec = build_service_job(self.config, rec, job.tag)
        req = rec.request
        fault("service_before_submit")
        try:
            job_id = submit_as_user(self.slurm, self.config, spec, req.user,
                                    req.user_slurm_token or None, f"service {rec.name}")
        except SlurmUnavailable:
            raise
        except WfmError as e:
            log.error("service %s: cannot submit its job: %s", rec.name, e)
            return self._update(job, error=str(e))
        fault("service_after_submit")
        log.info("service %s: Slurm job %d submitted for %s on %s", rec.name, job_id, req.user,
                 ",".join(spec.nodes))
        with self._lock:
            current = self._jobs.get(job.name, job)
            # Checked and recorded under one lock: the plugin's binding may have adopted a
            # job carrying the tag while this submission was in flight (confirm_job, on
            # another thread). That job is bound: it is kept, ours is the second one, and
            # the next cycle cancels it (_cancel_duplicates).
            adopted = current.job_id if current.seq == job.seq \
                and current.job_id not in (None, job_id) else None
            if adopted is None:
                now = self.clock()
                since = current.state_since if current.state == "PENDING" else now
                job = replace(current, job_id=job_id, state="PENDING", error="", updated=now,
                              state_since=since)
                self._save(job)
            released = self._jobs[job.name].release_requested
        if adopted is not None:
            log.warning("service %s: Slurm job %d was adopted while job %d was being "
                        "submitted: %d is kept, %d is cancelled as a second job", rec.name,
                        adopted, job_id, adopted, job_id)
            self.follower.wake()
            return current
        log.info("service %s: Slurm job %d PENDING", rec.name, job_id)
        if released:
            self.follower.wake()
        return job


def build_service_job(config: Config, rec: Reservation, tag: str) -> JobSpec:
    """The job description of a service (pure); ``tag`` is its record's (``ServiceJob.tag``)."""
    req = rec.request
    stype = config.service_types[req.type]
    servers = [p.server for p in rec.placement or ()]
    env = {
        "WFM_SERVICE_NAME": req.name,
        "WFM_SERVICE_TYPE": req.type,
        "WFM_SERVICE_USER": req.user,
        "WFM_TARGETS": "\n".join(req.targets),
        "WFM_MOUNTPOINT": req.mountpoint or "",
        "WFM_ALLOCATION": ujson.dumps(rec.allocation()),
    }
    return JobSpec(
        name=req.name,
        command=list(stype.command),
        partition=config.datanode_partition,
        nodes=servers,
        # Slurm has no zero-CPU or zero-memory job (0 MB would mean "all the memory"):
        # a service without cores or memory asks for the smallest unit.
        cpus_per_node=max(req.cores, 1),
        memory_per_node=max(req.msize, 1),
        environment=env,
        comment=tag,
        stdout=config.service_output,
        bb=[service_directive(req.name)],
        launcher=("srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1"),
    )
