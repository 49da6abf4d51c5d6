"""The slurmrestd client: the only module of slurm/ that does I/O.

    client = SlurmClient("http://127.0.0.1:6820", api_version="auto",
                         token_file="var/slurm.jwt", slurm_user="slurm", timeout=10)
    job_id = client.submit(JobSpec(...), user="alice")             # SlurmUser token
    job_id = client.submit(JobSpec(...), user="alice", user_token=tok)  # alice's own
    client.cancel(job_id, signal="SIGTERM")
    states = client.job_states([job_id, ...])    # one GET /jobs, filtered here
    client.jobs(); client.job(job_id); client.ping()
    client.nodes()                               # one GET /nodes: every node's state

Every call has a deadline of ``timeout`` seconds (connect + read, retries
included). Connection errors are retried within that deadline -- except
for a submit, which is retried only when the connection was refused (or
could not be opened) before anything was sent: a submit that may have
reached slurmrestd is never sent twice, the caller gets SlurmUnavailable
saying the job may exist (find it by name/comment with :meth:`jobs`).
HTTP answers are never retried. One requests.Session keeps connections
alive between calls. Tokens never appear in messages or logs.

The API version: ``auto`` (the default) pings ``/slurm/<v>/ping`` for each
version we speak, newest first, and keeps the first one slurmrestd serves
(any answer but its plain-text 404); :meth:`SlurmClient.negotiate` does it at
start-up, and any call does it while no version is chosen yet (slurmrestd was
unreachable, or served none of ours): that call then fails with
SlurmUnavailable saying which versions slurmrestd serves and which we need, so
the follower's outage shows it in every status and the next cycle retries. A
version that disappears (slurmrestd upgraded under us) is chosen again.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import InvalidRequest, SlurmAuthError, SlurmError, SlurmUnavailable
from .jobs import JobSpec
from .nodes import NodeState
from .states import (
    JobState,
    format_errors,
    is_unknown_job,
    looks_refused,
    parse_submit,
    slurm_errors,
)
from .versions import (
    AUTO,
    SUPPORTED,
    build_submit_body,
    dialect,
    no_common_version,
    offered_versions,
    parse_cancel,
    parse_job_states,
    parse_jobs,
    parse_nodes,
    parse_ping,
)

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

SIGNALS = ("SIGTERM", "SIGKILL", "SIGINT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGCONT", "SIGSTOP")
_BACKOFF = (0.1, 0.3, 0.6, 1.0)
# slurmrestd answers a refused token at once, a down slurmctld after ~9 s of retrying.
SLOW_REFUSAL = 3.0


def _not_sent(exc: BaseException) -> bool:
    """True when the request certainly did not leave: refused or no connection made."""
    import requests  # loaded by then: see SlurmClient.__init__
    from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, (NewConnectionError, ConnectTimeoutError, ConnectionRefusedError)):
            return True
        if isinstance(e, BaseException):
            stack += [getattr(e, "reason", None), e.__cause__, e.__context__]
            stack += [a for a in e.args if isinstance(a, BaseException)]
    return False


F = TypeVar("F", bound=Callable[..., Any])
# (operation, seconds, error class name or "") after each public call: the metrics edge.
Observer = Callable[[str, float, str], None]


def _observed(operation: str) -> Callable[[F], F]:
    """Report the call's duration and outcome to ``self.observe`` (when one is set)."""

    def wrap(method: F) -> F:
        @functools.wraps(method)
        def timed(self: SlurmClient, *args: Any, **kwargs: Any) -> Any:
            observe = self.observe
            if observe is None:
                return method(self, *args, **kwargs)
            started = time.monotonic()
            error = ""
            try:
                return method(self, *args, **kwargs)
            except Exception as e:
                error = type(e).__name__
                raise
            finally:
                observe(operation, time.monotonic() - started, error)

        return timed  # type: ignore[return-value]

    return wrap


def token_claims(token: str) -> dict[str, Any] | None:
    """The (unverified) claims of a JWT, or None when it is not one."""
    try:
        body = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (IndexError, ValueError, UnicodeDecodeError):
        return None
    return claims if isinstance(claims, dict) else None


