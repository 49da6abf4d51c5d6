"""Request bodies: JSON through ujson, with clear 4xx answers for what is not."""

from __future__ import annotations

from typing import Any

import falcon
import ujson

from .errors import APIError

MAX_BODY = 1024 * 1024  # bytes; also enforced by the server before the application runs

# Bodies are JSON whatever these say: curl -d sends form-urlencoded by default,
# and "CONSUMES at least application/json" is all the spec asks.
_READ_AS_JSON = ("application/json", "application/x-www-form-urlencoded", "text/plain")


def json_handler() -> falcon.media.JSONHandler:
    return falcon.media.JSONHandler(dumps=ujson.dumps, loads=ujson.loads)


def read_json(req: falcon.Request) -> Any:
    """The request body as JSON (at most MAX_BODY bytes)."""
    ctype = (req.content_type or "application/json").split(";")[0].strip().lower()
    if ctype not in _READ_AS_JSON:
        raise APIError(415, "Unsupported media type",
                       f"Content-Type {ctype!r}: the body must be JSON (application/json)",
                       "Content-Type")
    length = req.content_length
    if length is not None and length > MAX_BODY:
        raise APIError(413, "Request body too large",
                       f"the body is {length} bytes; at most {MAX_BODY} are accepted")
    # With a Content-Length the server has received that many bytes before the
    # application runs: read them straight from its stream (no bounding wrapper).
    data = (req.stream.read(length) if length is not None
            else req.bounded_stream.read(MAX_BODY + 1))
    if len(data) > MAX_BODY:
        raise APIError(413, "Request body too large", f"at most {MAX_BODY} bytes are accepted")
    if not data.strip():
        raise APIError(400, "Invalid request", "body: a JSON object is required", "body")
    try:
        return ujson.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(400, "Invalid request", f"body: invalid JSON ({e})", "body") from None
