"""The ``reservation`` table: one row per reservation, its request, state and placement."""

from __future__ import annotations

import contextlib
import itertools
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import ujson

from ..allocator import InvalidDemand, NoCapacity, Placement, UnknownDatanode
from ..errors import StoreError
from ..model import ReservationState, ReserveRequest
from ..reservation import Reservation

if TYPE_CHECKING:
    from ..store import Statement, Store

_UPSERT = (
    "INSERT INTO reservation (name, \"user\", type, request, token, state, seq, placement, detail,"
    " created, updated, bound_job, held_since, claimed) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
    " ON CONFLICT(name) DO UPDATE SET \"user\"=excluded.\"user\", type=excluded.type,"
    " request=excluded.request, token=excluded.token, state=excluded.state, seq=excluded.seq,"
    " placement=excluded.placement, detail=excluded.detail, created=excluded.created,"
    " updated=excluded.updated, bound_job=excluded.bound_job, held_since=excluded.held_since,"
    " claimed=excluded.claimed"
)
_FORGET = "DELETE FROM reservation WHERE name = ? AND seq = ?"
# In the table's order: an ORDER BY seq made SQLite sort every row before the first (0.1 s
# of every start with 100,000); the rows are mostly in seq order already, the caller sorts.
_LOAD = ("SELECT name, token, state, seq, request, placement, detail, created, updated,"
         " bound_job, held_since, claimed FROM reservation")
_STATES = {state.value: state for state in ReservationState}
_new_request = tuple.__new__  # ReserveRequest._make without its Python frame (per row)
_HOLDING = (ReservationState.FREE, ReservationState.ALLOCATED)


class Encoded:
    """The JSON of the requests and placements written lately.

    A reservation is written several times within seconds (reserve, allocation, release)
    and its request and placement rarely change in between, so their JSON is worth
    keeping; kept in each record, it cost ~300 bytes per live reservation for its whole
    life. Entries are keyed by the identity of the object they encode (and hold it, so the
    identity is not reused); emptied when ``LIMIT`` of a kind are held.
    """

    LIMIT = 4096

    def __init__(self) -> None:
        self._requests: dict[int, tuple[ReserveRequest, str]] = {}
        self._placements: dict[int, tuple[list[Placement], str]] = {}

    def request(self, req: ReserveRequest) -> str:
        hit = self._requests.get(id(req))
        if hit is not None and hit[0] is req:
            return hit[1]
        text = ujson.dumps(stored_request(req))
        if len(self._requests) >= self.LIMIT:
            self._requests.clear()
        self._requests[id(req)] = (req, text)
        return text

    def placement(self, placement: list[Placement] | None) -> str | None:
        if placement is None:
            return None
        hit = self._placements.get(id(placement))
        if hit is not None and hit[0] is placement:
            return hit[1]
        text = ujson.dumps([[p.server, list(p.core_list), p.msize, p.ssize] for p in placement])
        if len(self._placements) >= self.LIMIT:
            self._placements.clear()
        self._placements[id(placement)] = (placement, text)
        return text


def stored_request(req: ReserveRequest) -> list[Any]:
    """The request as the ``request`` column keeps it: a JSON array of the request's fields
    after its name and token, in ``ReserveRequest`` order (the name has its column, the
    token its own). A start decodes one per live reservation: an array decodes in under
    half the time of the object with its keys that rows written before it hold (read too:
    ``stored_request_of``)."""
    return [req.user, req.type, req.servers, req.cores, req.msize, req.ssize,
            req.locations, req.flavor, req.targets, req.mountpoint, req.job_id]


def stored_request_of(name: str, token: str | None, text: str) -> ReserveRequest:
    """The request of a row (its name, token and ``request`` column) back, either form,
    its strings interned."""
    return _new_request(ReserveRequest, _request_fields(name, token, text))


def _request_fields(name: str, token: str | None, text: str) -> tuple[Any, ...]:
    """``stored_request_of`` as a plain tuple (what ``marshal`` sends: store_preload.py)."""
    intern = sys.intern
    c = ujson.loads(text)
    if type(c) is list:
        user, stype, servers, cores, msize, ssize, locations, flavor, targets, mountpoint, \
            job_id = c
    else:  # the object of the rows written before the array (kept until rewritten)
        user, stype, servers, cores, msize, ssize, locations, flavor, targets, mountpoint, \
            job_id = (c["user"], c["type"], c["servers"], c["cores"], c["msize"],
                      c["ssize"], c["locations"], c["flavor"], c["targets"],
                      c["mountpoint"], c.get("job_id"))
    return (name, intern(user), token and intern(token) or "", intern(stype), servers, cores,
            msize, ssize, tuple(map(intern, locations)) if locations else (),
            flavor and intern(flavor), tuple(map(intern, targets)) if targets else (),
            mountpoint and intern(mountpoint), job_id)


