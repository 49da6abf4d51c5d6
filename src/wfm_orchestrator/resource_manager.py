"""The Resource Manager: reservations of datanode resources, their queue and status.

One lock serialises every decision on the allocator and the in-memory
records (a placement costs microseconds); the durable write is queued under
the same lock, so commit order is decision order. Each use case returns its
result and the write's commit ticket without waiting: the caller (the API
layer, api/serving.py) answers only once the ticket is committed. If the
commit fails, the store calls ``_resync`` (on its writer thread), which
reloads the durable state. The in-memory records are the authoritative copy
while running; at start they are rebuilt from the store.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import gc
import heapq
import logging
import operator
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from . import state_db
from .accounts import Accounts
from .allocator import Allocator, Datanode, Free, NoCapacity
from .config import Config, DatanodeSpec, adopt
from .errors import (
    AllocatorError,
    AlreadyAllocated,
    Forbidden,
    NotFound,
    PreloadLost,
    ReloadRefused,
    RequestFailed,
    StillQueued,
    StoreError,
    UnknownDatanode,
)
from .limits import Usage
from .model import DatanodeState, NodeReport, ReservationState, ReserveRequest, down_note
from .paging import Listing, Page, take
from .repositories import datanodes as drains
from .repositories import reservations
from .reservation import Reservation
from .state_guard import StateLock
from .store import DONE, Store, Ticket

log = logging.getLogger(__name__)

State = ReservationState


def iso_time(ts: float) -> str:
    """ISO 8601 UTC to the second (``2026-11-29T05:00:32Z``)."""
    return _iso_second(int(ts))


@functools.lru_cache(maxsize=4096)
def _iso_second(second: int) -> str:
    # Statuses are read far more often than they change: format each second once.
    return datetime.fromtimestamp(second, UTC).isoformat().replace("+00:00", "Z")


@contextlib.contextmanager
def objects_that_live() -> Iterator[None]:
    """No garbage collection while a start makes the records it keeps: each collection
    would walk every record made so far again, and none of them is garbage (with 100,000
    reservations, a third of the start went to collections). Then they are frozen
    (gc.freeze): the collections that would follow, young to full, walked them all once
    more (0.2 s before the first answer) and every full one again later; records hold no
    cycles and are freed by reference counting."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


# A reservation's seq, its place in arrival order: the key of every ordered list (in C).
_seq = operator.attrgetter("seq")


def _ignore(seconds: float) -> None:
    pass


@dataclass(frozen=True)
class DatanodeView:
    """One datanode as operators see it: capacity, free, state (a snapshot)."""

    name: str
    location: str | None
    state: DatanodeState
    reason: str
    cores: int
    free_cores: int
    msize: int
    free_msize: int
    ssize: int
    free_ssize: int


@dataclass(frozen=True)
class Counts:
    """Reservations by state, and the queue: what ``status``, metrics and the dashboard show."""

    by_state: dict[ReservationState, int]
    queued: int
    oldest_queued: float | None  # creation time of the queue's head


_SWEEP_MIN = 1024
# s before the first and at most between two reads of a state database that could not be
# read after a refused commit (_resync): a failover's outage is seconds to tens of them.
REREAD_FIRST_DELAY = 0.5
REREAD_MAX_DELAY = 5.0

# A fenced datanode's free resources (drained, or kept from new jobs by Slurm) are held in
# the allocator under this name, so no placement can land there (reservation names never
# start with '-': model.NAME_RE). Given back and taken again whenever a release frees
# resources on it.
_FENCE = "-drained:"


