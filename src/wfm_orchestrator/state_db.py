"""The ``state_db`` setting: which engine holds the state, and how to show it safely.

Three forms: a plain path or ``sqlite:PATH`` (SQLite, relative to the configuration
file), or a libpq URL ``postgresql://`` / ``postgres://`` (PostgreSQL, several hosts
allowed: ``postgresql://user:pw@h1:5432,h2:5432/wfm?target_session_attrs=read-write``).
A URL may carry the database password: ``redact`` is what every log line, error and
listing shows instead.
"""

from __future__ import annotations

import re

POSTGRESQL_SCHEMES = ("postgresql://", "postgres://")
SQLITE_PREFIX = "sqlite:"
FORMS = ("a file path, sqlite:PATH, or postgresql://[user[:password]@]host[:port][,host2...]"
         "/database[?param=value...]")

# user:password@ up to the last '@' (a password may hold encoded ones: redacting too much
# is the safe mistake), and a password given as a URL parameter. No '[' in the user
# name (none is valid there): FORMS' "[user[:password]@]" is shown as it is.
_USERINFO_PASSWORD = re.compile(r"(\w+://[^:@/?\s\[\]]*:)(\S*)@")
_PARAM_PASSWORD = re.compile(r"([?&]password=)[^&]*", re.IGNORECASE)


def is_postgresql(value: str) -> bool:
    return value.lower().startswith(POSTGRESQL_SCHEMES)


def redact(text: str) -> str:
    """``text`` (a state_db value, or a message quoting one) without its password."""
    text = _USERINFO_PASSWORD.sub(r"\1***@", text)
    return _PARAM_PASSWORD.sub(r"\1***", text)


def parse(value: str) -> str:
    """The setting as the store takes it: the path for SQLite (``sqlite:`` removed, still
    to be resolved against the configuration file), the URL as given for PostgreSQL.

    Raises ValueError naming the accepted forms (the message never quotes the password).
    """
    value = value.strip()
    if is_postgresql(value):
        rest = value.split("://", 1)[1]
        hosts = rest.split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]
        # No host: libpq's Unix socket, or a host=... parameter.
        if hosts and any(not h.strip() or h.startswith(":") for h in hosts.split(",")):
            raise ValueError(f"a PostgreSQL URL must name its host(s): expected {FORMS}")
        if any(c.isspace() for c in value):
            raise ValueError(f"a PostgreSQL URL holds no blanks (percent-encode them): "
                             f"expected {FORMS}")
        return value
    if "://" in value:
        raise ValueError(f"unsupported database {value.split('://', 1)[0]!r}: expected {FORMS}")
    if value.lower().startswith(SQLITE_PREFIX):
        value = value[len(SQLITE_PREFIX):]
    if not value:
        raise ValueError(f"no database named: expected {FORMS}")
    return value
