"""Request parsing: waitress' parser made faster (fast path) and stricter (always).

Fast. waitress parses every request header in Python; on one core that was
a good part of what a request cost. ``FastRequestParser`` gives the same
results (the same attributes and errors, checked against waitress' own
methods by tests/unit/test_waitress_fast.py) with fewer steps: header names
repeat from request to request (Host, Content-Type, ...), so their WSGI key
is computed once and kept in a small table; the request line's tail
(Transfer-Encoding, Expect, Content-Length) is decided with the same rules
but without building lists for the common case of no Transfer-Encoding.

Strict. waitress 3.0 accepts three framings that RFC 9112 says a server must
refuse, all request-smuggling vectors behind a proxy:

* a request with both ``Content-Length`` and ``Transfer-Encoding`` (waitress
  frames it by Transfer-Encoding and keeps the connection open);
* an HTTP/1.0 request carrying ``Transfer-Encoding`` (RFC 9112 6.1: the
  framing is faulty). waitress honours Transfer-Encoding on HTTP/1.1 only
  and frames any other version by Content-Length, so a proxy that de-chunks
  it would disagree with us on where the request ends; every version but
  1.1 is refused for the same reason;
* a header block ended by bare LF line endings (waitress waits for CRLF CRLF
  until the header limit or the channel timeout).

``StrictRequestParser`` (fast) and ``StrictStockParser`` (waitress' own
parser, for ``fast_path = off``) answer all three with 400 and close the
connection.

Written for waitress 3.0 (pyproject.toml pins it); the tests fail when a
new waitress behaves differently (tests/unit/test_waitress_contract.py).
"""

from __future__ import annotations

from waitress.buffers import OverflowableBuffer
from waitress.parser import (
    HTTPRequestParser,
    ParsingError,
    TransferEncodingNotImplemented,
    crack_first_line,
    get_header_lines,
    split_uri,
)
from waitress.receiver import ChunkedReceiver, FixedStreamReceiver
from waitress.rfc7230 import HEADER_FIELD_RE, ONLY_DIGIT_RE
from waitress.utilities import BadRequest, find_double_newline

# Bounded: names a client invents are parsed the long way once the table is full.
_TABLE_SIZE = 512
_NAME_CACHED_UP_TO = 64  # bytes; longer names are not kept
_request_keys: dict[bytes, str] = {}
_NOT_SUPPORTED = "Transfer-Encoding requested is not supported."
_TE_NOT_1_1 = ("Transfer-Encoding in a request that is not HTTP/1.1: "
               "send HTTP/1.1 for a chunked body, or Content-Length alone")


def _request_key(name: bytes) -> str:
    """b"Content-Type" -> "CONTENT_TYPE" (waitress' key); "" for a name to drop."""
    key = _request_keys.get(name)
    if key is None:
        # waitress drops fields whose name has "_": X_Forwarded could pose as X-Forwarded.
        key = "" if b"_" in name else name.upper().replace(b"-", b"_").decode("latin-1")
        if len(_request_keys) < _TABLE_SIZE and len(name) <= _NAME_CACHED_UP_TO:
            _request_keys[name] = key
    return key


class FastRequestParser(HTTPRequestParser):
    def parse_header(self, header_plus: bytes) -> None:
        index = header_plus.find(b"\r\n")
        if index < 0:
            raise ParsingError("HTTP message header invalid")
        first_line = header_plus[:index].rstrip()
        if b"\r" in first_line or b"\n" in first_line:
            raise ParsingError("Bare CR or LF found in HTTP message")
        self.first_line = first_line

        headers = self.headers
        match = HEADER_FIELD_RE.match
        for line in get_header_lines(header_plus[index + 2:]):
            field = match(line)
            if field is None:
                raise ParsingError("Invalid header")
            name, value = field.group("name", "value")
            key = _request_key(name)
            if not key:
                continue
            text = value.strip(b" \t").decode("latin-1")
            if key in headers:
                headers[key] += ", " + text  # repeated fields are joined
            else:
                headers[key] = text

        command, uri, version = crack_first_line(first_line)
        if command == uri == version == b"":
            raise ParsingError("Start line is invalid")
        self.request_uri = uri.decode("latin-1")
        self.command = command.decode("latin-1")
        self.version = version = version.decode("latin-1")
        (self.proxy_scheme, self.proxy_netloc, self.path, self.query,
         self.fragment) = split_uri(uri)
        self.url_scheme = self.adj.url_scheme
        connection = headers.get("CONNECTION", "").lower()

        if version == "1.0" and connection != "keep-alive":
            self.connection_close = True
        if version == "1.1":
            # Popped: the body reaches the application de-chunked.
            transfer_encoding = headers.pop("TRANSFER_ENCODING", "")
            if transfer_encoding:
                self._transfer_encoding(transfer_encoding)
            self.expect_continue = headers.get("EXPECT", "").lower() == "100-continue"
            if connection == "close":
                self.connection_close = True

        if not self.chunked:
            length = headers.get("CONTENT_LENGTH", "0")
            if not ONLY_DIGIT_RE.match(length.encode("latin-1")):
                raise ParsingError("Content-Length is invalid")
            self.content_length = length = int(length)
            if length > 0:
                self.body_rcv = FixedStreamReceiver(
                    length, OverflowableBuffer(self.adj.inbuf_overflow))

    def _transfer_encoding(self, value: str) -> None:
        # Only "chunked" is supported, and then last (RFC 9112 6.1). The
        # whitespace stripped is RFC 9110's only: a bare strip() would let
        # "\x85chunked" pass for "chunked".
        codings = [coding.strip(" \t").lower() for coding in value.split(",") if coding]
        for coding in codings:
            if coding != "chunked":
                raise TransferEncodingNotImplemented(_NOT_SUPPORTED)
        if codings:  # every one is "chunked" (any other was refused above)
            self.chunked = True
            self.body_rcv = ChunkedReceiver(OverflowableBuffer(self.adj.inbuf_overflow))


class _Strict:
    """The RFC 9112 refusals, over either parser (see the module's docstring)."""

    def received(self, data: bytes) -> int:
        if self.body_rcv is None and not self.completed:  # type: ignore[attr-defined]
            pending = self.header_plus + data  # type: ignore[attr-defined]
            if find_double_newline(pending) < 0 and b"\n\n" in pending.lstrip():
                self._refuse("bare LF line endings: HTTP requires CRLF")
                return len(data)
        return super().received(data)  # type: ignore[misc]

    def parse_header(self, header_plus: bytes) -> None:
        lowered = b"\r\n" + header_plus.lower()
        if b"\r\ncontent-length:" in lowered and b"\r\ntransfer-encoding:" in lowered:
            raise ParsingError("both Content-Length and Transfer-Encoding")
        super().parse_header(header_plus)  # type: ignore[misc]
        # Only HTTP/1.1 pops the field (it framed the body): left here, it was ignored.
        if "TRANSFER_ENCODING" in self.headers:  # type: ignore[attr-defined]
            raise ParsingError(_TE_NOT_1_1)

    def _refuse(self, reason: str) -> None:
        # As waitress does for over-long headers: a minimal request line for
        # the error response, then an error that closes the connection.
        super().parse_header(b"GET / HTTP/1.0\r\n")  # type: ignore[misc]
        self.error = BadRequest(reason)
        self.completed = True


class StrictRequestParser(_Strict, FastRequestParser):
    """The fast path's parser."""


class StrictStockParser(_Strict, HTTPRequestParser):
    """waitress' own parser, with the refusals (``fast_path = off``)."""
