"""The whole error hierarchy of the orchestrator.

Domain code raises these with the facts (the offending value, what would be
valid); the API edge (api/errors.py) and the CLI turn them into HTTP
responses and exit codes. Errors subclass built-ins where a caller might
reasonably catch the built-in (``NotFound`` is a ``KeyError``).
"""

from __future__ import annotations

from dataclasses import dataclass


class WfmError(Exception):
    """Base of every error the orchestrator raises on purpose."""


# --- configuration ---------------------------------------------------------


@dataclass(frozen=True)
class ConfigProblem:
    """One problem found in a configuration file, with where it is."""

    file: str
    line: int
    text: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message} (in: {self.text.strip()!r})"


class ConfigError(WfmError):
    """A configuration file is invalid; carries every problem found."""

    def __init__(self, problems: list[ConfigProblem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class SizeError(WfmError, ValueError):
    """A size string (``5GB``, ``2TiB``, ``1024``) could not be parsed."""

    def __init__(self, value: object, reason: str = ""):
        self.value = value
        hint = "a number with an optional unit K, M, G, T or P (optionally followed by B or iB)"
        super().__init__(f"invalid size {value!r}: {reason or 'expected ' + hint}")


# --- requests ---------------------------------------------------------------


class InvalidRequest(WfmError, ValueError):
    """A request is malformed: names the field and what would be valid (HTTP 400)."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class NotFound(WfmError, KeyError):
    """A named item (reservation, service, step, datanode) does not exist."""

    def __init__(self, kind: str, name: str):
        self.kind = kind
        self.name = name
        super().__init__(f"{kind} {name!r} not found")

    def __str__(self) -> str:  # KeyError would quote the whole message
        return self.args[0]


class Forbidden(WfmError):
    """The caller may not act on this item: names the field and the rule (HTTP 403)."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class Conflict(WfmError):
    """The request is valid but contradicts the current state."""

    def __init__(self, message: str):
        self.message = message
        super().__init__(message)


class AlreadyAllocated(Conflict):
    """GET server/allocation on a reservation that is already ALLOCATED (spec: 501)."""


class StillQueued(Conflict):
    """The reservation is valid but waits in the queue for resources (409)."""


class RequestFailed(WfmError):
    """A well-formed request that cannot be satisfied (the spec's 500 cases)."""

    def __init__(self, message: str):
        self.message = message
        super().__init__(message)


# --- allocator --------------------------------------------------------------


class AllocatorError(WfmError):
    """Base of the allocator's errors."""


class InvalidDemand(AllocatorError, ValueError):
    """An allocator call with an argument out of range (negative size, ...)."""

    def __init__(self, field: str, value: object, valid: str):
        self.field = field
        self.value = value
        self.valid = valid
        super().__init__(f"{field}={value!r} is invalid: expected {valid}")


class NoCapacity(AllocatorError):
    """The demand does not fit now (or, with ``ever=True``, can never fit)."""

    def __init__(self, message: str, ever: bool = False):
        self.ever = ever
        super().__init__(message)


class DuplicateReservation(AllocatorError):
    """A reservation of that name is already held."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(f"reservation {name!r} already exists")


class UnknownReservation(AllocatorError, KeyError):
    """No reservation of that name is held."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(f"reservation {name!r} not found")

    def __str__(self) -> str:
        return self.args[0]


class UnknownDatanode(AllocatorError, KeyError):
    """No datanode of that name is in the inventory."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(f"datanode {name!r} not found")

    def __str__(self) -> str:
        return self.args[0]


# --- state and Slurm --------------------------------------------------------


class ReloadRefused(WfmError):
    """A new configuration is valid but cannot replace the running one (held reservations
    would not fit): the running configuration is kept."""


class StoreError(WfmError):
    """The state database is unusable (corrupt, foreign, locked by another process)."""


class PreloadLost(Exception):
    """A start's reader process (store_preload.py) failed after some of its rows were
    used: the caller reads them again in-process (logged; not an error of the file)."""


class CommitRefused(StoreError):
    """The state database refused a write (its batch was rolled back)."""

    def __init__(self, cause: BaseException):
        self.cause = cause
        super().__init__(f"the state database refused a write: {cause}")


class CommitTimeout(StoreError):
    """A write was not committed within the time an answer may wait for it."""

    def __init__(self, timeout: float | None):
        self.timeout = timeout
        super().__init__(f"the state database did not commit within {timeout} s")


class StateNotLoaded(StoreError):
    """The resource manager's state could not be read again after a refused commit
    (state_guard.py): nothing is decided until it is (answered 503, safe to repeat)."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(
            "the orchestrator is reading its state again from the state database after a "
            f"refused commit, and could not yet ({reason}); nothing was done: send the "
            "request again")


class WaitOnEventLoop(RuntimeError):
    """A commit was waited for on a thread that must never block (the server's event loop).

    A programming error: code served on the loop hands its ticket to the API
    layer (api/serving.py), which holds the answer instead of waiting.
    """


class SlurmError(WfmError):
    """slurmrestd refused a call; carries Slurm's own error text."""

    def __init__(self, message: str, status: int | None = None, errors: list | None = None):
        self.status = status
        self.errors = errors or []
        super().__init__(message)


class SlurmUnavailable(SlurmError):
    """slurmrestd could not be reached within the timeout."""


class SlurmAuthError(SlurmError):
    """slurmrestd refused the token (bad, expired, or for another user)."""


class ImpersonationRefused(WfmError):
    """A user's job would need the SlurmUser token and impersonate_users is no."""


class NoSlurm(WfmError):
    """The orchestrator runs as a pure Resource Manager (no slurmrestd_url)."""

    def __init__(self) -> None:
        super().__init__("no Slurm configured (slurmrestd_url is empty)")


# --- the administrator's command line --------------------------------------


class ServiceUnreachable(WfmError, ConnectionError):
    """The running orchestrator (its ``listen``) does not answer."""

    def __init__(self, url: str, reason: str):
        self.url = url
        super().__init__(f"no orchestrator answers at {url} ({reason}): is it running? "
                         "(systemctl status wfm-orchestrator)")


class ApiFailed(WfmError):
    """The orchestrator answered a command's request with an error (its body's words)."""

    def __init__(self, status: int, title: str, description: str):
        self.status = status
        self.title = title
        self.description = description
        super().__init__(f"{status} {title}: {description}")
