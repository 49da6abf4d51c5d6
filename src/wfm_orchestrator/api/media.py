"""Request bodies: JSON through ujson, with clear 4xx answers for what is not."""

from __future__ import annotations

from typing import Any

import falcon
import ujson

from .errors import APIError

MAX_BODY = 1024 * 1024  # also enforced by waitress before the application runs


def json_handler() -> falcon.media.JSONHandler:
    return falcon.media.JSONHandler(dumps=ujson.dumps, loads=ujson.loads)


def read_json(req: falcon.Request) -> Any:
    if req.content_length is not None and req.content_length > MAX_BODY:
        raise APIError(413, "Request body too large",
                       f"the body is {req.content_length} bytes; at most {MAX_BODY} are accepted")
    try:
        return req.get_media()
    except falcon.MediaNotFoundError:
        raise APIError(400, "Invalid request", "body: a JSON object is required",
                       "body") from None
    except falcon.MediaMalformedError as e:
        cause = e.__cause__ or e
        raise APIError(400, "Invalid request", f"body: invalid JSON ({cause})", "body") from None
