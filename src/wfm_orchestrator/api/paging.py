"""Paging of every list endpoint: ``?limit=N&after=CURSOR``, an addition to the spec.

Without ``limit`` a list is answered whole, as the spec says (``after`` alone: every item
after the cursor). With it, at most ``limit`` items (1 to ``MAX_LIMIT``); when more
follow, the answer carries the cursor of the next page in ``X-Next-Cursor`` and a
``Link: <...>; rel="next"`` header repeating the request with it. The body stays the
spec's JSON list.

A cursor is opaque to clients (pass it back unchanged; its form may change between
versions). It holds the key of the page's last item in the list's order (paging.py):
``r~<seq>`` (reservations and services), ``s~<created>~<name>`` (steps),
``d~``/``l~``/``f~<position>~<name>`` (datanodes, locations, flavors of ``wfm.conf``).
Any text of that form is a valid position, so the OpenAPI document declares the form
exactly (``CURSOR_PATTERNS``) and nothing it accepts is refused; anything else is 400
naming ``after``.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

import falcon

from ..errors import InvalidRequest
from ..paging import Page, positional

MAX_LIMIT = 10_000
NEXT_CURSOR = "X-Next-Cursor"

_WORD = r"[A-Za-z0-9_.-]{1,128}"
_COUNT = r"(0|[1-9][0-9]{0,17})"
_NUMBER = r"(0|[1-9][0-9]{0,19})(\.[0-9]{1,20})?(e[+-]?[0-9]{1,3})?"
# kind -> the form of its cursors (the OpenAPI document declares these).
CURSOR_PATTERNS = {
    "r": rf"^r~{_COUNT}$",
    "s": rf"^s~{_NUMBER}~{_WORD}$",
    "d": rf"^d~{_COUNT}~{_WORD}$",
    "l": rf"^l~{_COUNT}~{_WORD}$",
    "f": rf"^f~{_COUNT}~{_WORD}$",
}
_CURSOR_RE = {kind: re.compile(pattern.rstrip("$") + r"\Z")
              for kind, pattern in CURSOR_PATTERNS.items()}
_LIMIT_RE = re.compile(r"[0-9]{1,9}")


def cursor(kind: str, key: Any) -> str:
    """The cursor of position ``key`` in a list of ``kind``."""
    if kind == "r":
        return f"r~{key}"
    first, name = key
    return f"{kind}~{first!r}~{name}"


def _key(kind: str, text: str) -> Any:
    if not _CURSOR_RE[kind].match(text):
        raise InvalidRequest("after", f"{text[:64]!r} is not a cursor of this list: pass the "
                             f"{NEXT_CURSOR} of the previous page unchanged, or leave it out "
                             "for the first page")
    if kind == "r":
        return int(text[2:])
    first, name = text[2:].split("~")
    return (float(first) if kind == "s" else int(first)), name


def requested(req: falcon.Request, kind: str) -> tuple[Any, int | None]:
    """(``after`` as a key of a ``kind`` list or None, ``limit`` or None) of ``req``.

    400 naming the parameter for a cursor of another form, or a limit that is not an
    integer from 1 to ``MAX_LIMIT``.
    """
    if not req.query_string:
        return None, None  # the spec's form: most requests
    raw = req.get_param("limit")
    limit = None
    if raw is not None:
        if not _LIMIT_RE.fullmatch(raw) or not 1 <= int(raw) <= MAX_LIMIT:
            raise InvalidRequest("limit", f"expected an integer from 1 to {MAX_LIMIT} (the most "
                                 f"items of a page), got {raw[:32]!r}")
        limit = int(raw)
    after = req.get_param("after")
    return (None if after is None else _key(kind, after)), limit


def answer(req: falcon.Request, resp: falcon.Response, page: Page[Any], kind: str,
           limit: int | None) -> None:
    """Send ``page.items`` as the body; the next page's cursor in the headers if any."""
    resp.media = page.items
    if page.next is None or limit is None:
        return
    after = cursor(kind, page.next)
    resp.set_header(NEXT_CURSOR, after)
    query = [(k, v) for k, v in req.params.items() if k not in ("after", "limit")]
    query += [("limit", str(limit)), ("after", after)]
    # The same request with the next cursor: its path, its other parameters.
    link = f"{urllib.parse.quote(req.path)}?{urllib.parse.urlencode(query, doseq=True)}"
    resp.set_header("Link", f'<{link}>; rel="next"')


def answer_configured(req: falcon.Request, resp: falcon.Response, kind: str,
                      names: Sequence[str], items: Callable[[list[str]], list[Any]]) -> None:
    """A page of a list of ``wfm.conf`` (``kind`` d, l or f) in the file's order:
    ``items(names)`` are the answer's items for the page's names."""
    after, limit = requested(req, kind)
    page = positional(names, after, limit)
    answer(req, resp, Page(items(page.items), page.next), kind, limit)
