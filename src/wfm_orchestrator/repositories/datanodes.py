"""The ``datanode_drain`` table: the datanodes an administrator drained, and why."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..store import Statement, Store

_UPSERT = ("INSERT INTO datanode_drain (name, reason, since) VALUES (?,?,?)"
           " ON CONFLICT(name) DO UPDATE SET reason=excluded.reason, since=excluded.since")
_DELETE = "DELETE FROM datanode_drain WHERE name = ?"


def drain(name: str, reason: str, since: float) -> Statement:
    return (_UPSERT, (name, reason, since))


def resume(name: str) -> Statement:
    return (_DELETE, (name,))


def load_drained(store: Store) -> dict[str, tuple[str, float]]:
    """name -> (reason, since) of every drained datanode."""
    return {row["name"]: (row["reason"], row["since"])
            for row in store.query("SELECT name, reason, since FROM datanode_drain")}
