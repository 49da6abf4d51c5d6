"""Sizes as written in wfm.conf and accepted in requests.

A size is a number (decimals allowed) with an optional unit K, M, G, T or P,
optionally followed by ``B`` or ``iB``. Multiples are binary, as in Slurm
(1GB = 1GiB = 1024 MB); a bare number is bytes. The API speaks whole MB
(MiB): demands are rounded *up* (a flavor or a global storage size never
gets less than asked), capacities are rounded *down* (a datanode never
promises more than it has).
"""

from __future__ import annotations

import math
import re

from .errors import SizeError

_UNITS = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTPkmgtp]?)(i?B)?\s*$")
MB = 1024 * 1024
# No datanode or request is larger than an exabyte; refusing beyond keeps
# every value inside SQLite's and C's int64.
MAX_BYTES = 1 << 60


def parse_size(text: str) -> int:
    """Return the size in bytes (rounded up to a whole byte)."""
    if not isinstance(text, str):
        raise SizeError(text, "expected a string such as '5GB'")
    m = _SIZE_RE.match(text)
    if not m:
        raise SizeError(text)
    number, unit, suffix = m.groups()
    if suffix and not unit and suffix == "iB":
        raise SizeError(text, "'iB' needs a unit letter before it (KiB, MiB, GiB, TiB, PiB)")
    value = float(number) if "." in number else int(number)
    nbytes = math.ceil(value * (1024 ** _UNITS[unit.upper()]))
    if nbytes > MAX_BYTES:
        raise SizeError(text, "larger than 1 EiB")
    return nbytes


def bytes_to_mb_up(nbytes: int) -> int:
    """Whole MB covering ``nbytes`` (for demands)."""
    return -(-nbytes // MB)


def bytes_to_mb_down(nbytes: int) -> int:
    """Whole MB contained in ``nbytes`` (for capacities)."""
    return nbytes // MB


def format_mb(mb: int) -> str:
    """Human-readable form of a size in MB, exact when it can be."""
    for unit, exp in (("P", 3), ("T", 2), ("G", 1)):
        if mb and mb % (1024**exp) == 0:
            return f"{mb // 1024**exp}{unit}B"
    return f"{mb}MB"
