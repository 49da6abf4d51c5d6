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
crashed before storing the id. One worker thread does all Slurm I/O: one
``GET /jobs`` per cycle follows every job, submits what is pending, cancels
what was released, and frees the resources of services whose job ended
without a teardown. Slurm being down only delays it.

Lock order: the resource manager's lock, then this one. Nothing here calls
the resource manager while holding its own lock.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import ujson

from .config import Config
from .errors import NoSlurm, NotFound, SlurmAuthError, SlurmError, SlurmUnavailable, WfmError
from .model import ReservationState, ServiceStatus
from .resource_manager import Reservation, ResourceManager, iso_time
from .slurm import JobSpec, JobState, SlurmClient, service_directive
from .store import Store
from .worker import Worker

log = logging.getLogger(__name__)

State = ReservationState
TAG_PREFIX = "wfm-orchestrator:service:"
TERMINAL = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
                      "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT", "SPECIAL_EXIT", "REVOKED",
                      "GONE"})


HOUSEKEEPING_INTERVAL = 600.0  # s between two looks for released services to forget
FOLLOW_RELEASED = 600.0  # s: Slurm keeps an ended job MinJobAge (300 s by default)


def fault(point: str) -> None:
    """Die here, as kill -9 would, when WFM_FAULT names this point (docs/reliability.md)."""
    if os.environ.get("WFM_FAULT") == point:
        log.critical("WFM_FAULT=%s: exiting with status 137 (fault injection)", point)
        os._exit(137)


def job_tag(name: str, seq: int) -> str:
    """The comment that identifies a service's job, also after a restart."""
    return f"{TAG_PREFIX}{name}:{seq}"


@dataclass(frozen=True)
class ServiceJob:
    """What the orchestrator knows of one service's Slurm job (a row of ``service_job``)."""

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
        return self.state in TERMINAL


_UPSERT = (
    "INSERT INTO service_job (name, seq, job_id, state, reason, nodes, exit_code, error,"
    " release_requested, updated) VALUES (?,?,?,?,?,?,?,?,?,?)"
    " ON CONFLICT(name) DO UPDATE SET seq=excluded.seq, job_id=excluded.job_id,"
    " state=excluded.state, reason=excluded.reason, nodes=excluded.nodes,"
    " exit_code=excluded.exit_code, error=excluded.error,"
    " release_requested=excluded.release_requested, updated=excluded.updated"
)


_FORGET = "DELETE FROM service_job WHERE name = ? AND seq = ?"


def _row(job: ServiceJob) -> tuple[str, tuple[Any, ...]]:
    return (_UPSERT, (job.name, job.seq, job.job_id, job.state, job.reason, job.nodes,
                      job.exit_code, job.error, job.release_requested, job.updated))


# --- the status (pure) -------------------------------------------------------


def derive_status(rec: Reservation, position: int, job: ServiceJob | None, *,
                  slurm: bool, launch: bool) -> tuple[ServiceStatus, str, float]:
    """The spec's status, what is awaited, and when it last changed (docs/state-machines.md)."""
    S = ServiceStatus
    when = max(rec.updated, job.updated if job else 0.0)
    servers = ", ".join(p.server for p in rec.placement or ())
    if rec.state == State.QUEUED:
        return S.STAGINGIN, f"queued at position {position}: waiting for resources", when
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
        if job.ended:
            return (S.STAGEDOUT, f"Slurm job {jid} ended {job.state}; waiting for the "
                    f"burst-buffer teardown to free {servers}", when)
        return S.STAGINGOUT, f"stopping: Slurm job {jid} {job.state or 'submitted'}", when
    if job.ended:
        how = f" ({job.reason})" if job.reason else ""
        if job.exit_code:
            how += f", exit status {job.exit_code >> 8 if job.exit_code > 255 else job.exit_code}"
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


# --- the manager ---------------------------------------------------------------


