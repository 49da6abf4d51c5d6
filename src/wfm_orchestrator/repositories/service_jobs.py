"""The ``service_job`` table: one row per service's Slurm job (the latest reservation's)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..service_job import ServiceJob

if TYPE_CHECKING:
    from ..store import Statement, Store

_UPSERT = (
    "INSERT INTO service_job (name, seq, job_id, state, reason, nodes, exit_code, error,"
    " release_requested, updated, nonce, state_since, replaced_job, replacements,"
    " replaced_why) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
    " ON CONFLICT(name) DO UPDATE SET seq=excluded.seq, job_id=excluded.job_id,"
    " state=excluded.state, reason=excluded.reason, nodes=excluded.nodes,"
    " exit_code=excluded.exit_code, error=excluded.error,"
    " release_requested=excluded.release_requested, updated=excluded.updated,"
    " nonce=excluded.nonce, state_since=excluded.state_since,"
    " replaced_job=excluded.replaced_job, replacements=excluded.replacements,"
    " replaced_why=excluded.replaced_why"
)
_FORGET = "DELETE FROM service_job WHERE name = ? AND seq = ?"


def save(job: ServiceJob) -> Statement:
    """Record this version of a service's job."""
    return (_UPSERT, (job.name, job.seq, job.job_id, job.state, job.reason, job.nodes,
                      job.exit_code, job.error, job.release_requested, job.updated, job.nonce,
                      job.state_since, job.replaced_job, job.replacements, job.replaced_why))


def forget(job: ServiceJob) -> Statement:
    """Drop the row of a forgotten (released long ago) service's job."""
    return (_FORGET, (job.name, job.seq))


def load_all(store: Store) -> list[ServiceJob]:
    return [ServiceJob(row["name"], row["seq"], row["job_id"], row["state"], row["reason"],
                       row["nodes"], row["exit_code"], row["error"], row["release_requested"],
                       row["updated"], row["nonce"], row["state_since"], row["replaced_job"],
                       row["replacements"], row["replaced_why"])
            for row in store.query("SELECT * FROM service_job")]