class SlurmClient:
    """A slurmrestd client for one API version (see the module docstring)."""

    def __init__(self, url: str, api_version: str = AUTO, token_file: str | None = None,
                 slurm_user: str = "slurm", timeout: float = 10.0,
                 session: requests.Session | None = None):
        if api_version != AUTO:
            dialect(api_version)  # InvalidRequest unless we speak it
        if not url:
            raise InvalidRequest("slurmrestd_url", "is empty")
        self.url = url.rstrip("/")
        self.configured_version = api_version
        self._version: str | None = None if api_version == AUTO else api_version
        self.token_file = token_file
        self.slurm_user = slurm_user
        self.timeout = float(timeout)
        # Called before every submission; raises to refuse it (the leader lease's margin,
        # cli.py: a deposed leader must not submit a job the new leader submits too).
        self.before_submit: Callable[[], None] | None = None
        # requests (~60 ms with urllib3) only once a client is made: a server without
        # Slurm (Resource-Manager-only) starts without it.
        import requests
        from requests.adapters import HTTPAdapter

        self._session = session or requests.Session()
        # No urllib3-level retries: this class decides what may be retried.
        self._session.mount("http://", HTTPAdapter(max_retries=0, pool_maxsize=16))
        self._session.mount("https://", HTTPAdapter(max_retries=0, pool_maxsize=16))
        self._token_lock = threading.Lock()
        self._token_cache: tuple[float, str] | None = None
        self.observe: Observer | None = None
        self._version_lock = threading.Lock()

    @property
    def api_version(self) -> str:
        """The version in use: the configured one, or the one ``auto`` chose ("auto" before)."""
        return self._version or AUTO

    @classmethod
    def from_config(cls, config: Any) -> SlurmClient:
        """A client from a Config (slurmrestd_url, slurm_api_version, slurm_token_file, ...)."""
        return cls(config.slurmrestd_url, api_version=config.slurm_api_version,
                   token_file=config.slurm_token_file or None, slurm_user=config.slurm_user,
                   timeout=config.slurm_timeout)

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> SlurmClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- credentials -----------------------------------------------------------

    def _slurm_user_token(self) -> str:
        """The SlurmUser token from token_file, re-read when the file changes."""
        if not self.token_file:
            raise SlurmAuthError("no slurm_token_file configured: give the user's own token")
        with self._token_lock:
            try:
                mtime = os.stat(self.token_file).st_mtime
                if self._token_cache and self._token_cache[0] == mtime:
                    return self._token_cache[1]
                with open(self.token_file, encoding="utf-8") as fh:
                    token = fh.read().strip()
            except (OSError, UnicodeDecodeError) as e:
                raise SlurmAuthError(f"cannot read the SlurmUser token file "
                                     f"{self.token_file}: {e}") from e
            if token.startswith("SLURM_JWT="):
                token = token[len("SLURM_JWT="):]
            self._token_cache = (mtime, token)
            return token

    def _headers(self, user: str | None, user_token: str | None) -> dict[str, str]:
        if user_token is not None:
            if not user:
                raise InvalidRequest("user", "a user token needs the user's name")
            token, name = user_token, user
        else:
            token, name = self._slurm_user_token(), user or self.slurm_user
        self._check_token(token, name, own=user_token is not None)
        return {"X-SLURM-USER-NAME": name, "X-SLURM-USER-TOKEN": token,
                "Accept": "application/json"}

    def _check_token(self, token: str, name: str, own: bool) -> None:
        """Refuse locally what slurmctld would refuse without saying why."""
        if not token or any(c.isspace() for c in token) or not token.isascii():
            raise SlurmAuthError(f"the token for {name} is empty or malformed")
        claims = token_claims(token)
        if claims is None:
            raise SlurmAuthError(f"the token for {name} is not a JWT")
        exp = claims.get("exp")
        if isinstance(exp, (int, float)) and exp <= time.time():
            raise SlurmAuthError(f"the token for {name} expired at "
                                 f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(exp))}")
        sun = claims.get("sun")
        if own and isinstance(sun, str) and sun != name:
            raise SlurmAuthError(f"the token given for {name} belongs to {sun}")

    # --- the API version ---------------------------------------------------------

    def negotiate(self) -> str:
        """Choose the API version now (``auto``) and return it; raises SlurmUnavailable
        naming what slurmrestd serves and what we need when there is none to choose."""
        return self._ensure_version(self._headers(None, None), time.monotonic() + self.timeout)

    def _ensure_version(self, headers: dict[str, str], deadline: float) -> str:
        with self._version_lock:
            if self._version is None:
                self._version = self._choose(headers, deadline)
            return self._version

    def _choose(self, headers: dict[str, str], deadline: float) -> str:
        """Ping each version we speak, newest first; the first not answered 404 wins."""
        for version in SUPPORTED:
            try:
                status, parsed, _ = self._exchange("GET", f"/slurm/{version}/ping",
                                                   "choose the API version", headers, None,
                                                   None, True, deadline)
            except SlurmUnavailable as e:
                raise SlurmUnavailable(f"{e}; no API version chosen yet (slurm_api_version = "
                                       f"auto: we need one of {', '.join(SUPPORTED)})") from e
            if status != 404:
                release = _release(parsed)
                log.info("slurmrestd at %s: using API %s%s (slurm_api_version = auto; "
                         "we speak %s)", self.url, version,
                         f", Slurm {release}" if release else "", ", ".join(SUPPORTED))
                return version
        status, parsed, _ = self._exchange("GET", "/openapi/v3", "list the API versions",
                                           headers, None, None, True, deadline)
        offered = offered_versions(parsed) if status == 200 else []
        raise SlurmUnavailable(no_common_version(self.url, offered), status, [])

    def _not_served(self, text: str) -> SlurmUnavailable:
        """A plain-text 404 of a versioned path: slurmrestd does not serve our version."""
        version = self._version
        if self.configured_version == AUTO:
            with self._version_lock:
                self._version = None  # choose again at the next call
            return SlurmUnavailable(f"slurmrestd at {self.url} no longer serves API {version} "
                                    f"(was it upgraded?): choosing the version again "
                                    f"({text.strip()[:80]})", 404, [])
        return SlurmUnavailable(f"slurmrestd at {self.url} does not serve API {version} "
                                f"(slurm_api_version = {version}); set slurm_api_version = "
                                f"auto or one it serves ({text.strip()[:80]})", 404, [])

    # --- transport -------------------------------------------------------------

    def _call(self, method: str, path: str, what: str, headers: dict[str, str],
              body: Any = None, params: dict[str, str] | None = None,
              idempotent: bool = True, deadline: float | None = None,
              confirm: bool = True) -> tuple[int, Any, str]:
        """One HTTP exchange with retries on connection errors; returns (status, json, text).

        When the answer looks like a refused token, which slurmrestd 22.05 also
        gives when slurmctld is down, a ping with the SlurmUser token tells
        which: SlurmUnavailable if slurmctld does not answer it, else the
        answer is returned (and read as SlurmAuthError).
        """
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        version = self._ensure_version(headers, deadline)
        status, parsed, text = self._exchange(method, f"/slurm/{version}{path}", what, headers,
                                              body, params, idempotent, deadline)
        if status == 404 and parsed is None:
            raise self._not_served(text)
        if confirm and looks_refused(status, parsed) and self.token_file:
            started = time.monotonic()
            try:
                p_status, p_body, p_text = self._call(
                    "GET", "/ping", f"{what} (checking slurmctld)", self._headers(None, None),
                    deadline=deadline, confirm=False)
                parse_ping(p_status, p_body, version, p_text)
            except SlurmUnavailable as e:
                raise SlurmUnavailable(f"{what}: slurmctld does not answer "
                                       f"({format_errors(slurm_errors(parsed))}); {e}",
                                       status, slurm_errors(parsed)) from e
            except SlurmAuthError:
                # The SlurmUser token is refused too: either slurmctld is down (slurmrestd
                # then answers after its own connect timeout, seconds) or that token is bad
                # (answered at once).
                if time.monotonic() - started >= SLOW_REFUSAL:
                    raise SlurmUnavailable(f"{what}: slurmctld does not answer",
                                           status, slurm_errors(parsed)) from None
        return status, parsed, text

    def _exchange(self, method: str, path: str, what: str, headers: dict[str, str],
                  body: Any, params: dict[str, str] | None, idempotent: bool,
                  deadline: float) -> tuple[int, Any, str]:
        import requests  # loaded by __init__: a lookup

        url = self.url + path
        data = None
        if body is not None:
            data = json.dumps(body, ensure_ascii=True).encode("ascii")
            headers = {**headers, "Content-Type": "application/json"}
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SlurmUnavailable(f"{what}: slurmrestd at {self.url} did not answer "
                                       f"within {self.timeout:g} s")
            try:
                r = self._session.request(method, url, headers=headers, data=data,
                                          params=params, timeout=remaining)
            except requests.exceptions.RequestException as e:
                not_sent = _not_sent(e)
                retry = idempotent or not_sent
                pause = _BACKOFF[min(attempt, len(_BACKOFF) - 1)]
                if retry and time.monotonic() + pause < deadline and not isinstance(
                        e, requests.exceptions.ReadTimeout):
                    log.debug("%s: %s, retrying in %.1f s", what, type(e).__name__, pause)
                    attempt += 1
                    time.sleep(pause)
                    continue
                if isinstance(e, requests.exceptions.Timeout):
                    reason = f"no answer within {self.timeout:g} s"
                else:
                    reason = f"cannot connect ({type(e).__name__})"
                if not not_sent and not idempotent:
                    reason += ("; the request may have arrived, so the job may exist: "
                               "look it up by name/comment before submitting again")
                raise SlurmUnavailable(f"{what}: slurmrestd at {self.url}: {reason}") from e
            text = r.text
            try:
                parsed = r.json() if text.strip() else None
            except ValueError:
                parsed = None
            return r.status_code, parsed, text

    # --- the public calls --------------------------------------------------------

    @_observed("submit")
    def submit(self, spec: JobSpec, user: str, user_token: str | None = None) -> int:
        """Submit ``spec`` as ``user``; return the Slurm job id.

        With ``user_token`` (the user's own Slurm JWT) the job is submitted
        with that token; without it, with the SlurmUser token naming ``user``
        in X-SLURM-USER-NAME. Raises InvalidRequest (bad spec), SlurmAuthError,
        SlurmUnavailable, or SlurmError with Slurm's text.
        """
        if self.before_submit is not None:
            self.before_submit()
        if not isinstance(user, str) or not user:
            raise InvalidRequest("user", "a job is submitted for a named user")
        build_submit_body(spec, SUPPORTED[-1])  # InvalidRequest before any I/O
        headers = self._headers(user, user_token)
        deadline = time.monotonic() + self.timeout
        body = build_submit_body(spec, self._ensure_version(headers, deadline))
        what = f"submit job {spec.name} for {user}"
        status, parsed, text = self._call("POST", "/job/submit", what, headers, body=body,
                                          idempotent=False, deadline=deadline)
        job_id = parse_submit(status, parsed, what, text)
        log.info("submitted Slurm job %d (%s) for %s", job_id, spec.name, user)
        return job_id

    @_observed("cancel")
    def cancel(self, job_id: int, signal: str = "SIGTERM", user: str | None = None,
               user_token: str | None = None) -> bool:
        """Send ``signal`` to job ``job_id`` (``DELETE /job/{id}?signal=``).

        As the SlurmUser by default (it may cancel any job), or as ``user``.
        Returns False when Slurm no longer knows the job (idempotent), True
        when Slurm accepted the request (also for a job that already ended).
        Slurm 22.05: SIGKILL ends a job CANCELLED; SIGTERM ends it FAILED with
        reason JobLaunchFailure and JobState.signal 15.
        """
        if isinstance(job_id, bool) or not isinstance(job_id, int) or job_id <= 0:
            raise InvalidRequest("job_id", f"{job_id!r} is not a job id")
        if signal not in SIGNALS:
            raise InvalidRequest("signal", f"{signal!r} is not one of {', '.join(SIGNALS)}")
        headers = self._headers(user, user_token)
        what = f"cancel job {job_id}"
        status, parsed, text = self._call("DELETE", f"/job/{job_id}", what, headers,
                                          params={"signal": signal})
        return parse_cancel(status, parsed, self.api_version, what, text)

    @_observed("touch")
    def touch(self, job_id: int, comment: str) -> bool:
        """Update job ``job_id`` with its own ``comment`` (as the SlurmUser): it changes
        nothing of the job, and a job update makes slurmctld schedule (stage_in_nudge.py).
        False when Slurm no longer knows the job."""
        if isinstance(job_id, bool) or not isinstance(job_id, int) or job_id <= 0:
            raise InvalidRequest("job_id", f"{job_id!r} is not a job id")
        what = f"update job {job_id}"
        status, parsed, text = self._call("POST", f"/job/{job_id}", what,
                                          self._headers(None, None),
                                          body={"comment": comment})
        return parse_cancel(status, parsed, self.api_version, what, text)

    @property
    def schedules_after_stage_in(self) -> bool:
        """False on Slurm 22.05 (v0.0.38): see stage_in_nudge.py."""
        return dialect(self.api_version).schedules_after_stage_in

    @_observed("job_states")
    def job_states(self, job_ids: list[int] | tuple[int, ...] | set[int],
                   user: str | None = None, user_token: str | None = None
                   ) -> dict[int, JobState]:
        """States of many jobs in one ``GET /jobs``; ids Slurm forgot are absent."""
        ids = set(job_ids)
        if not ids:
            return {}
        status, parsed, text = self._call("GET", "/jobs", "read job states",
                                          self._headers(user, user_token))
        return parse_job_states(status, parsed, ids, self.api_version, text)

    @_observed("jobs")
    def jobs(self, user: str | None = None, user_token: str | None = None) -> list[JobState]:
        """Every job slurmctld knows (to find jobs by name or comment after a restart)."""
        status, parsed, text = self._call("GET", "/jobs", "read jobs",
                                          self._headers(user, user_token))
        return parse_jobs(status, parsed, self.api_version, "read jobs", text)

    @_observed("job")
    def job(self, job_id: int, user: str | None = None,
            user_token: str | None = None) -> JobState | None:
        """One job, or None when Slurm does not know it (any more)."""
        if isinstance(job_id, bool) or not isinstance(job_id, int) or job_id <= 0:
            raise InvalidRequest("job_id", f"{job_id!r} is not a job id")
        what = f"read job {job_id}"
        status, parsed, text = self._call("GET", f"/job/{job_id}", what,
                                          self._headers(user, user_token))
        if status != 200 and is_unknown_job(slurm_errors(parsed)):
            return None
        found = [j for j in parse_jobs(status, parsed, self.api_version, what, text)
                 if j.job_id == job_id]
        return found[0] if found else None

    @_observed("nodes")
    def nodes(self) -> list[NodeState]:
        """Every node slurmctld knows, with its state, flags and reason (``GET /nodes``)."""
        status, parsed, text = self._call("GET", "/nodes", "read nodes",
                                          self._headers(None, None))
        return parse_nodes(status, parsed, self.api_version, text)

    @_observed("ping")
    def ping(self) -> list[dict[str, Any]]:
        """``GET /ping`` with the SlurmUser token; raises unless a slurmctld is UP."""
        status, parsed, text = self._call("GET", "/ping", "ping", self._headers(None, None))
        return parse_ping(status, parsed, self.api_version, text)


def _release(body: Any) -> str:
    """Slurm's release from an answer's ``meta`` ("22.05.8", "24.11.5"), or ""."""
    meta = body.get("meta") if isinstance(body, dict) else None
    for key in ("slurm", "Slurm"):
        info = meta.get(key) if isinstance(meta, dict) else None
        if isinstance(info, dict) and isinstance(info.get("release"), str):
            return info["release"]
    return ""


__all__ = ["SlurmClient", "SlurmError", "SlurmAuthError", "SlurmUnavailable", "token_claims"]
