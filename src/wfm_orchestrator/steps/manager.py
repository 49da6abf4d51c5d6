"""The step manager: launch, progress, abort and status requests, and the steps'
part of the Slurm job follower (services first, then submission, then following).

Lock order: the service manager's locks are never taken while this manager's
lock is held.
"""

from __future__ import annotations

import bisect
import hmac
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

from ..accounts import Accounts, home_of
from ..config import Config
from ..errors import (
    Forbidden,
    InvalidRequest,
    NoSlurm,
    NotFound,
    RequestFailed,
    SlurmUnavailable,
    WfmError,
)
from ..fault import fault
from ..follower import Advance, Cancels, Follower, JobIndex, log_look_alike
from ..impersonation import submit_as_user
from ..model import StepPhase, check_name
from ..paging import Page
from ..repositories import steps as step_rows
from ..resource_manager import iso_time
from ..sbatch import translate
from ..services import HOUSEKEEPING_INTERVAL
from ..slurm import GONE, JobSpec, JobState, gone_reason
from ..slurm.api import SlurmApi
from ..store import Statement, Store, Ticket
from ..worker import Worker
from .jobs import build_mover_job, build_step_job, job_partition, job_tag
from .records import Step, StepJob
from .request import kind_of, parse_launch
from .status import derive_status, last_change

if TYPE_CHECKING:  # repositories.steps imports steps.records: no import cycle at run time
    from ..repositories.steps import Listed

log = logging.getLogger(__name__)

Phase = StepPhase
USABLE = ("ALLOCATED", "STAGEDIN")
NOT_USABLE = ("STOPPED", "STAGINGOUT", "STAGEDOUT", "TEARDOWN")
MAX_PROGRESS = 1024
CANCEL_REPEAT = 60.0  # s before a step's job is cancelled again
# Steps whose rows one write deletes (step_retention): the requests' writes commit between
# two such writes instead of waiting behind a year of steps.
FORGET_BATCH = 1000
# Ended steps a list reads from the database at a time (under the lock, merged with memory).
PAGE_CHUNK = 1001


def _first(item: tuple[tuple[float, str], Any]) -> tuple[float, str]:
    return item[0]


def check_mover_secret(step: Step, given: str | None) -> None:
    """A progress for ``step`` must carry the secret its own mover jobs were given.

    The shared mover token only says "some data mover": without this, any job
    holding it could write any step's progress.
    """
    if not given:
        raise Forbidden("step_secret", f"a progress for step {step.name} must carry the "
                        "step's secret (WFM_STEP_SECRET of its data mover jobs, sent as "
                        "step_secret)")
    if not step.mover_secret or not hmac.compare_digest(given.encode(),
                                                        step.mover_secret.encode()):
        raise Forbidden("step_secret", f"not the secret of step {step.name}: only the step's "
                        "own data movers may report its progress (send WFM_STEP_SECRET of "
                        "the mover job as step_secret)")


