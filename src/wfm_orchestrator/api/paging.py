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

A list without ``limit`` (the spec's form) may be long: 100,000 statuses are 23 MB of
JSON. ``whole`` never builds it on the server's event loop (it hands the request to a
worker thread), takes one snapshot from the list's owner and streams the body as it is
rendered, ``CHUNK`` items at a time, without a Content-Length (chunked transfer coding
on HTTP/1.1): the same bytes as one ``ujson.dumps`` of the list (docs/server.md, Lists).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import falcon
import ujson

from ..errors import InvalidRequest
from ..paging import Page, positional
from .serving import HandToWorker, loop_request

MAX_LIMIT = 10_000
# Pages of datanodes (server/resources/all) longer than this are rendered by a worker
# thread: with their core lists they cost ~10 µs each, a page of 1,000 ~10 ms of the loop.
LOOP_ITEMS = 100
# Items rendered per chunk of a whole list: each chunk holds its owner's lock (~1 ms for
# 256 statuses) and is one write to the connection (~60 KB).
CHUNK = 256
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
    next_headers(req, resp, page, kind, limit)


def next_headers(req: falcon.Request, resp: falcon.Response, page: Page[Any], kind: str,
                 limit: int | None) -> None:
    """The next page's cursor in ``X-Next-Cursor`` and ``Link``, if one follows."""
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
                      names: Sequence[str], items: Callable[[list[str]], list[Any]],
                      chunks: Callable[[list[str]], Iterable[list[Any]]] | None = None
                      ) -> None:
    """A page of a list of ``wfm.conf`` (``kind`` d, l or f) in the file's order:
    ``items(names)`` are the answer's items for the page's names. With ``chunks``, a
    whole list (no ``limit``) and a page longer than ``LOOP_ITEMS`` are rendered by a
    worker thread and streamed (``whole``) from ``chunks(names)``."""
    after, limit = requested(req, kind)
    if chunks is not None and streamed(req, limit):
        whole(resp, chunks(positional(names, after, None).items))
        return
    page = positional(names, after, limit)
    if chunks is not None and len(page.items) > LOOP_ITEMS:
        off_loop(req)  # a datanode with its core lists: ~10 µs to render
        next_headers(req, resp, page, kind, limit)
        whole(resp, chunks(page.items))
        return
    answer(req, resp, Page(items(page.items), page.next), kind, limit)


def streamed(req: falcon.Request, limit: int | None) -> bool:
    """Is the answer the whole list (no ``limit``), to stream with ``whole``?

    On the server's event loop, a whole list is not even started: the request goes to a
    worker thread (``HandToWorker``, before anything is read), so that no connection
    waits while the list is rendered.
    """
    if limit is not None:
        return False
    off_loop(req)
    return True


def off_loop(req: falcon.Request) -> None:
    """On the server's event loop, hand ``req`` to a worker thread (nothing read yet)."""
    if loop_request(req) is not None:
        raise HandToWorker("a long answer is rendered by a worker thread")


def whole(resp: falcon.Response, chunks: Iterable[list[Any]]) -> None:
    """Answer a whole list (``streamed``): ``chunks`` yields its items rendered from one
    snapshot of the list, a list at a time; the body is sent as they come."""
    resp.content_type = falcon.MEDIA_JSON
    resp.stream = json_list(chunks)


def walk(page: Callable[[Any, int], Page[Any]], after: Any) -> Iterator[list[Any]]:
    """The items after ``after``, ``CHUNK`` at a time, page by page (``page(after, limit)``)
    for a list whose owner has no snapshot to stream (the step lists): each chunk is one
    snapshot, and the walk has paging's guarantees (no item twice, every item present
    throughout seen once), not a single snapshot's."""
    while True:
        found = page(after, CHUNK)
        yield found.items
        if found.next is None:
            return
        after = found.next


def json_list(chunks: Iterable[list[Any]]) -> Iterator[bytes]:
    """The bytes of ``ujson.dumps`` of the concatenated chunks, a chunk at a time."""
    opening = b"["
    for chunk in chunks:
        if chunk:
            yield opening + ujson.dumps(chunk)[1:-1].encode()
            opening = b","
    yield b"]" if opening == b"," else b"[]"
