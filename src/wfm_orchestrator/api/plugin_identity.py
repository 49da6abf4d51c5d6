"""The job and uid the burst-buffer plugin acts for: query parameters of its calls.

``?job_id=N`` (GET and DELETE server/allocation, DELETE ephemeralservice/release; optional
on GET ephemeralservice/status/{name}, where it makes the job's claim) and ``?uid=U`` (GET
server/allocation, GET ephemeralservice/status[/{name}], DELETE ephemeralservice/release)
are additions to the spec's forms (docs/api.md).
The plugin's role must send them; an administrator (and ``auth = none``) may leave them
out and act in the spec's form, unchecked. Whoever sends them gets the checks.
"""

from __future__ import annotations

import re

import falcon

from ..errors import InvalidRequest
from .auth import identity_of

_UINT_RE = re.compile(r"[0-9]{1,10}")
_UINT_MAX = 2**32 - 1  # Slurm's job ids and POSIX uids are 32-bit


def _uint(req: falcon.Request, name: str, lowest: int) -> int | None:
    raw = req.get_param(name)
    if raw is None:
        return None
    if not _UINT_RE.fullmatch(raw) or not lowest <= int(raw) <= _UINT_MAX:
        raise InvalidRequest(name, f"expected an integer from {lowest} to {_UINT_MAX}, "
                             f"got {raw[:32]!r}")
    return int(raw)


def acting_for(req: falcon.Request, *names: str,
               optional: tuple[str, ...] = ()) -> dict[str, int | None]:
    """The parameters ``names`` and ``optional`` (``job_id``, ``uid``) of ``req``, each an
    int or None.

    A caller holding the burst-buffer role without admin must send every one of
    ``names``: 400 naming the first missing.
    """
    # Most calls carry no query string (the spec's forms): nothing to parse then.
    values = ({name: _uint(req, name, 1 if name == "job_id" else 0)
               for name in (*names, *optional)}
              if req.query_string else dict.fromkeys((*names, *optional)))
    roles = identity_of(req).roles
    if "burst-buffer" in roles and "admin" not in roles:
        for name in names:
            if values[name] is None:
                raise InvalidRequest(name, "the burst-buffer plugin must say which job and "
                                     "uid it acts for: add the query parameter (plugin "
                                     "and orchestrator versions differ?)")
    return values