class ResourceManager:
    def __init__(self, config: Config, store: Store, clock: Callable[[], float] = time.time,
                 accounts: Accounts | None = None):
        self.config = config
        self.store = store
        self.clock = clock
        self.accounts = accounts or Accounts(config)
        self._lock = StateLock()
        self._rereader: threading.Thread | None = None  # _resync's, while the state is stale
        # Called (under the lock) with each reservation that changed, so the
        # service layer can react (start a service once its resources are held).
        self.listeners: list[Callable[[Reservation], None]] = []
        # Called (under the lock) with the seconds a reservation waited from its
        # reserve to holding resources (0 when placed at once): metrics at the edge.
        self.on_held: Callable[[float], None] = _ignore
        # name -> the commit ticket of its last write, while it may be pending: an
        # idempotent retry of a reserve is not answered before the first one's commit.
        # Committed ones are swept when the table has doubled (amortised: O(1) a write).
        self._tickets: dict[str, Ticket] = {}
        self._sweep_at = _SWEEP_MIN
        # name -> what Slurm says of the datanodes it keeps from new jobs (set_slurm_states):
        # in memory only, Slurm is the source and the first read after a start sets it.
        self._slurm: dict[str, NodeReport] = {}
        # name -> Slurm's words, of those whose running jobs are lost (services say so);
        # replaced whole, never changed, so statuses read it without the lock.
        self._down: Mapping[str, str] = MappingProxyType({})
        # The JSON of the requests and placements written lately (a reservation is written
        # several times within seconds): repositories.reservations.Encoded.
        self._encoded = reservations.Encoded()
        # The open listings (listing()): each keeps the reservations as they were when
        # it was taken; a record is copied into them before it changes in place (_changing).
        self._listings: weakref.WeakSet[Listing[Reservation]] = weakref.WeakSet()
        self._load()

    # --- start -------------------------------------------------------------

    def _new_allocator(self, config: Config | None = None) -> Allocator:
        config = config or self.config
        nodes = [Datanode(d.name, cores=d.core_list, msize=d.msize, ssize=d.ssize,
                          location=d.location) for d in config.datanodes.values()]
        return Allocator(nodes, policy=config.placement_policy,
                         neighbours=config.neighbours_map())

    def _load(self) -> None:
        try:
            self._load_records()
        except PreloadLost:  # logged: the start's reader process failed halfway
            self._load_records()  # ``preloaded`` is once: the rows are read here

    def _load_records(self) -> None:
        # Read into new structures, put in place only once every read succeeded: a read
        # that fails (the database unreachable during a resync) leaves the old ones whole.
        allocator = self._new_allocator()
        records: dict[str, Reservation] = {}
        order: list[Reservation] = []  # seq order, for pages (page()): bisected, not sorted
        queue: list[Reservation] = []
        holding: list[ReserveRequest] = []
        released = 0
        queued, ended = State.QUEUED, State.RELEASED  # looked up once, not per record
        stored = reservations.load_all(self.store, allocator.restore)
        # closed even when a record is refused: the start's reader process ends with it;
        # the allocator orders its datanodes once, after the last restore
        with objects_that_live(), contextlib.closing(stored), allocator.restoring():
            for rec in stored:
                state = rec.state
                if state is queued:
                    queue.append(rec)
                elif state is ended:
                    released += 1
                elif rec.placement is None:
                    raise StoreError(f"reservation {rec.name} is {state} without placement")
                else:
                    holding.append(rec.request)
                records[rec.request.name] = rec
                order.append(rec)
        seqs = list(map(_seq, order))
        if seqs != sorted(seqs):  # mostly sorted already (a sorted list sorts in one pass)
            order.sort(key=_seq)
            queue.sort(key=_seq)
            records = {rec.name: rec for rec in order}
        drained = drains.load_drained(self.store)
        self.allocator = allocator
        # name -> (allocator.version, state, answer) of server/resources (_resources_of);
        # emptied with each new allocator (its versions start again).
        self._resources_made: dict[str, tuple[int, tuple[DatanodeState, str], dict]] = {}
        self._records, self._order, self._queue = records, order, queue
        self._seq = order[-1].seq if order else 0
        # name -> (reason, since) of the datanodes an administrator drained
        self._drained: dict[str, tuple[str, float]] = {}
        # datanodes a reload removed while reservations held them: drained, in memory only
        self._removed: set[str] = set()
        # what each user and Slurm account holds (FREE or ALLOCATED): the Limit records
        self._usage = Usage(self.config)
        self._usage.add_all(holding)
        self._index_users()
        for name, (reason, since) in drained.items():
            if name not in self.config.datanodes:
                log.warning("datanode %s was drained but is no longer configured: ignored", name)
                continue
            self._drained[name] = (reason, since)
            self._fence(name)
        for name in self._slurm:  # after a failed commit's reload: Slurm's say is kept
            if name not in self._drained:
                self._fence(name)
        log.info("resource manager: %d reservations loaded (%d queued)",
                 len(order) - released, len(queue))

    def _resync(self) -> None:
        """After a failed commit, forget the in-memory changes: reload the durable state.

        If the state database cannot be read either, nothing is decided on the records
        in memory until it can (state_guard.py): a thread reads it again meanwhile.
        """
        with self._lock.held():
            log.error("reloading the resource manager state from %s", self.store.path)
            if self._reread():
                return
            if self._rereader is None or not self._rereader.is_alive():
                self._rereader = threading.Thread(target=self._reread_until_loaded,
                                                  name="rm-reread", daemon=True)
                self._rereader.start()

    def _reread(self) -> bool:
        """One read of the durable state (caller holds the lock, stale or not): True once
        it is in memory, else the lock refuses every use, saying why."""
        try:
            self._load()
        except Exception as e:  # noqa: BLE001 - whatever failed, memory is no one's truth
            reason = state_db.redact(str(e)).strip().splitlines()[0] or type(e).__name__
            if self._lock.stale is None:
                log.critical("resource manager: the state database cannot be read after a "
                             "refused commit (%s): every request that needs the "
                             "reservations is refused (503) until it can; reading it again "
                             "every %g s at most", reason, REREAD_MAX_DELAY)
            self._lock.stale = reason
            return False
        if self._lock.stale is not None:
            log.warning("resource manager: the state is read again from the state database: "
                        "serving")
        self._lock.stale = None
        return True

    def _reread_until_loaded(self) -> None:
        delay = REREAD_FIRST_DELAY
        while self.store.running:
            time.sleep(delay)
            delay = min(delay * 2, REREAD_MAX_DELAY)
            with self._lock.held():
                if self._lock.stale is None or self._reread():
                    return

    def _write(self, recs: list[Reservation]) -> Ticket:
        """Queue the rows of ``recs`` (caller holds the lock); their commit ticket."""
        ticket = self.store.write([reservations.save(rec, self._encoded) for rec in recs],
                                  on_failure=self._resync)
        tickets = self._tickets
        for rec in recs:
            tickets[rec.name] = ticket
        if len(tickets) >= self._sweep_at:
            self._tickets = {name: t for name, t in tickets.items() if not t.done}
            self._sweep_at = max(_SWEEP_MIN, 2 * len(self._tickets))
        return ticket

    def _pending(self, name: str) -> Ticket:
        ticket = self._tickets.get(name)
        return DONE if ticket is None else ticket

    # --- reserve -----------------------------------------------------------

    def reserve(self, req: ReserveRequest) -> tuple[Reservation, Ticket]:
        """Place or queue ``req``; the reservation and the ticket to answer after.

        A retry of a reservation that exists with the same request is answered
        with it, after the commit of its last write (which may still be pending).
        Its user must be an existing ordinary account (accounts.py; 400 otherwise).
        """
        self.accounts.check(req.user)
        with self._lock:
            rec = self._records.get(req.name)
            if rec is not None and rec.state != State.RELEASED:
                if rec.request.canonical() != req.canonical():
                    raise RequestFailed(
                        f"reservation {req.name!r} already exists with a different request; "
                        "release it first or choose another name")
                ticket = self._pending(req.name)
                if rec.request.user_slurm_token != req.user_slurm_token:
                    # A retry may carry a renewed token: the newest one is kept.
                    self._changing(rec)
                    rec.request = req
                    ticket = self._write([rec])
                    self._notify(rec)
                return rec, ticket
            return self._place_new(req)

    def _place_new(self, req: ReserveRequest) -> tuple[Reservation, Ticket]:
        if not self.allocator.can_fit_ever(req.servers, req.cores, req.msize, req.ssize,
                                           list(req.locations) or None):
            raise RequestFailed(self._never_fits(req))
        now = self._now_checked(req)
        self._seq += 1
        rec = Reservation(req, State.QUEUED, self._seq, now, now)
        over = self._usage.over(req)
        if over and self.config.limit_policy == "refuse":
            raise RequestFailed(f"reservation {req.name!r} refused: {over} "
                                "(limit_policy = refuse)")
        if over:
            rec.detail = f"waiting for {over}"
        elif self._may_pass_queue(now):
            try:
                self._take(rec, now)
            except NoCapacity as e:
                if e.ever:
                    raise RequestFailed(str(e)) from None
        if rec.state == State.QUEUED:
            self._queue.append(rec)
            rec.detail = rec.detail or "waiting for resources"
        self._reorder(self._records.get(req.name), rec)
        self._records[req.name] = rec
        ticket = self._write([rec])
        self._notify(rec)
        return rec, ticket

    def _never_fits(self, req: ReserveRequest) -> str:
        where = ", ".join(req.locations) if req.locations else "any location"
        cands = [d for d in self.config.datanodes.values()
                 if not req.locations or d.location in self._candidate_locations(req)]
        biggest = (f"the {len(cands)} candidate datanodes offer at most "
                   f"{max((len(d.core_list) for d in cands), default=0)} cores, "
                   f"{max((d.msize for d in cands), default=0)} MB of memory and "
                   f"{max((d.ssize for d in cands), default=0)} MB of storage each")
        return (f"reservation {req.name!r} can never fit: it needs {req.servers} datanode(s) "
                f"with {req.cores} cores, {req.msize} MB of memory and {req.ssize} MB of "
                f"storage each in {where}; {biggest}")

    def _candidate_locations(self, req: ReserveRequest) -> set[str]:
        locs = set(req.locations)
        for loc in req.locations:
            locs.update(self.config.locations[loc].neighbours)
        return locs

    def _now_checked(self, req: ReserveRequest) -> float:
        """The time of a new reservation, once it is known not to exceed its user's or its
        account's limit alone (it would wait for ever): refused then, naming the limit."""
        beyond = self._usage.beyond(req)
        if beyond:
            raise RequestFailed(f"reservation {req.name!r} can never fit {beyond}")
        return self.clock()

    def _may_pass_queue(self, now: float) -> bool:
        head = self._head()
        if head is None:
            return True
        if self.config.queue_policy == "backfill":
            return now - head.created < self.config.backfill_window
        return False

    def _head(self) -> Reservation | None:
        """The first queued reservation that waits for resources: one waiting for its
        user's or its account's limit blocks nobody else."""
        if not self.config.limits:
            return self._queue[0] if self._queue else None
        return next((r for r in self._queue if not self._usage.over(r.request)), None)

    def _take(self, rec: Reservation, now: float) -> None:
        req = rec.request
        self._changing(rec)
        rec.placement = self.allocator.reserve(req.name, servers=req.servers, cores=req.cores,
                                               msize=req.msize, ssize=req.ssize,
                                               locations=list(req.locations) or None)
        rec.state = State.FREE
        rec.updated = now
        rec.held_since = now
        rec.detail = ""
        self._usage.add(req)
        self.on_held(now - rec.created)

    def _admit_queued(self, now: float) -> list[Reservation]:
        """Admit queued reservations after a release (fifo, or backfill within its window)."""
        admitted: list[Reservation] = []
        backfill = self.config.queue_policy == "backfill"
        # Demands that did not fit in this pass cannot fit later in it: a pass only
        # takes resources. With backfill the whole queue may be scanned at each
        # release; queued demands repeat, and one allocator call per distinct
        # demand keeps a release with 10,000 queued at ~10 ms instead of ~40 ms.
        failed: set[tuple] = set()
        head: Reservation | None = None  # the first one left queued: the new head
        limits = bool(self.config.limits)
        for rec in self._queue:
            req = rec.request
            if limits:
                self._changing(rec)
                over = self._usage.over(req)
                if over:
                    rec.detail = f"waiting for {over}"
                    continue  # waits for its user's or account's releases, blocks nobody
                rec.detail = "waiting for resources"
            demand = (req.servers, req.cores, req.msize, req.ssize, req.locations)
            if demand not in failed:
                try:
                    self._take(rec, now)
                except NoCapacity:
                    failed.add(demand)
                else:
                    admitted.append(rec)
                    continue
            if head is None:
                head = rec
            if backfill and now - head.created < self.config.backfill_window:
                continue
            break
        if not backfill and not limits:
            del self._queue[:len(admitted)]  # fifo admits from the head only
        elif admitted:
            self._queue = [rec for rec in self._queue if rec.state == State.QUEUED]
        return admitted

    # --- server/allocation --------------------------------------------------

    def allocate(self, name: str, job_id: int | None = None,
                 may_bind: Callable[[Reservation], None] | None = None
                 ) -> tuple[dict[str, Any], Ticket]:
        """GET server/allocation: FREE -> ALLOCATED; the allocation and its commit ticket.

        ``job_id`` is the binding Slurm job, recorded: only its teardown may release the
        reservation, and its own repeated setup (a slurmctld restart, a requeue) gets the
        allocation again. ``may_bind(rec)`` raises to refuse the binding; it runs under
        the lock, so what it checked cannot change before the binding is recorded.
        """
        with self._lock:
            rec = self._live(name)
            if may_bind is not None:
                may_bind(rec)
            if rec.state == State.QUEUED:
                raise StillQueued(f"reservation {name!r} is queued at position "
                                  f"{self._position(rec)}: no resources yet")
            if rec.state == State.ALLOCATED:
                if job_id is not None and rec.bound_job == job_id:
                    return rec.allocation(), self._pending(name)
                by = f" by job {rec.bound_job}" if rec.bound_job is not None else ""
                raise AlreadyAllocated(f"reservation {name!r} is already ALLOCATED{by}")
            self._changing(rec)
            rec.state = State.ALLOCATED
            rec.bound_job = job_id
            rec.updated = self.clock()
            ticket = self._write([rec])
            self._notify(rec)
            # The one line that says which job holds the datanodes: a repeated setup of the
            # same job (returned above) does not write it again.
            log.info("reservation %s bound by %s", name,
                     f"job {job_id}" if job_id is not None else "a caller without a job id")
            return rec.allocation(), ticket

    def release(self, name: str, detail: str = "reservation deleted",
                bound_by: int | None = None) -> tuple[Reservation, Ticket]:
        """Free (or unqueue) ``name`` and admit what now fits; the record and its ticket.

        With ``bound_by`` (a teardown's job id), only if that job bound it: the record,
        never the job's script, proves it.
        """
        with self._lock:
            rec = self._live(name)
            if bound_by is not None and rec.bound_job != bound_by:
                held = (f"it is bound by job {rec.bound_job}" if rec.bound_job is not None
                        else f"it is {rec.state.value}, bound by no job")
                raise Forbidden("job_id", f"job {bound_by} did not bind reservation {name} "
                                f"({held}): a teardown releases only what its own job bound; "
                                "nothing was released")
            now = self.clock()
            if rec.state == State.QUEUED:
                self._queue.remove(rec)
                detail = "removed from the queue"
            else:
                self.allocator.release(name)
                self._usage.remove(rec.request)
                self._refence(p.server for p in rec.placement or ())
                if rec.detail:  # why its release was asked (release_reason)
                    detail = f"{rec.detail}; {detail}"
                # Why the service ended, most likely: said in its STOPPED status.
                note = down_note((p.server for p in rec.placement or ()), self._down, "was")
                if note:
                    detail = f"{detail}; {note}"
            self._changing(rec)
            rec.state = State.RELEASED
            rec.updated = now
            rec.detail = detail
            changed = [rec, *self._admit_queued(now)]
            ticket = self._write(changed)
            for r in changed:
                self._notify(r)
            return rec, ticket

    def unbind(self, name: str, job_id: int) -> Ticket:
        """ALLOCATED bound by ``job_id`` -> FREE, its placement kept; the commit ticket.

        For the replacement of a service job Slurm keeps PENDING (stuck_job_timeout):
        afterwards that job's teardown frees nothing and its setup binds nothing, while
        the reservation waits, whole, for the job that replaces it. Nothing to do when
        it is not bound (FREE or QUEUED: a replacement finished after a restart);
        ``Forbidden`` when another job (or a call without a job id) bound it.
        """
        with self._lock:
            rec = self._live(name)
            if rec.state != State.ALLOCATED:
                return self._pending(name)
            if rec.bound_job != job_id:
                by = (f"job {rec.bound_job}" if rec.bound_job is not None
                      else "a call without a job id")
                raise Forbidden("job_id", f"reservation {name} is bound by {by}, not by job "
                                f"{job_id}: only the job that bound it is unbound; nothing "
                                "changed")
            self._changing(rec)
            rec.state = State.FREE
            rec.bound_job = None
            rec.updated = self.clock()
            ticket = self._write([rec])
            self._notify(rec)
            log.info("reservation %s unbound from job %d: FREE again, its placement kept for "
                     "the job that replaces it", name, job_id)
            return ticket

    # --- drain and resume ------------------------------------------------------

    def _fenced(self, node: str) -> bool:
        """Is ``node`` kept from new placements: drained (or removed), or down in Slurm?"""
        return node in self._drained or node in self._slurm

    def _fence(self, node: str) -> None:
        """Hold what is free on fenced ``node`` so that nothing new is placed there."""
        free = self.allocator.free(node)
        if free.core_list or free.msize or free.ssize:
            self.allocator.restore(_FENCE + node,
                                   [(node, list(free.core_list), free.msize, free.ssize)])

    def _unfence(self, node: str) -> None:
        if _FENCE + node in self.allocator:
            self.allocator.release(_FENCE + node)

    def _refence(self, nodes) -> None:
        """After a release: the fence of each fenced node among ``nodes`` takes what it freed."""
        for node in set(nodes):
            if self._fenced(node):
                self._unfence(node)
                self._fence(node)

    def drain(self, node: str, reason: str) -> Ticket:
        """Take ``node`` out of placement (existing reservations stay); drained again
        updates the reason. The commit ticket of the record."""
        with self._lock:
            if node not in self.config.datanodes:
                raise NotFound("datanode", node)
            since = self._drained.get(node, (reason, self.clock()))[1]
            if not self._fenced(node):
                self._fence(node)
            self._drained[node] = (reason, since)
            log.warning("datanode %s drained: %s", node, reason)
            return self.store.write([drains.drain(node, reason, since)], on_failure=self._resync)

    def resume(self, node: str) -> Ticket:
        """Give ``node`` back to placement and admit what now fits; the commit ticket."""
        with self._lock:
            if node not in self.config.datanodes:
                raise NotFound("datanode", node)
            if node in self._removed:
                raise RequestFailed(f"datanode {node} was removed from {self.config.path}: "
                                    "it drains until its reservations end; add its Datanode "
                                    "record back and reload to keep it")
            rows = [drains.resume(node)]
            if self._drained.pop(node, None) is not None:
                if node in self._slurm:  # fenced until Slurm reports it up too
                    log.warning("datanode %s resumed, but Slurm keeps it from new jobs: %s; "
                                "no new placement until Slurm reports it up", node,
                                self._slurm[node].text)
                    return self.store.write(rows, on_failure=self._resync)
                self._unfence(node)
                log.warning("datanode %s resumed", node)
                admitted = self._admit_queued(self.clock())
                rows += [reservations.save(rec, self._encoded) for rec in admitted]
                ticket = self.store.write(rows, on_failure=self._resync)
                for rec in admitted:
                    self._tickets[rec.name] = ticket
                    self._notify(rec)
                return ticket
            return self.store.write(rows, on_failure=self._resync)

    # --- Slurm's node states ---------------------------------------------------

    def set_slurm_states(self, reports: Mapping[str, NodeReport]) -> Ticket:
        """Follow Slurm's say on the datanodes: ``reports`` names each one Slurm keeps from
        new jobs (DOWN, DRAIN, FAIL, ...; node_health.py decides), every other one is up.

        A node named is fenced like a drained one (no new placement; its reservations
        stay); one no longer named takes placements again, unless an administrator
        drained it, and the queue is admitted as after a resume. Each change is logged
        once. Returns the commit ticket of what the queue admitted.
        """
        with self._lock:
            reports = {n: r for n, r in reports.items() if n in self.config.datanodes}
            if reports == self._slurm:
                return DONE
            freed = False
            for node in self.config.datanodes:
                old, new = self._slurm.get(node), reports.get(node)
                if old == new:
                    continue
                was = self._fenced(node)
                if new is None:
                    del self._slurm[node]
                    drained = self._drained.get(node)
                    log.warning("datanode %s is up again in Slurm%s", node,
                                f" (still drained: {drained[0]})" if drained else "")
                else:
                    self._slurm[node] = new
                    log.warning("datanode %s is %s in Slurm: no new placement", node, new.text)
                if self._fenced(node) and not was:
                    self._fence(node)
                elif was and not self._fenced(node):
                    self._unfence(node)
                    freed = True
            self._down = MappingProxyType({n: r.text for n, r in self._slurm.items() if r.down})
            admitted = self._admit_queued(self.clock()) if freed else []
            if not admitted:
                return DONE
            ticket = self._write(admitted)
            for rec in admitted:
                self._notify(rec)
            return ticket

    def down_in_slurm(self) -> Mapping[str, str]:
        """name -> Slurm's words, of the datanodes whose running jobs Slurm lost (DOWN, not
        responding): the services there say so. Read without the lock (never changed)."""
        return self._down

    # --- reload ----------------------------------------------------------------

    def reload(self, new: Config) -> tuple[list[str], Ticket]:
        """Run with ``new`` (checked by config.reloaded): a new inventory holding every
        reservation where it is, the drains kept, the queue admitted to what was added.

        A datanode that ``new`` removes while reservations hold it stays, drained, until
        the next reload after they end. ``ReloadRefused`` (the running configuration
        kept) when a held reservation would not fit a changed datanode, or a queued one
        names a location that ``new`` removes. Returns the datanodes kept so, and the
        ticket of what the queue admitted.
        """
        with self._lock:
            held = [r for r in self._records.values()
                    if r.state in (State.FREE, State.ALLOCATED) and r.placement]
            used = {p.server for r in held for p in r.placement or ()}
            kept = [n for n in self.config.datanodes if n not in new.datanodes and n in used]
            datanodes = dict(new.datanodes)
            for name in kept:
                old: DatanodeSpec = self.config.datanodes[name]
                location = old.location if old.location in new.locations else None
                datanodes[name] = DatanodeSpec(name, old.core_list, old.msize, old.ssize,
                                               location)
            effective = replace(new, datanodes=MappingProxyType(datanodes))
            for rec in self._queue:
                gone = [loc for loc in rec.request.locations if loc not in new.locations]
                if gone:
                    raise ReloadRefused(f"queued reservation {rec.name} asks for location "
                                        f"{gone[0]}, which {new.path} removes: release it, "
                                        "or keep the location")
            allocator = self._new_allocator(effective)
            for rec in held:
                try:
                    allocator.restore(rec.name, rec.placement)
                except AllocatorError as e:  # no room, an unknown datanode or core id
                    raise ReloadRefused(f"reservation {rec.name} would no longer fit the "
                                        f"datanodes of {new.path} ({e}): keep their size "
                                        "until it is released") from None
            self.allocator = allocator
            self._resources_made = {}
            self._removed = set(kept)
            now = self.clock()
            self._drained = {n: d for n, d in self._drained.items() if n in datanodes}
            for name in kept:
                self._drained.setdefault(name, (f"removed from {new.path}: drains until "
                                                "its reservations end", now))
            self._slurm = {n: r for n, r in self._slurm.items() if n in datanodes}
            self._down = MappingProxyType({n: t for n, t in self._down.items()
                                           if n in datanodes})
            for name in datanodes:
                if self._fenced(name):
                    self._fence(name)
            adopt(self.config, effective)
            self._usage.regroup()  # the Account records may have moved users
            admitted = self._admit_queued(now)
            for rec in self._queue:  # each one left says why under the new Limit records
                over = self._usage.over(rec.request)
                self._changing(rec)
                rec.detail = f"waiting for {over}" if over else "waiting for resources"
            ticket = self._write(admitted) if admitted else DONE
            for rec in admitted:
                self._notify(rec)
            return kept, ticket

    # --- claims (unclaimed_timeout) -------------------------------------------

    def claim(self, name: str, by: str) -> Ticket | None:
        """Record that ``by`` (a job of the user, a step) claimed ``name``: the first claim only.

        None when there is nothing to record (unknown, released, or claimed already).
        """
        with self._lock:
            rec = self._records.get(name)
            if rec is None or rec.state == State.RELEASED or rec.claimed:
                return None
            self._changing(rec)
            rec.claimed = by
            log.info("reservation %s claimed by %s", name, by)
            return self._write([rec])

    def unclaimed(self, timeout: float) -> list[Reservation]:
        """Reservations holding resources, unclaimed ``timeout`` s after they took them."""
        cutoff = self.clock() - timeout
        with self._lock:
            return [r for r in self._records.values()
                    if r.state in (State.FREE, State.ALLOCATED) and not r.claimed
                    and (r.held_since if r.held_since is not None else r.created) <= cutoff]

    def release_reason(self, name: str, why: str) -> Ticket | None:
        """Say why ``name`` is being released: its status, then its release detail, say it."""
        with self._lock:
            rec = self._records.get(name)
            if rec is None or rec.state not in (State.FREE, State.ALLOCATED) or rec.detail:
                return None
            self._changing(rec)
            rec.detail = why
            return self._write([rec])

    # --- history ------------------------------------------------------------

    def forget_released(self, keep: Callable[[str], bool] = lambda name: False
                        ) -> tuple[list[tuple[str, int]], Ticket]:
        """Forget the reservations released more than ``released_retention`` ago.

        Their records leave memory (and so the status lists) and their rows the
        state database: without this, every reservation ever made stayed in both,
        and memory, status lists, start-up and garbage collections grew without
        bound. A forgotten name may be reserved again like any new one.
        ``keep(name)`` vetoes one (a service whose job is still followed). The
        newest reservation is always kept: after a restart, new reservations
        continue its sequence number. Returns the (name, seq) forgotten and the ticket of
        their rows' deletion.
        """
        cutoff = self.clock() - self.config.released_retention
        with self._lock:
            old = [rec for rec in self._records.values()
                   if rec.state == State.RELEASED and rec.updated < cutoff
                   and rec.seq != self._seq and not keep(rec.name)]
            if not old:
                return [], DONE
            for rec in old:
                del self._records[rec.name]
                self._tickets.pop(rec.name, None)
            self._order = [r for r in self._order if self._records.get(r.name) is r]
            self._index_users()
            ticket = self.store.write([reservations.forget(rec) for rec in old],
                                      on_failure=self._resync)
        return [(rec.name, rec.seq) for rec in old], ticket

    def _live(self, name: str) -> Reservation:
        rec = self._records.get(name)
        if rec is None or rec.state == State.RELEASED:
            raise NotFound("reservation", name)
        return rec

    def _notify(self, rec: Reservation) -> None:
        for listener in self.listeners:
            listener(rec)

    # --- reading ------------------------------------------------------------

    def get(self, name: str) -> Reservation | None:
        return self._records.get(name)

    def live(self) -> list[Reservation]:
        """Reservations not released, in arrival order."""
        with self._lock:
            return sorted((r for r in self._records.values() if r.state != State.RELEASED),
                          key=lambda r: r.seq)

    def _position(self, rec: Reservation, queue: list[Reservation] | None = None) -> int:
        """1-based position in ``queue`` (the queue now by default; 0 when not queued):
        the queue is in seq order."""
        if rec.state != State.QUEUED:
            return 0
        queue = self._queue if queue is None else queue
        # A bisection, not list.index: thousands may queue when the pool is full.
        i = bisect.bisect_left(queue, rec.seq, key=_seq)
        return i + 1 if i < len(queue) and queue[i].seq == rec.seq else 0

    def snapshot(self, name: str) -> tuple[Reservation, int] | None:
        """A reservation and its queue position (0 when not queued)."""
        with self._lock:
            rec = self._records.get(name)
            return (rec, self._position(rec)) if rec else None

    def _reorder(self, old: Reservation | None, new: Reservation) -> None:
        """Keep ``_order`` in seq order: ``new`` (the highest seq) at the end, the released
        record of the same name it replaces out."""
        if old is not None:
            i = bisect.bisect_left(self._order, old.seq, key=_seq)
            if i < len(self._order) and self._order[i] is old:
                del self._order[i]
            mine = self._by_user.get(old.request.user, [])
            i = bisect.bisect_left(mine, old.seq, key=_seq)
            if i < len(mine) and mine[i] is old:
                del mine[i]
                if not mine:
                    del self._by_user[old.request.user]
        self._order.append(new)
        self._by_user.setdefault(new.request.user, []).append(new)

    def _index_users(self) -> None:
        """Rebuild ``_by_user`` from ``_order``: user -> that user's records in seq order, so
        that a user's list costs its own length, not a scan of every reservation."""
        by_user: dict[str, list[Reservation]] = {}
        for rec in self._order:
            by_user.setdefault(rec.request.user, []).append(rec)
        self._by_user = by_user

    def _ordered(self, users: Iterable[str] | None) -> list[Reservation]:
        """The records in seq order: all of them, or those of ``users`` (caller holds the
        lock)."""
        if users is None:
            return self._order
        lists = [self._by_user[u] for u in users if u in self._by_user]
        if len(lists) <= 1:
            return lists[0] if lists else []
        return list(heapq.merge(*lists, key=_seq))

    def _changing(self, rec: Reservation) -> None:
        """Before ``rec`` changes in place (caller holds the lock): the open listings keep
        it as it is."""
        if self._listings:
            for listing in self._listings:
                listing.keep(rec)

    def page(self, after: int | None, limit: int | None,
             keep: Callable[[Reservation], bool] | None = None,
             users: Iterable[str] | None = None,
             render: Callable[[Reservation, int], Any] | None = None) -> Page[Any]:
        """The reservations after seq ``after`` in arrival order (at most ``limit``, those
        of ``users`` if given, those ``keep`` accepts) with their queue positions, or
        ``render(rec, position)`` of each: one snapshot, under the lock.

        The start is found by bisection: a page costs its own length, not the list's;
        with ``users``, the length of those users' lists.
        """
        with self._lock:
            ordered = self._ordered(users)
            start = 0 if after is None else bisect.bisect_right(ordered, after, key=_seq)
            found = take(ordered, start, limit, keep, _seq)
            if render is None:
                return Page([(r, self._position(r)) for r in found.items], found.next)
            return Page([render(r, self._position(r)) for r in found.items], found.next)

    def listing(self, after: int | None = None,
                keep: Callable[[Reservation], bool] | None = None,
                users: Iterable[str] | None = None,
                capture: Callable[[], Any] = lambda: None
                ) -> tuple[Any, Callable[[Callable[[Reservation, int], Any], int],
                                         Iterator[list[Any]]]]:
        """A whole list (as page() without a limit) as it is now, to render in chunks.

        Costs a copy of the references under the lock; the rendering, chunk by chunk, holds
        the lock for one chunk at a time (paging.Listing). Returns ``capture()``, called
        under the lock (the owner of other state in the items takes its snapshot there),
        and ``chunks(render, size)``: lists of ``render(rec, position)``, in order, each
        for the reservations ``keep`` accepts among ``size`` of the list.
        """
        with self._lock:
            ordered = self._ordered(users)
            start = 0 if after is None else bisect.bisect_right(ordered, after, key=_seq)
            listing = Listing(ordered[start:], self._lock, _seq)
            queue = list(self._queue)
            self._listings.add(listing)
            captured = capture()

        def chunks(render: Callable[[Reservation, int], Any], size: int) -> Iterator[list[Any]]:
            def one(rec: Reservation) -> Any:
                if keep is not None and not keep(rec):
                    return None
                return render(rec, self._position(rec, queue))
            try:
                yield from listing.chunks(one, size)
            finally:
                self._listings.discard(listing)

        return captured, chunks

    def users(self) -> set[str]:
        """The users of the reservations in memory (live, and released until forgotten)."""
        with self._lock:
            return set(self._by_user)

    def newest_snapshots(self, limit: int, keep: Callable[[Reservation], bool]
                         ) -> list[tuple[Reservation, int]]:
        """The ``limit`` newest reservations ``keep`` accepts, in arrival order, with their
        queue positions: what the dashboard shows, without reading the other 100,000."""
        out: list[tuple[Reservation, int]] = []
        with self._lock:
            for rec in reversed(self._order):
                if len(out) == limit:
                    break
                if keep(rec):
                    out.append((rec, self._position(rec)))
        out.reverse()
        return out

    def snapshots(self, user: str | None = None) -> list[tuple[Reservation, int]]:
        with self._lock:
            recs = [r for r in self._records.values() if user is None or r.request.user == user]
            return [(r, self._position(r)) for r in sorted(recs, key=lambda r: r.seq)]

    def resources(self, server: str) -> dict[str, Any]:
        with self._lock:
            try:
                return self._resources_of(server)
            except UnknownDatanode:
                raise NotFound("datanode", server) from None

    def _resources_of(self, server: str) -> dict[str, Any]:
        """The server/resources answer of ``server`` as it is now (caller holds the lock).

        Made again only when the datanode's free resources (``allocator.version``) or its
        state changed since it was last made: a page of 1,000 datanodes is then ~0.5 µs a
        datanode instead of ~5 (two 64-core lists copied and a dict built each), and the
        answers are shared (their readers serialize them, never change them). Costs one
        answer kept per datanode listed, ~1 KB with 64 cores (the capacity's core list
        shared by the datanodes of one wfm.conf record).
        """
        version = self.allocator.version(server)
        state = self.datanode_state(server)
        made = self._resources_made.get(server)
        if made is not None and made[0] == version and made[1] == state:
            return made[2]
        cap = self.allocator.capacity(server)
        cap = cap._replace(core_list=_shared_list(tuple(cap.core_list)))
        answer = _resources_item(self._free(server), cap, *state)
        self._resources_made[server] = (version, state, answer)
        return answer

    def _free(self, node: str) -> Free:
        """What is free on ``node``, a drained node's fenced resources included."""
        free = self.allocator.free(node)
        if _FENCE + node not in self.allocator:
            return free
        [p] = self.allocator.reservation(_FENCE + node)
        return Free(sorted([*free.core_list, *p.core_list]), free.msize + p.msize,
                    free.ssize + p.ssize)

    def datanode_state(self, name: str) -> tuple[DatanodeState, str]:
        """(state, reason) of a datanode: the one place readers ask. Drained by an
        administrator wins over down in Slurm; the reason then names both."""
        drained = self._drained.get(name)
        slurm = self._slurm.get(name)
        if drained is not None:
            also = f"; Slurm: {slurm.text}" if slurm is not None else ""
            return DatanodeState.DRAINED, drained[0] + also
        if slurm is not None:
            return DatanodeState.DOWN, f"Slurm: {slurm.text}"
        return DatanodeState.UP, ""

    def drained(self) -> dict[str, tuple[str, float]]:
        """name -> (reason, since) of the drained datanodes."""
        with self._lock:
            return dict(self._drained)

    def datanodes(self, names: list[str] | None = None) -> list[DatanodeView]:
        """Every configured datanode (or those of ``names``) with its capacity, what is free
        and its state."""
        out = []
        with self._lock:
            for name in self.config.datanodes if names is None else names:
                spec = self.config.datanodes.get(name)
                if spec is None:
                    continue  # removed by a reload since ``names`` was read
                free = self._free(name)
                cap = self.allocator.capacity(name)
                state, reason = self.datanode_state(name)
                out.append(DatanodeView(name, spec.location, state, reason,
                                        len(cap.core_list), len(free.core_list),
                                        cap.msize, free.msize, cap.ssize, free.ssize))
        return out

    def counts(self) -> Counts:
        """Reservations by state (released ones until forgotten) and the queue's head."""
        by_state = dict.fromkeys(State, 0)
        with self._lock:
            for rec in self._records.values():
                by_state[rec.state] += 1
            head = self._queue[0].created if self._queue else None
            return Counts(by_state, len(self._queue), head)

    def queued(self, limit: int) -> list[Reservation]:
        """The first ``limit`` reservations of the queue, in queue order."""
        with self._lock:
            return self._queue[:limit]

    def all_resources(self, names: list[str] | None = None) -> list[dict[str, Any]]:
        """server/resources of every datanode (or of those of ``names``): one snapshot."""
        return [item for chunk in self.resources_chunks(names, 0) for item in chunk]

    def resources_chunks(self, names: list[str] | None, size: int
                         ) -> Iterator[list[dict[str, Any]]]:
        """all_resources(names) ``size`` at a time (0: at once), from one snapshot of the
        datanodes taken now under the lock (each datanode's answer as _resources_of keeps
        it, made again if it changed). A name a reload removed is left out."""
        with self._lock:
            datanodes = self.config.datanodes
            answers = [(name, self._resources_of(name))
                       for name in (datanodes if names is None else names) if name in datanodes]
        return _resources_chunks(answers, size or len(answers) or 1)


def _resources_chunks(answers: list[tuple[str, dict[str, Any]]], size: int
                      ) -> Iterator[list[dict[str, Any]]]:
    for i in range(0, len(answers), size):
        yield [{"server_name": name, "server_resources": answer}
               for name, answer in answers[i:i + size]]


@functools.lru_cache(maxsize=256)
def _shared_list(core_ids: tuple[int, ...]) -> list[int]:
    """One list of ``core_ids`` for every kept answer of datanodes with those cores (the
    answers are never changed: see ResourceManager._resources_of)."""
    return list(core_ids)


def _resources_item(free: Free, cap: Free, state: DatanodeState, reason: str
                    ) -> dict[str, Any]:
    """A datanode's server/resources answer. state and reason: additive to the spec's
    answer (a drained node's free is free, but no new reservation is placed there).
    ``free`` and ``cap`` as _resources_of reads them: their core lists are made for this
    answer or shared by answers nobody changes, and the answer keeps them."""
    return {"free_cores": len(free.core_list), "cores": len(cap.core_list),
            "free_core_list": free.core_list, "core_list": cap.core_list,
            "free_msize": free.msize, "msize": cap.msize,
            "free_ssize": free.ssize, "ssize": cap.ssize,
            "state": state.value, "reason": reason}