class ServiceManager:
    def __init__(self, config: Config, rm: ResourceManager, store: Store,
                 slurm: SlurmClient | None, clock: Callable[[], float] = time.time):
        self.config = config
        self.rm = rm
        self.store = store
        self.slurm = slurm
        self.clock = clock
        self._lock = threading.Lock()
        self._jobs: dict[str, ServiceJob] = {}
        self.worker = Worker("service-worker", self.reconcile, config.reconcile_interval,
                             config.slurm_timeout * 3)
        # Forgets old released services; runs with or without Slurm.
        self.housekeeping = Worker("housekeeping", self.forget_released, HOUSEKEEPING_INTERVAL,
                                   30.0)
        self._slurm_problem = ""
        self._cancelled: dict[str, float] = {}  # name -> when the cancel was sent (this run)
        self._load()
        rm.listeners.append(self._on_reservation)

    # --- state --------------------------------------------------------------

    def _load(self) -> None:
        for row in self.store.query("SELECT * FROM service_job"):
            self._jobs[row["name"]] = ServiceJob(
                row["name"], row["seq"], row["job_id"], row["state"], row["reason"],
                row["nodes"], row["exit_code"], row["error"], row["release_requested"],
                row["updated"])
        for rec in self.rm.live():
            if rec.state != State.QUEUED:
                self._on_reservation(rec)

    def _launch(self, rec: Reservation) -> bool:
        return self.slurm is not None and rec.request.type in self.config.service_types

    def _save(self, job: ServiceJob) -> None:
        """Record a new version of a job (caller holds self._lock)."""
        self._jobs[job.name] = job
        self.store.write([_row(job)])

    def _on_reservation(self, rec: Reservation) -> None:
        """Called by the resource manager, under its lock, when a reservation changed."""
        if rec.state not in (State.FREE, State.ALLOCATED) or not self._launch(rec):
            return
        with self._lock:
            job = self._jobs.get(rec.name)
            if job is None or job.seq != rec.seq:
                self._save(ServiceJob(rec.name, rec.seq, updated=self.clock()))
                self.worker.wake()
            elif job.job_id is None and job.error:
                # A retry of the reserve (perhaps with a renewed token): try again.
                self._save(replace(job, error="", updated=self.clock()))
                self.worker.wake()

    def job(self, name: str) -> ServiceJob | None:
        with self._lock:
            return self._jobs.get(name)

    # --- status -------------------------------------------------------------

    def _status(self, rec: Reservation, position: int) -> dict[str, str]:
        job = self.job(rec.name)
        if job is not None and job.seq != rec.seq:
            job = None
        status, detail, when = derive_status(rec, position, job, slurm=self.slurm is not None,
                                             launch=rec.request.type in
                                             self.config.service_types)
        if self._slurm_problem and status not in (ServiceStatus.STOPPED,):
            detail += f" [Slurm unreachable: {self._slurm_problem}]"
        return {"user": rec.request.user, "name": rec.name, "status": status.value,
                "detail": detail, "time": iso_time(when)}

    def status(self, name: str) -> dict[str, str] | None:
        found = self.rm.snapshot(name)
        return self._status(*found) if found else None

    def statuses(self, user: str | None = None) -> list[dict[str, str]]:
        return [self._status(rec, pos) for rec, pos in self.rm.snapshots(user)]

    # --- release ----------------------------------------------------------------

    def release(self, name: str) -> dict[str, str]:
        """DELETE ephemeralservice/release/{name}: stop the service, then free its resources."""
        if self.slurm is None:
            raise NoSlurm()
        rec = self.rm.get(name)
        if rec is None or rec.state == State.RELEASED:
            raise NotFound("service", name)
        now = self.clock()
        free_now = False
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
                self.worker.wake()
        if free_now:
            detail = ("released while queued" if rec.state == State.QUEUED
                      else "released before its service job started" if job is None
                      or job.job_id is None else f"released (Slurm job {job.job_id} had "
                      f"ended {job.state})")
            try:
                self.rm.delete_allocation(name, detail=detail)
            except NotFound:
                pass  # freed meanwhile by the plugin's teardown
        else:
            # The intent is durable: wait for it like any acknowledged write.
            self.store.write([]).wait()
        return {"name": name, **{k: v for k, v in (self.status(name) or {}).items()
                                 if k in ("status", "detail")},
                "message": "release accepted"}

    # --- the worker ---------------------------------------------------------------

    def start(self) -> None:
        if self.slurm is not None:
            self.worker.start()
        self.housekeeping.start()

    def stop(self) -> None:
        self.housekeeping.stop()
        self.worker.stop()

    def forget_released(self) -> list[str]:
        """Forget released services older than ``released_retention`` (rows and records).

        A released service whose Slurm job has not ended (a cancel that did not
        take) is kept: it is still followed and its job still cancelled.
        """
        with self._lock:
            followed = {job.name for job in self._jobs.values()
                        if job.job_id is not None and not job.ended}
        forgotten = self.rm.forget_released(keep=followed.__contains__)
        if not forgotten:
            return []
        with self._lock:
            jobs = [self._jobs.pop(name) for name, seq in forgotten
                    if name in self._jobs and self._jobs[name].seq == seq]
            for name, _ in forgotten:
                self._cancelled.pop(name, None)
            ticket = self.store.write([(_FORGET, (job.name, job.seq)) for job in jobs])
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
            unfinished = [j for j in self._jobs.values() if j.job_id is not None
                          and (not j.ended or (j.state != "GONE" and j.updated > since))]
        for job in unfinished:
            rec = self.rm.get(job.name)
            if rec is not None and rec.state == State.RELEASED and rec.seq == job.seq:
                out.append((rec, job))
        return out

    def reconcile(self) -> None:
        """One cycle: read every job in one call, then move each service forward."""
        assert self.slurm is not None
        live = self._live_jobs()
        if not live:
            return
        try:
            jobs = self.slurm.jobs()
        except (SlurmUnavailable, SlurmError) as e:
            if self._slurm_problem != str(e):
                log.warning("cannot read Slurm jobs (services wait): %s", e)
            self._slurm_problem = str(e)
            return
        if self._slurm_problem:
            log.info("Slurm is reachable again")
        self._slurm_problem = ""
        by_id = {j.job_id: j for j in jobs}
        by_tag = {j.comment: j for j in jobs if j.comment.startswith(TAG_PREFIX)}
        for rec, job in live:
            try:
                self._advance(rec, job, by_id, by_tag)
            except SlurmUnavailable as e:
                self._slurm_problem = str(e)
                log.warning("Slurm unreachable while handling service %s: %s", rec.name, e)
                return
            except WfmError as e:
                log.error("service %s: %s", rec.name, e)

    def _advance(self, rec: Reservation, job: ServiceJob, by_id: dict[int, JobState],
                 by_tag: dict[str, JobState]) -> None:
        now = self.clock()
        if job.job_id is None:
            found = by_tag.get(job_tag(rec.name, rec.seq))
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
        seen = by_id.get(job.job_id)  # type: ignore[arg-type]
        if seen is not None and (seen.name != rec.name or
                                 seen.comment not in ("", job_tag(rec.name, rec.seq))):
            seen = None  # Slurm gave the id of a job it lost to another job: not ours
        if seen is None and job.state == "PENDING" and rec.state == State.FREE \
                and not job.release_requested:
            # A slurmctld crash forgets the jobs it accepted but had not saved yet. This
            # one never started (PENDING, reservation never bound): submit it again.
            log.warning("service %s: Slurm lost job %d before it started; submitting again",
                        rec.name, job.job_id)
            self._update(job, job_id=None, state="", reason="", nodes="", exit_code=None)
            self.worker.wake()
            return
        if seen is not None:
            job = self._update(job, state=seen.state, reason=seen.reason,
                               nodes=",".join(seen.nodes), exit_code=seen.exit_code)
        elif job.state and not job.ended:
            job = self._update(job, state="GONE", reason="no longer known to Slurm")
        elif not job.state and job.updated < now - 60:
            job = self._update(job, state="GONE", reason="never seen in Slurm")
        # PENDING without its reservation: its setup can only fail (the job held forever).
        orphan = rec.state == State.RELEASED and job.state == "PENDING"
        if (job.release_requested or orphan) and not job.ended:
            sent = self._cancelled.get(rec.name)
            # PENDING after the cancel: Slurm requeued it (a slurmctld restart during the
            # cancel runs the job again): cancel again now, not after release_timeout.
            requeued = sent is not None and job.state == "PENDING"
            if sent is None or requeued or now - sent > self.config.release_timeout:
                # Slurm's cancel (signal SIGKILL through slurmrestd, as scancel does)
                # sends SIGTERM to every task, waits KillWait, then kills: the
                # service stages out on SIGTERM. A bare SIGTERM would reach srun
                # first, which then kills the tasks outright (checked on 22.05).
                log.info("service %s: cancelling Slurm job %d (release%s)", rec.name,
                         job.job_id, ", again" if sent else "")
                self.slurm.cancel(job.job_id, signal="SIGKILL")  # type: ignore[union-attr,arg-type]
                self._cancelled[rec.name] = now
        if (job.ended and rec.state != State.RELEASED
                and now - job.updated >= self.config.teardown_grace):
            detail = (f"Slurm job {job.job_id} ended {job.state}; resources freed by the "
                      "orchestrator (no burst-buffer teardown within "
                      f"{self.config.teardown_grace:.0f} s)")
            if job.release_requested:
                detail = f"released; {detail}"
            log.warning("service %s: %s", rec.name, detail)
            try:
                self.rm.delete_allocation(rec.name, detail=detail)
            except NotFound:
                pass

    def _update(self, job: ServiceJob, **changes: Any) -> ServiceJob:
        if all(getattr(job, k) == v for k, v in changes.items()):
            return job
        with self._lock:
            current = self._jobs.get(job.name, job)
            new = replace(current, **changes, updated=self.clock())
            self._save(new)
        if "state" in changes:
            log.info("service %s: Slurm job %s %s%s", job.name, new.job_id, new.state,
                     f" ({new.reason})" if new.reason else "")
        return new

    def _submit(self, rec: Reservation, job: ServiceJob) -> ServiceJob:
        assert self.slurm is not None
        spec = build_service_job(self.config, rec)
        req = rec.request
        fault("service_before_submit")
        try:
            try:
                job_id = self.slurm.submit(spec, user=req.user,
                                           user_token=req.user_slurm_token or None)
            except SlurmAuthError as e:
                if not req.user_slurm_token:
                    raise
                log.warning("service %s: Slurm refused %s's token (%s); submitting with the "
                            "SlurmUser token for %s", rec.name, req.user, e, req.user)
                job_id = self.slurm.submit(spec, user=req.user, user_token=None)
        except SlurmUnavailable:
            raise
        except WfmError as e:
            log.error("service %s: cannot submit its job: %s", rec.name, e)
            return self._update(job, error=str(e))
        fault("service_after_submit")
        log.info("service %s: Slurm job %d submitted for %s on %s", rec.name, job_id, req.user,
                 ",".join(spec.nodes))
        job = self._update(job, job_id=job_id, state="PENDING", error="")
        with self._lock:
            released = self._jobs[job.name].release_requested
        if released:
            self.worker.wake()
        return job


def build_service_job(config: Config, rec: Reservation) -> JobSpec:
    """The job description of a service (pure)."""
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
        comment=job_tag(req.name, rec.seq),
        stdout=config.service_output,
        bb=[service_directive(req.name)],
        launcher=("srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1"),
    )