def save(rec: Reservation, encoded: Encoded) -> Statement:
    """Record this version of a reservation (its Slurm token only while it is not released)."""
    req = rec.request
    token = req.user_slurm_token if rec.state != ReservationState.RELEASED else None
    return (_UPSERT, (rec.name, req.user, req.type, encoded.request(req), token,
                      rec.state.value, rec.seq, encoded.placement(rec.placement), rec.detail,
                      rec.created, rec.updated, rec.bound_job, rec.held_since, rec.claimed))


def forget(rec: Reservation) -> Statement:
    """Drop the row of a reservation released long ago (released_retention)."""
    return (_FORGET, (rec.name, rec.seq))


def decode_rows(rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """``_LOAD``'s rows with their JSON decoded, as ``load_all`` makes its records of them:
    (request fields, state, seq, placement as stored, detail, created, updated, bound_job,
    held_since, claimed). Plain tuples, lists, strings and numbers: a start's reader
    process (store_preload.py) sends them with ``marshal``.

    The strings many reservations repeat (users, types, tokens, locations, ...) are
    interned: one copy each (``marshal`` keeps that). So are the requests many repeat (one
    user's services of one flavor): each ``request`` text is decoded once per call, its
    fields (after the name and token) then shared, and ``marshal`` sends them once.
    """
    intern = sys.intern
    request_of = _request_fields
    loads = ujson.loads
    decoded: dict[str, tuple[Any, ...]] = {}
    out = []
    for (name, token, state, seq, request, placement, detail, created, updated, bound_job,
         held_since, claimed) in rows:
        # The same float object when the times are equal (most are): 24 bytes each.
        if updated == created:
            updated = created
        if held_since == created:
            held_since = created
        fields = decoded.get(request)
        if fields is None:
            fields = decoded[request] = request_of("", None, request)
        out.append(((name, fields[1], token and intern(token) or "") + fields[3:], state, seq,
                    None if placement is None else loads(placement), detail and intern(detail),
                    created, updated, bound_job, held_since, claimed and intern(claimed)))
    return out


# What a start's reader process reads and how (Store(preload=...)).
PRELOAD = (_LOAD, decode_rows)


def load_all(store: Store, restore: Callable[[str, Any], list[Placement]]
             ) -> Iterator[Reservation]:
    """Every stored reservation, in the table's order (mostly arrival order, not always:
    sort by seq), read as a stream: decoded by the start's reader process where there is
    one (``Store.preloaded``: ``PreloadLost`` if it fails halfway), else here. One holding
    resources (FREE or ALLOCATED) takes its stored placement again through ``restore`` (the
    allocator's, which it then shares).
    """
    chunks = store.preloaded(_LOAD)
    if chunks is None:
        chunks = (decode_rows(batch) for batch in _batches(store.rows(_LOAD)))
    with contextlib.closing(chunks):  # a start that fails ends the reader process
        yield from _records(chunks, restore)


def _records(chunks: Iterator[list[tuple[Any, ...]]],
             restore: Callable[[str, Any], list[Placement]]) -> Iterator[Reservation]:
    new_request = _new_request
    for chunk in chunks:
        for (fields, state, seq, placement, detail, created, updated, bound_job, held_since,
             claimed) in chunk:
            name = fields[0]
            state = _STATES[state]
            rec = Reservation(new_request(ReserveRequest, fields), state, seq, created,
                              updated, None, detail, bound_job, held_since, claimed)
            if placement is not None:
                if state in _HOLDING:
                    try:
                        rec.placement = restore(name, placement)
                    except (NoCapacity, UnknownDatanode, InvalidDemand) as e:
                        # The inventory shrank under held reservations: say so loudly
                        # rather than over-commit or drop them silently.
                        raise StoreError(
                            f"reservation {name} no longer fits the configured datanodes "
                            f"({e}); restore the Datanode records or release it") from e
                else:
                    rec.placement = [Placement(s, c, m, z) for s, c, m, z in placement]
            yield rec


def _batches(rows: Iterator[tuple[Any, ...]], size: int = 4096
             ) -> Iterator[list[tuple[Any, ...]]]:
    while batch := list(itertools.islice(rows, size)):
        yield batch