class StepManager:
    noun = "step"  # for the follower's logs

    def __init__(self, config: Config, store: Store, services: Any,
                 slurm: SlurmApi | None, clock: Callable[[], float] = time.time,
                 home: Callable[[str], str] = home_of, follower: Follower | None = None,
                 accounts: Accounts | None = None):
        self.config = config
        self.accounts = accounts or Accounts(config)
        self.store = store
        self.services = services  # ServiceManager: status(name) -> dict | None
        self.slurm = slurm
        self.clock = clock
        self.home = home
        self._lock = threading.Lock()
        # In memory: the steps still followed, and an ended one until its last write is
        # committed (then the database answers for it: _leave_memory). A year of ended
        # steps stays in the database only, read on demand (status, lists, progress).
        self._steps: dict[str, Step] = {}
        # The names in the order of the step lists, (created, name): pages are bisected in it.
        self._order: list[str] = []
        self._jobs: dict[str, dict[str, StepJob]] = {}
        # name -> the ticket of the last write of an ended step in memory
        self._pending: dict[str, Ticket] = {}
        # ended steps whose rows are being deleted (step_retention): unknown already
        self._forgetting: set[str] = set()
        self._waiting: dict[str, str] = {}  # name -> what it waits for (not durable)
        self._cancels = Cancels(CANCEL_REPEAT)  # keyed by (step, job key)
        # Shared with the service manager in the server (one read of Slurm per cycle).
        self.follower = follower or Follower(slurm, config.reconcile_interval,
                                             config.slurm_timeout * 3, flush=store.flush)
        self.follower.add(self)
        # Forgets the steps ended more than step_retention ago; runs with or without Slurm.
        self.housekeeping = Worker("step-housekeeping", self.forget_ended,
                                   HOUSEKEEPING_INTERVAL, 30.0)
        self._load()

    def _load(self) -> None:
        """The steps not known to have ended; those stored before the database said which
        ended (schema migration 10) are recorded so now and leave memory once committed."""
        steps, jobs = step_rows.load_live(self.store)  # in (created, name) order
        for step in steps:
            self._steps[step.name] = step
        self._order = list(self._steps)
        for job in jobs:
            self._jobs.setdefault(job.step, {})[job.key] = job
        with self._lock:
            ended = [(s, when) for s in steps if (when := self._ended_at(s)) is not None]
            if ended:
                ticket = self.store.write([self._ended_row(s, when) for s, when in ended])
                for s, _ in ended:
                    self._pending[s.name] = ticket
                    ticket.add_done_callback(partial(self._leave_memory, s.name))
        if ended:
            log.info("%d ended step(s) recorded as ended: read from the database from now on",
                     len(ended))

    # --- memory and the database ------------------------------------------------

    def _write(self, name: str, statements: list, step_changed: bool = False) -> Ticket:
        """Queue ``statements`` of step ``name`` (caller holds the lock) and the step's row
        when it changed or has ended (an ended step's row carries its last change: the
        start of its step_retention). An ended step leaves memory once committed."""
        step = self._steps[name]
        ended = self._ended_at(step)
        if ended is not None:
            statements = [*statements, self._ended_row(step, ended)]
        elif step_changed:
            statements = [*statements, step_rows.save_step(step)]
        ticket = self.store.write(statements)
        if ended is None:
            self._pending.pop(name, None)
        else:
            self._pending[name] = ticket
            ticket.add_done_callback(partial(self._leave_memory, name))
        return ticket

    def _ended_row(self, step: Step, ended: float) -> Statement:
        """The row of ended ``step`` (caller holds the lock), with the status its records
        give: what the lists show of it once it left memory."""
        status, detail, _ = derive_status(step, self._jobs.get(step.name, {}))
        return step_rows.save_step(step, ended, (status, detail))

    def _leave_memory(self, name: str, ticket: Ticket) -> None:
        """(On the store's writer thread) the last write of ended step ``name`` committed:
        the database answers for it from now on."""
        with self._lock:
            if ticket.error is not None or self._pending.get(name) is not ticket:
                return  # refused (memory is ahead of the database), or written again
            del self._pending[name]
            step = self._steps.get(name)
            if step is not None and self._ended_at(step) is not None:
                self._drop(name)

    def _drop(self, name: str) -> None:
        """Take ``name`` out of memory (caller holds the lock)."""
        i = bisect.bisect_left(self._order, self._order_key(name), key=self._order_key)
        if i < len(self._order) and self._order[i] == name:
            del self._order[i]
        del self._steps[name]
        for key in self._jobs.pop(name, {}):
            self._cancels.forget((name, key))
        self._waiting.pop(name, None)
        self._pending.pop(name, None)

    def _stored(self, name: str) -> tuple[Step, dict[str, StepJob]] | None:
        """An ended step that is not in memory, as committed (caller holds the lock, so it
        cannot leave memory meanwhile), or None."""
        if name in self._forgetting:
            return None
        return step_rows.load_one(self.store, name)

    def _hold(self, name: str) -> Step | None:
        """``name``'s step in memory (caller holds the lock): an ended one is read from the
        database and kept until its next write is committed."""
        step = self._steps.get(name)
        if step is None and (stored := self._stored(name)) is not None:
            step, jobs = stored
            self._steps[name] = step
            self._jobs[name] = jobs
            bisect.insort(self._order, name, key=self._order_key)
        return step

    # --- requests ---------------------------------------------------------------

    def launch(self, body: Any) -> tuple[dict[str, str], Ticket]:
        """step/launch: the answer, and the ticket to send it after (the step's record)."""
        req, _ = parse_launch(body, self.config, self.home)
        self.accounts.check(req.user)
        if self.slurm is None:
            raise NoSlurm()
        with self._lock:
            # Taken under the lock: steps enter the lists in launch order, at the end of
            # the pages (a clock stepped back aside).
            now = self.clock()
            old = self._steps.get(req.name)
            if old is None and (stored := self._stored(req.name)) is not None:
                old = stored[0]
            if old is not None:
                if old.request.canonical() != req.canonical():
                    raise RequestFailed(f"step {req.name} already exists with another request "
                                        "(step names are unique)")
                ticket = self.store.write([])  # the first launch's commit precedes this
                created = False
            else:
                step = Step(req.name, req.user, req, uuid.uuid4().hex[:12], Phase.WAITING, "",
                            None, now, now, mover_secret=secrets.token_urlsafe(24))
                self._steps[req.name] = step
                self._jobs[req.name] = {}
                bisect.insort(self._order, req.name, key=self._order_key)
                ticket = self._write(req.name, [step_rows.clear_jobs(req.name)], True)
                created = True
        if created:
            log.info("step %s accepted for %s", req.name, req.user)
            ticket.add_done_callback(self._wake_once_committed)
        return {"name": req.name, "status": "PENDING",
                "message": "step launch accepted" if created else "step already launched"
                }, ticket

    def _wake_once_committed(self, ticket: Ticket) -> None:
        # The follower acts on durable intents only: a refused write wakes nothing.
        if ticket.error is None:
            self.follower.wake()

    def progress(self, body: Any) -> tuple[dict[str, str], Ticket]:
        if not isinstance(body, dict):
            raise InvalidRequest("body", f"expected a JSON object, got {kind_of(body)}")
        for key in ("step_name", "datamover_name", "progress"):
            if key not in body:
                raise InvalidRequest(key, "is required")
        step_name = check_name(body["step_name"], "step_name")
        dm_name = check_name(body["datamover_name"], "datamover_name")
        text = body["progress"]
        if not isinstance(text, str):
            raise InvalidRequest("progress", f"expected a string, got {kind_of(text)}")
        given = body.get("step_secret")
        if given is not None and not isinstance(given, str):
            raise InvalidRequest("step_secret", f"expected a string, got {kind_of(given)}")
        text = "".join(c if c.isprintable() else " " for c in text)[:MAX_PROGRESS]
        now = self.clock()
        with self._lock:
            step = self._steps.get(step_name)
            stored = self._stored(step_name) if step is None else None
            if stored is not None:
                step = stored[0]
            if step is None:
                raise NotFound("step", step_name)
            check_mover_secret(step, given)
            if not any(dm.name == dm_name for dm in step.request.movers):
                raise NotFound("data mover", f"{dm_name} of step {step_name}")
            self._hold(step_name)
            key = f"dm:{dm_name}"
            # setdefault: after a restart, a step with no job recorded yet has no entry.
            jobs = self._jobs.setdefault(step_name, {})
            job = jobs.get(key) or StepJob(step_name, key, updated=now)
            job = replace(job, progress=text, progress_time=now)
            jobs[key] = job
            ticket = self._write(step_name, [step_rows.save_job(job)])
        return {"step_name": step_name, "datamover_name": dm_name,
                "message": "progress recorded"}, ticket

    def abort(self, name: str) -> tuple[dict[str, str], Ticket]:
        now = self.clock()
        with self._lock:
            step = self._hold(name)
            if step is None:
                raise NotFound("step", name)
            if step.abort_requested is None:
                step = replace(step, abort_requested=now, updated=now)
                self._steps[name] = step
                ticket = self._write(name, [], True)
                first = True
            else:
                ticket = self.store.write([])
                first = False
        if first:
            log.info("step %s: abort requested", name)
            ticket.add_done_callback(self._wake_once_committed)
        status = self.status(name) or {}
        return {"name": name, "status": status.get("status", ""),
                "detail": status.get("detail", ""),
                "message": "abort accepted" if first else "abort already requested"}, ticket

    # --- status -------------------------------------------------------------------

    def _status(self, step: Step, jobs: dict[str, StepJob] | None = None) -> dict[str, str]:
        """``step``'s status (caller holds the lock); ``jobs``: those of an ended step read
        from the database (else its jobs in memory)."""
        if jobs is None:
            jobs = dict(self._jobs.get(step.name, {}))
        status, detail, when = derive_status(step, jobs, self._waiting.get(step.name, ""))
        if self.follower.problem and step.phase != Phase.DONE:
            detail += f" [Slurm unreachable: {self.follower.problem}]"
        return {"user": step.user, "name": step.name, "status": status, "detail": detail,
                "time": iso_time(when)}

    def status(self, name: str) -> dict[str, str] | None:
        with self._lock:
            step = self._steps.get(name)
            if step is not None:
                return self._status(step)
            if name in self._forgetting:
                return None
            row = step_rows.listed(self.store, name)
            return self._listed_status(row) if row is not None else None

    def _listed_status(self, row: Listed) -> dict[str, str]:
        """The status of a step read from the database (caller holds the lock): an ended
        one's as stored with its rows; else derived from its records (not expected: a step
        not known to have ended is in memory)."""
        if row.ended is None:
            stored = self._stored(row.name)
            return self._status(*stored) if stored is not None else {}
        detail = row.detail
        if self.follower.problem and row.phase != Phase.DONE:
            detail += f" [Slurm unreachable: {self.follower.problem}]"
        return {"user": row.user, "name": row.name, "status": row.status, "detail": detail,
                "time": iso_time(row.ended)}

    def statuses(self, user: str | None = None) -> list[dict[str, str]]:
        """Every status (of ``user``'s steps), oldest first."""
        return self.page(None, None, user=user).items

    def counts(self) -> dict[str, int]:
        """How many steps have each status, as the step lists show them: the followed ones
        derived, the ended ones counted by the database. What a gauge needs, without making
        every status (statuses() of a year of steps, 1,000,000: ~7 s)."""
        with self._lock:
            out = step_rows.count_ended(self.store, [*self._steps, *self._forgetting])
            for step in self._steps.values():
                status = self._status(step)["status"]
                out[status] = out.get(status, 0) + 1
            return out

    def newest(self, n: int) -> list[dict[str, str]]:
        """The statuses of the last ``n`` steps of the step lists, oldest first: what a
        dashboard shows, reading n rows, not the list (statuses()[-n:])."""
        if n <= 0:
            return []
        with self._lock:
            steps, order = self._steps, self._order
            # Those of the database's last rows being forgotten are not shown: read as many
            # more, so that n remain.
            rows = [row for row in step_rows.listed_last(self.store, n + len(self._forgetting))
                    if row.name not in steps and row.name not in self._forgetting]
            merged: list[tuple[tuple[float, str], Step | Listed]] = [
                (self._order_key(name), steps[name]) for name in order[-n:]]
            merged += [((row.created, row.name), row) for row in rows]
            merged.sort(key=_first)
            return [self._status(item) if isinstance(item, Step) else self._listed_status(item)
                    for _, item in merged[-n:]]

    def _order_key(self, name: str) -> tuple[float, str]:
        return self._steps[name].created, name

    def page(self, after: tuple[float, str] | None, limit: int | None,
             keep: Callable[[Step | Listed], bool] | None = None, user: str | None = None
             ) -> Page[dict[str, str]]:
        """The statuses of the steps after key ``after`` = (created, name), oldest first (at
        most ``limit``, those ``keep`` accepts: it is given a Step, or the Listed row of an
        ended step read from the database, and may read their ``name`` and ``user``).
        ``user``: only that user's steps, chosen by the database's index (``keep`` would
        read every row before the page).

        The steps are read from the database in the list's order, a chunk of keys at a
        time (their name, user and, for an ended one, the status stored with its rows), and
        merged with the steps in memory of the same keys under the lock, memory winning
        (one snapshot per chunk: a page of up to PAGE_CHUNK - 1 items is one snapshot). The
        start is found by the database's index and by bisection in memory: a page costs its
        own length, not the list's.
        """
        chunk = PAGE_CHUNK if limit is None else min(limit + 1, PAGE_CHUNK)
        items: list[dict[str, str]] = []
        last: tuple[float, str] | None = None
        while True:
            with self._lock:
                rows = step_rows.listed_after(self.store, after, chunk, user)
                # The chunk covers the keys up to its last one (to the end when not full).
                upto = (rows[-1].created, rows[-1].name) if len(rows) == chunk else None
                order, key, steps = self._order, self._order_key, self._steps
                start = 0 if after is None else bisect.bisect_right(order, after, key=key)
                end = len(order) if upto is None else bisect.bisect_right(order, upto, key=key)
                merged: list[tuple[tuple[float, str], Step | Listed]] = [
                    (key(name), steps[name]) for name in order[start:end]
                    if user is None or steps[name].user == user]
                merged += [((row.created, row.name), row) for row in rows
                           if row.name not in steps and row.name not in self._forgetting]
                merged.sort(key=_first)
                for at, item in merged:
                    if keep is not None and not keep(item):
                        continue
                    if limit is not None and len(items) == limit:
                        return Page(items, last)
                    items.append(self._status(item) if isinstance(item, Step)
                                 else self._listed_status(item))
                    last = at
            if upto is None:
                return Page(items)
            after = upto

    def step(self, name: str) -> Step | None:
        with self._lock:
            step = self._steps.get(name)
            if step is None and (stored := self._stored(name)) is not None:
                step = stored[0]
            return step

    def jobs(self, name: str) -> dict[str, StepJob]:
        with self._lock:
            if name in self._steps:
                return dict(self._jobs.get(name, {}))
            stored = self._stored(name)
            return stored[1] if stored is not None else {}

    # --- the worker -----------------------------------------------------------------

    def start(self) -> None:
        self.follower.start()
        self.housekeeping.start()

    def stop(self) -> None:
        self.housekeeping.stop()
        self.follower.stop()

    def _ended_at(self, step: Step) -> float | None:
        """When ``step`` ended (its records' last change); None while it is followed."""
        if step.phase == Phase.DONE or (step.phase == Phase.FAILED and self._settled(step)):
            return last_change(step, self._jobs.get(step.name, {}))
        return None

    def forget_ended(self) -> list[str]:
        """Forget the steps that ended more than ``step_retention`` ago, with their jobs
        (data movers included): their records leave memory (and so the step lists) and
        their rows the state database. Returns their names.

        Without this, every step ever launched stayed in both, and memory, the lists and
        start-up grew for ever. A forgotten step is answered as an unknown one; its name
        may be launched again. The rows go in writes of FORGET_BATCH steps, each committed
        before the next is queued.
        """
        cutoff = self.clock() - self.config.step_retention
        with self._lock:
            old = [(s.name, s.launch_id) for s in self._steps.values()
                   if (ended := self._ended_at(s)) is not None and ended < cutoff]
            for name, _ in old:
                self._drop(name)
        forgotten = []
        while True:
            if not old:  # the ended steps in the database only, FORGET_BATCH at a time
                stored = step_rows.ended_before(self.store, cutoff, FORGET_BATCH)
                with self._lock:
                    old = [(name, launch_id) for name, launch_id in stored
                           if name not in self._steps]
                if not old:
                    break
            batch, old = old[:FORGET_BATCH], old[FORGET_BATCH:]
            names = {name for name, _ in batch}
            with self._lock:
                self._forgetting |= names
            try:
                self.store.write(step_rows.forget(batch)).wait()
            finally:
                with self._lock:
                    self._forgetting -= names
            forgotten += [name for name, _ in batch]
        if forgotten:
            log.info("forgot %d step(s) ended more than %.0f s ago (step_retention)",
                     len(forgotten), self.config.step_retention)
        return forgotten

    def _settled(self, step: Step) -> bool:
        jobs = self._jobs.get(step.name, {})
        return all(j.job_id is None or j.ended for j in jobs.values())

    def _live(self) -> list[Step]:
        with self._lock:
            return [s for s in self._steps.values()
                    if s.phase in (Phase.WAITING, Phase.SUBMITTED)
                    or (s.phase == Phase.FAILED and not self._settled(s))]

    def live(self) -> list[tuple[str, Advance]]:
        """The follower's view: each live step and how to move it forward."""
        return [(step.name, partial(self._advance, step)) for step in self._live()]

    def reconcile(self) -> None:
        """One cycle of the follower for the steps alone (one read of Slurm's jobs)."""
        self.follower.cycle([self])

    # --- one step ---------------------------------------------------------------------

    def _save_step(self, step: Step, **changes: Any) -> Step:
        with self._lock:
            current = self._steps[step.name]
            new = replace(current, **changes, updated=self.clock())
            self._steps[step.name] = new
            self._write(step.name, [], True)
        return new

    def _save_job(self, step: str, key: str, **changes: Any) -> StepJob:
        with self._lock:
            current = self._jobs.setdefault(step, {}).get(key) or StepJob(step, key)
            if current.updated and all(getattr(current, k) == v for k, v in changes.items()):
                return current
            new = replace(current, **changes, updated=self.clock())
            self._jobs[step][key] = new
            self._write(step, [step_rows.save_job(new)])
        if "state" in changes and changes["state"] != current.state:
            log.info("step %s: %s Slurm job %s %s%s", step, key, new.job_id, new.state,
                     f" ({new.reason})" if new.reason else "")
        return new

    def _refresh(self, step: Step, by_id: dict[int, JobState]) -> None:
        now = self.clock()
        for key, job in self.jobs(step.name).items():
            if job.job_id is None or job.ended:
                continue
            seen = by_id.get(job.job_id)
            listed = seen is not None
            partition = job_partition(self.config, key)
            if seen is not None and seen.comment != job_tag(step.launch_id, key):
                seen = None  # Slurm gave the id of a job it lost to another job: not ours
            elif seen is not None and not seen.runs_as(step.user, partition):
                log_look_alike(f"step {step.name} ({key})", seen, step.user, partition)
                seen = None
            if seen is not None:
                self._save_job(step.name, key, state=seen.state, reason=seen.reason,
                               nodes=",".join(seen.nodes), exit_code=seen.exit_code)
            elif gone := gone_reason(job.state, job.updated, now, taken=listed):
                self._save_job(step.name, key, state=GONE, reason=gone)

    def _cancel_all(self, step: Step, why: str) -> None:
        assert self.slurm is not None
        now = self.clock()
        for key, job in self.jobs(step.name).items():
            if job.job_id is None or job.ended:
                continue
            if not self._cancels.due((step.name, key), now):
                continue
            log.info("step %s: cancelling %s Slurm job %d (%s)", step.name, key, job.job_id, why)
            self._cancels.record((step.name, key), now)
            # SIGKILL through slurmrestd is scancel: SIGTERM to the tasks, then KILL.
            if not self.slurm.cancel(job.job_id, signal="SIGKILL"):
                self._save_job(step.name, key, state="CANCELLED", reason="cancelled (already "
                               "gone from Slurm)")

    def _advance(self, step: Step, jobs: JobIndex) -> None:
        self._refresh(step, jobs.by_id)
        if step.abort_requested is not None:
            self._cancel_all(step, "abort")
            if self._settled(self._steps[step.name]):
                self._save_step(step, phase=Phase.DONE)
                self._waiting.pop(step.name, None)
            return
        if step.phase == Phase.FAILED:
            self._cancel_all(step, step.detail)
            return
        if step.phase == Phase.WAITING:
            failure, waiting = self._check_services(step)
            if failure:
                self._fail(step, failure)
                return
            if waiting:
                self._waiting[step.name] = waiting
                return
            self._waiting[step.name] = "submitting the step's jobs"
            try:
                self._submit_all(step, jobs)
            except SlurmUnavailable:
                raise
            except WfmError as e:
                self._fail(step, f"cannot submit the step's jobs: {e}")
                return
            step = self._save_step(step, phase=Phase.SUBMITTED, detail="")
            self._waiting.pop(step.name, None)
            return
        # SUBMITTED
        req = step.request
        records = self.jobs(step.name)
        for dm in req.movers:
            job = records.get(dm.key)
            if dm.trigger == "step_start" and job and job.ended and job.state != "COMPLETED":
                # The step's job can never start (afterok): cancel it and the stage-out.
                self._cancel_all(step, f"stage-in mover {dm.name} ended {job.state}")
                break
        if self._settled(self._steps[step.name]):
            self._save_step(step, phase=Phase.DONE)

    def _check_services(self, step: Step) -> tuple[str, str]:
        """(failure, waiting): what makes the step fail, or what it waits for."""
        waiting = []
        for use in step.request.services:
            st = self.services.status(use.name) if self.services is not None else None
            if st is None:
                return f"service {use.name} is unknown (not reserved, or released long ago)", ""
            if st.get("user") != step.user:
                return (f"service {use.name} belongs to another user; step {step.name} runs "
                        f"as {step.user}"), ""
            self.services.claim(use.name, f"step {step.name}")  # unclaimed_timeout
            status = st.get("status", "")
            if status in USABLE:
                continue
            if status in NOT_USABLE:
                return f"service {use.name} is not usable ({status}: {st.get('detail', '')})", ""
            waiting.append(f"waiting for service {use.name} ({status}: {st.get('detail', '')})")
        return "", "; ".join(waiting)

    def _fail(self, step: Step, detail: str) -> None:
        log.warning("step %s failed: %s", step.name, detail)
        self._waiting.pop(step.name, None)
        step = self._save_step(step, phase=Phase.FAILED, detail=detail)
        self._cancel_all(step, "the step failed")

    def _submit_one(self, step: Step, key: str, spec: JobSpec,
                    jobs: JobIndex) -> int:
        assert self.slurm is not None
        job = self.jobs(step.name).get(key)
        if job is not None and job.job_id is not None:
            return job.job_id
        # The launch id is random but public once the step's first job is queued: the
        # owner and partition check keeps another user's copy of a later job's tag out.
        found = jobs.adoptable(job_tag(step.launch_id, key), step.user, spec.partition,
                               f"step {step.name} ({key})")
        if found is not None:
            log.info("step %s: adopting %s Slurm job %d (submitted before a restart)",
                     step.name, key, found.job_id)
            self._save_job(step.name, key, job_id=found.job_id, state=found.state)
            return found.job_id
        fault("step_before_submit")
        # step/launch carries no Slurm token: the SlurmUser's, if the site allows it.
        job_id = submit_as_user(self.slurm, self.config, spec, step.user, None,
                                f"step {step.name} ({key})")
        fault("step_after_submit")
        self._save_job(step.name, key, job_id=job_id, state="PENDING")
        log.info("step %s: %s submitted as Slurm job %d for %s", step.name, key, job_id,
                 step.user)
        return job_id

    def _submit_all(self, step: Step, jobs: JobIndex) -> None:
        req = step.request
        cmd = translate(req.command, req.command_env, partition=self.config.compute_partition,
                        home=req.home)
        start_ids = []
        for dm in req.movers:
            if dm.trigger == "step_start":
                spec = build_mover_job(self.config, req, dm, step.launch_id, (),
                                       step.mover_secret)
                start_ids.append(self._submit_one(step, dm.key, spec, jobs))
        spec = build_step_job(self.config, req, cmd, step.launch_id, tuple(start_ids))
        main_id = self._submit_one(step, "main", spec, jobs)
        for dm in req.movers:
            if dm.trigger == "step_stop":
                spec = build_mover_job(self.config, req, dm, step.launch_id, (main_id,),
                                       step.mover_secret)
                self._submit_one(step, dm.key, spec, jobs)

