"""Pure readers of slurmrestd responses: job states, job ids, errors.

Each reader takes the HTTP status and the decoded JSON body (or None when
the body is not JSON) and returns a model or raises a typed error from
:mod:`wfm_orchestrator.errors` carrying Slurm's own text. Tested against
responses captured from the mini-cluster (tests/unit/captured/).

What differs between API versions (job descriptions and listed jobs, pings,
cancels) is in :mod:`.versions`; this module holds what they share. Facts
about slurmrestd 22.05 / v0.0.38 these readers rely on (seen on the
mini-cluster, see docs/slurm.md):

* every error is HTTP 500 with ``errors: [{error, error_number|error_code,
  description, source}]``; a missing or malformed auth header is a
  plain-text HTTP 401 "Authentication failure";
* a token slurmctld refuses (bad signature, expired, or naming another
  user) is *not* reported as such: slurmctld drops the connection and
  slurmrestd answers 500 with error_number -1 "Unspecified error" (reads,
  ping) or error_code 5005 "Zero Bytes were transmitted or received"
  (submit). Those two signatures are read as :class:`SlurmAuthError`;
  but a *down slurmctld* gives the same -1 on reads (after ~9 s), so the
  client confirms with a ping (:func:`looks_refused`);
* a submit may answer a job id *and* an error (e.g. 2068 "Required node
  not available" while nodes register): the job exists, so the id wins;
* ``exit_code`` is the raw wait status (exit 3 -> 768).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ClusterShell.NodeSet import NodeSet, NodeSetException

from ..errors import SlurmAuthError, SlurmError, SlurmUnavailable

# Job states after which Slurm will not run the job again.
TERMINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
    "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "SPECIAL_EXIT", "REVOKED",
})
ACTIVE_STATES = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
    "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED",
    "RESV_DEL_HOLD",
})

# Errors slurmrestd 22.05 reports when slurmctld refused the caller's token.
_AUTH_SIGNATURES = {(-1, "Unspecified error"), (5005, "Zero Bytes were transmitted or received")}
# Errors meaning slurmctld itself cannot be reached (slurmrestd is up).
# connection failure, timeouts, connect error; 24.11: 1800 "Unable to contact slurm controller"
_UNREACHABLE_NUMBERS = {1001, 1002, 1800, 5004}
# 24.11 says so: 1007 "Protocol authentication error" (HTTP 511) for a token slurmctld refuses.
_AUTH_NUMBERS = {1007}


# Our own mark, never Slurm's: a followed job Slurm no longer knows (it forgot it
# MinJobAge after its end, lost it in a slurmctld crash, or never had it).
GONE = "GONE"
# A followed job in one of these will not change any more (as far as we can know).
ENDED_STATES = TERMINAL_STATES | {GONE}
# A submitted job absent from Slurm's list this long after our last record of it was
# never accepted (or lost at once): it counts as gone. Slurm lists a job it accepted
# at once, so this only needs to cover a slow read.
NEVER_SEEN_AFTER = 60.0


def has_ended(state: str) -> bool:
    """A followed job in this state will not run again (Slurm's terminal states, or gone)."""
    return state in ENDED_STATES


def gone_reason(state: str, updated: float, now: float, taken: bool = False) -> str:
    """Why a followed job missing from Slurm's job list counts as gone ("" if not yet).

    ``state`` is the last state recorded for it ("" before Slurm ever listed it),
    ``updated`` when that record last changed. ``taken``: Slurm lists another job
    (another user's, partition's or tag's) under its id, so ours is lost now.
    """
    if state in ENDED_STATES:
        return ""
    if taken:
        return "its job id now names another job (Slurm lost ours)"
    if state:
        return "no longer known to Slurm"
    if updated < now - NEVER_SEEN_AFTER:
        return "never seen in Slurm"
    return ""


def exit_status_text(exit_code: int | None) -> str:
    """``", exit status N"`` for a job that exited non-zero ("" otherwise).

    A raw wait status (exit 3 -> 768) reads as the same N as a decoded one.
    """
    if not exit_code:
        return ""
    return f", exit status {exit_code >> 8 if exit_code > 255 else exit_code}"


@dataclass(frozen=True)
class JobState:
    """What the orchestrator needs to know of one Slurm job.

    state      Slurm's base state (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, ...)
    reason     why it waits or ended ("" when Slurm says "None")
    nodes      allocated nodes, expanded (empty while pending)
    exit_code  the script's exit status once it ended (None before), from the wait status
    signal     the signal that ended it (0 if none)
    """

    job_id: int
    name: str
    comment: str
    state: str
    reason: str
    nodes: tuple[str, ...]
    exit_code: int | None
    user: str
    partition: str = ""
    signal: int = 0
    submit_time: int = 0
    start_time: int = 0
    end_time: int = 0
    burst_buffer_state: str = ""
    burst_buffer: str = ""  # the job's #BB_LUA directive lines, as Slurm recorded them

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def runs_as(self, user: str, partition: str) -> bool:
        """Is this job the user's, on the partition the orchestrator submits to? A tag
        (comment) can be copied by anyone who reads squeue; the owner and partition cannot."""
        return self.user == user and self.partition == partition

    @property
    def is_active(self) -> bool:
        return not self.is_terminal


# --- errors -------------------------------------------------------------------


def slurm_errors(body: Any) -> list[dict[str, Any]]:
    """The ``errors`` list of a response (empty when absent or malformed)."""
    if isinstance(body, dict) and isinstance(body.get("errors"), list):
        return [e for e in body["errors"] if isinstance(e, dict)]
    return []


def error_number(err: dict[str, Any]) -> int | None:
    n = err.get("error_number", err.get("error_code"))
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def format_errors(errors: Iterable[dict[str, Any]]) -> str:
    """Slurm's own words: ``description (error N: text, from source)`` joined by ``; ``."""
    parts = []
    for e in errors:
        text = str(e.get("error") or "")
        desc = str(e.get("description") or "")
        num = error_number(e)
        detail = ", ".join(x for x in (f"error {num}" if num is not None else "",
                                       text, f"from {e['source']}" if e.get("source") else "")
                           if x)
        parts.append(f"{desc} ({detail})" if desc else detail)
    return "; ".join(p for p in parts if p) or "no error text"


def looks_refused(status: int, body: Any) -> bool:
    """The 22.05 signature of a refused token -- also what a down slurmctld gives on reads
    (-1 "Unspecified error" after slurmrestd's own connect timeout). The client tells
    them apart by pinging with the SlurmUser token."""
    sigs = {(error_number(e), str(e.get("error", ""))) for e in slurm_errors(body)}
    return status == 500 and bool(sigs) and sigs <= _AUTH_SIGNATURES


def raise_for_response(status: int, body: Any, what: str, text: str = "") -> None:
    """Raise the typed error a response means, or return if it is a success.

    ``what`` names the call ("submit job alice_s1", "read jobs") for the message;
    ``text`` is the raw body when it was not JSON.
    """
    errors = slurm_errors(body)
    if status in (401, 403):
        raise SlurmAuthError(f"{what}: slurmrestd refused the credentials (HTTP {status}: "
                             f"{(text or format_errors(errors)).strip()[:200]})", status, errors)
    if status == 200 and not errors:
        return
    if body is None:
        raise SlurmError(f"{what}: HTTP {status}, not JSON: {text.strip()[:200]!r}", status, [])
    sigs = {(error_number(e), str(e.get("error", ""))) for e in errors}
    if (sigs and sigs <= _AUTH_SIGNATURES) or any(error_number(e) in _AUTH_NUMBERS
                                                 for e in errors):
        raise SlurmAuthError(
            f"{what}: slurmctld refused the token (bad, expired, or not for this user); "
            f"Slurm said: {format_errors(errors)}", status, errors)
    if any(error_number(e) in _UNREACHABLE_NUMBERS for e in errors):
        raise SlurmUnavailable(f"{what}: slurmrestd cannot reach slurmctld: "
                               f"{format_errors(errors)}", status, errors)
    raise SlurmError(f"{what}: {format_errors(errors)}", status, errors)


# --- readers ------------------------------------------------------------------


def parse_submit(status: int, body: Any, what: str = "submit", text: str = "") -> int:
    """The job id of a submit response (an id with errors still means submitted)."""
    if isinstance(body, dict):
        jid = body.get("job_id")
        if isinstance(jid, int) and not isinstance(jid, bool) and jid > 0 and status == 200:
            return jid
    raise_for_response(status, body, what, text)
    raise SlurmError(f"{what}: the response has no job_id", status, slurm_errors(body))


def expand_nodes(nodes: Any) -> tuple[str, ...]:
    if not isinstance(nodes, str) or not nodes.strip():
        return ()
    try:
        return tuple(NodeSet(nodes))
    except NodeSetException:
        return (nodes,)


def plain_int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def is_unknown_job(errors: Iterable[dict[str, Any]]) -> bool:
    """Slurm's 2017 "Invalid job id specified": the job is unknown (or long gone)."""
    return any(error_number(e) == 2017 for e in errors)
