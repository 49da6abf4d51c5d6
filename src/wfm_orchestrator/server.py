"""The HTTP server: waitress with our limits and a stricter request parser.

waitress 3.0 accepts two framings that RFC 9112 says a server must refuse,
both request-smuggling vectors behind a proxy:

* a request with both ``Content-Length`` and ``Transfer-Encoding`` (waitress
  frames it by Transfer-Encoding and keeps the connection open);
* a header block ended by bare LF line endings (waitress waits for CRLF CRLF
  until the header limit or the channel timeout).

``StrictRequestParser`` answers both with 400 and closes the connection.
"""

from __future__ import annotations

from typing import Any

import waitress
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser, ParsingError
from waitress.utilities import BadRequest, find_double_newline

MAX_BODY = 1024 * 1024
# waitress refuses a body whose length is >= its limit; the API accepts exactly 1 MiB.
WAITRESS_BODY_LIMIT = MAX_BODY + 1
MAX_HEADER = 64 * 1024


class StrictRequestParser(HTTPRequestParser):
    def received(self, data: bytes) -> int:
        if self.body_rcv is None and not self.completed:
            pending = self.header_plus + data
            if find_double_newline(pending) < 0 and b"\n\n" in pending.lstrip():
                self._refuse("bare LF line endings: HTTP requires CRLF")
                return len(data)
        return super().received(data)

    def parse_header(self, header_plus: bytes) -> None:
        lowered = b"\r\n" + header_plus.lower()
        if b"\r\ncontent-length:" in lowered and b"\r\ntransfer-encoding:" in lowered:
            raise ParsingError("both Content-Length and Transfer-Encoding")
        super().parse_header(header_plus)

    def _refuse(self, reason: str) -> None:
        # As waitress does for over-long headers: a minimal request line for
        # the error response, then an error that closes the connection.
        super().parse_header(b"GET / HTTP/1.0\r\n")
        self.error = BadRequest(reason)
        self.completed = True


class StrictChannel(HTTPChannel):
    parser_class = StrictRequestParser


def create_server(app: Any, host: str, port: int, threads: int) -> Any:
    """A waitress server with the limits documented in docs/security.md."""
    server = waitress.create_server(
        app,
        host=host,
        port=port,
        threads=threads,
        ident="wfm-orchestrator",
        max_request_body_size=WAITRESS_BODY_LIMIT,  # 413 before the application runs
        max_request_header_size=MAX_HEADER,  # 431 beyond
        connection_limit=1000,
        channel_timeout=60,
        cleanup_interval=30,
        expose_tracebacks=False,
    )
    server.channel_class = StrictChannel
    return server
