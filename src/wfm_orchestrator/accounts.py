"""Which accounts may own a reservation or a step: existing, ordinary ones (issue #15).

The lookup reads the system's account databases (pwd: /etc/passwd and NSS), which is I/O:
it is injected (``Accounts(config, lookup)``) so the use cases can be tested with a table,
and the domain (model.py, config.py) stays free of it.
"""

from __future__ import annotations

import pwd
from collections.abc import Callable

from .config import Config
from .errors import InvalidRequest

# nobody: the kernel's overflow uid (what unmapped owners show as) and the invalid uid;
# both are above any min_user_uid, and no person's account.
_OVERFLOW_UIDS = (65534, 2**32 - 1)

# A user name -> its uid, or None when no such account exists.
Lookup = Callable[[str], "int | None"]


def passwd_uid(name: str) -> int | None:
    """The uid of account ``name`` in the system's databases, or None if there is none."""
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def home_of(user: str) -> str:
    """The user's home directory on this host (a step's default working directory), /tmp
    if unknown."""
    try:
        return pwd.getpwnam(user).pw_dir or "/tmp"  # noqa: S108 - a default working directory
    except KeyError:
        return "/tmp"  # noqa: S108


class Accounts:
    """Refuses, as a 400 naming the field, a user no job may be run as."""

    def __init__(self, config: Config, lookup: Lookup | None = None):
        self.config = config
        # Resolved at construction, not at import, so a test session can swap the default.
        self.lookup = lookup if lookup is not None else passwd_uid

    def check(self, user: str, field: str = "user") -> None:
        """Raise InvalidRequest unless ``user`` is an existing ordinary account."""
        fix = f"give the name of an existing user account with a uid >= {self.config.min_user_uid}"
        if user == self.config.slurm_user:
            raise InvalidRequest(field, f"{user!r} is the SlurmUser (slurm_user): {fix}")
        uid = self.lookup(user)
        if uid is None:
            raise InvalidRequest(field, f"no account named {user!r} on this host: {fix}")
        if uid == 0:
            raise InvalidRequest(field, f"{user!r} is root (uid 0): {fix}")
        if uid in _OVERFLOW_UIDS:
            raise InvalidRequest(field, f"{user!r} is nobody (uid {uid}, the uid of files "
                                        f"no user owns): {fix}")
        if uid < self.config.min_user_uid:
            raise InvalidRequest(field, f"{user!r} is a system account (uid {uid}, below "
                                        f"min_user_uid): {fix}")


__all__ = ["Accounts", "Lookup", "home_of", "passwd_uid"]
