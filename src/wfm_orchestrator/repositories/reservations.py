"""The ``reservation`` table: one row per reservation, its request, state and placement."""

from __future__ import annotations

from typing import TYPE_CHECKING

import ujson

from ..allocator import Placement
from ..model import ReservationState, ReserveRequest
from ..reservation import Reservation

if TYPE_CHECKING:
    from ..store import Statement, Store

_UPSERT = (
    "INSERT INTO reservation (name, user, type, request, token, state, seq, placement, detail,"
    " created, updated, bound_job, held_since, claimed) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
    " ON CONFLICT(name) DO UPDATE SET user=excluded.user, type=excluded.type,"
    " request=excluded.request, token=excluded.token, state=excluded.state, seq=excluded.seq,"
    " placement=excluded.placement, detail=excluded.detail, created=excluded.created,"
    " updated=excluded.updated, bound_job=excluded.bound_job, held_since=excluded.held_since,"
    " claimed=excluded.claimed"
)
_FORGET = "DELETE FROM reservation WHERE name = ? AND seq = ?"


def save(rec: Reservation) -> Statement:
    """Record this version of a reservation (its Slurm token only while it is not released)."""
    cached = rec._json
    if cached is None or cached[0] is not rec.request or cached[1] is not rec.placement:
        placement = (
            ujson.dumps([[p.server, list(p.core_list), p.msize, p.ssize] for p in rec.placement])
            if rec.placement is not None else None
        )
        request = ujson.dumps(rec.request.canonical(), sort_keys=True)
        cached = rec._json = (rec.request, rec.placement, request, placement)
    token = rec.request.user_slurm_token if rec.state != ReservationState.RELEASED else None
    return (_UPSERT, (rec.name, rec.request.user, rec.request.type, cached[2], token,
                      rec.state.value, rec.seq, cached[3], rec.detail, rec.created, rec.updated,
                      rec.bound_job, rec.held_since, rec.claimed))


def forget(rec: Reservation) -> Statement:
    """Drop the row of a reservation released long ago (released_retention)."""
    return (_FORGET, (rec.name, rec.seq))


def load_all(store: Store) -> list[Reservation]:
    """Every stored reservation, in arrival (seq) order."""
    out = []
    for row in store.query("SELECT * FROM reservation ORDER BY seq"):
        canonical = ujson.loads(row["request"])
        req = ReserveRequest(
            name=canonical["name"], user=canonical["user"],
            user_slurm_token=row["token"] or "", type=canonical["type"],
            servers=canonical["servers"], cores=canonical["cores"],
            msize=canonical["msize"], ssize=canonical["ssize"],
            locations=tuple(canonical["locations"]), flavor=canonical["flavor"],
            targets=tuple(canonical["targets"]), mountpoint=canonical["mountpoint"],
            job_id=canonical.get("job_id"))
        rec = Reservation(req, ReservationState(row["state"]), row["seq"], row["created"],
                          row["updated"], detail=row["detail"], bound_job=row["bound_job"],
                          held_since=row["held_since"], claimed=row["claimed"])
        if row["placement"] is not None:
            rec.placement = [Placement(s, list(c), m, z)
                             for s, c, m, z in ujson.loads(row["placement"])]
        out.append(rec)
    return out
