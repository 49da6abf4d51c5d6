"""waitress' per-request Python, rewritten to do the same work in less time.

waitress parses every request header and builds every WSGI environ and
response header in Python; on one core that was a fifth of what a request
cost, more than our own handlers. These subclasses give the same results
(the same attributes, environ, bytes and errors, checked against waitress'
own methods by tests/unit/test_waitress_fast.py) with fewer steps:

* header names repeat from request to request (Host, Content-Type, ...):
  their WSGI key is computed once and kept in a small table, as are the
  capitalized names of response headers;
* the parts of the environ that are the same for every request of a
  connection are built once per connection and copied;
* the request line's tail (Transfer-Encoding, Expect, Content-Length) is
  decided with the same rules but without building lists for the common
  case of no Transfer-Encoding.

Written for waitress 3.0 (pyproject.toml pins it); the tests fail when a
new waitress behaves differently.
"""

from __future__ import annotations

import sys
from operator import itemgetter
from typing import Any

import waitress.task
from waitress.buffers import OverflowableBuffer, ReadOnlyFileBasedBuffer
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
from waitress.task import WSGITask, rename_headers

# Bounded: names a client invents are parsed the long way once the table is full.
_TABLE_SIZE = 512
_NAME_CACHED_UP_TO = 64  # bytes; longer names are not kept
_request_keys: dict[bytes, str] = {}
_response_names: dict[str, str] = {}
_by_name = itemgetter(0)
_NOT_SUPPORTED = "Transfer-Encoding requested is not supported."


def _request_key(name: bytes) -> str:
    """b"Content-Type" -> "CONTENT_TYPE" (waitress' key); "" for a name to drop."""
    key = _request_keys.get(name)
    if key is None:
        # waitress drops fields whose name has "_": X_Forwarded could pose as X-Forwarded.
        key = "" if b"_" in name else name.upper().replace(b"-", b"_").decode("latin-1")
        if len(_request_keys) < _TABLE_SIZE and len(name) <= _NAME_CACHED_UP_TO:
            _request_keys[name] = key
    return key


def _response_name(name: str) -> str:
    """"content-type" -> "Content-Type", as waitress writes it."""
    canonical = _response_names.get(name)
    if canonical is None:
        canonical = "-".join([part.capitalize() for part in name.split("-")])
        if len(_response_names) < _TABLE_SIZE and len(name) <= _NAME_CACHED_UP_TO:
            _response_names[name] = canonical
    return canonical


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


class FastWSGITask(WSGITask):
    def get_environment(self) -> dict[str, Any]:
        environ = self.environ
        if environ is not None:
            return environ
        request = self.request
        channel = self.channel
        base = getattr(channel, "_environ_base", None)
        if base is None:
            base = channel._environ_base = self._connection_environ()
        path = request.path
        if path.startswith("/"):
            path = "/" + path.lstrip("/")  # "//a" is "/a"
        url_prefix = base["SCRIPT_NAME"]
        if url_prefix:
            if path == url_prefix:
                path = ""
            elif path.startswith(url_prefix + "/"):
                path = path[len(url_prefix):]

        environ = base.copy()
        environ["REQUEST_METHOD"] = request.command.upper()
        environ["SERVER_PROTOCOL"] = "HTTP/" + self.version
        environ["PATH_INFO"] = path
        environ["REQUEST_URI"] = request.request_uri
        environ["QUERY_STRING"] = request.query
        environ["wsgi.url_scheme"] = request.url_scheme
        environ["wsgi.errors"] = sys.stderr
        environ["wsgi.input"] = request.get_body_stream()
        for key, value in request.headers.items():
            key = rename_headers.get(key) or "HTTP_" + key
            if key not in environ:
                environ[key] = value
        environ["waitress.client_disconnected"] = channel.check_client_disconnected
        self.environ = environ
        return environ

    def _connection_environ(self) -> dict[str, Any]:
        """What every request of this connection has in its environ."""
        channel = self.channel
        server = channel.server
        host, port = channel.addr[0], channel.addr[1]
        return {
            "REMOTE_ADDR": host,
            "REMOTE_HOST": host,  # as waitress: no reverse DNS lookup
            "REMOTE_PORT": str(port),
            "SERVER_PORT": str(server.effective_port),
            "SERVER_NAME": server.server_name,
            "SERVER_SOFTWARE": server.adj.ident,
            "SCRIPT_NAME": server.adj.url_prefix,
            "wsgi.version": (1, 0),
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "wsgi.file_wrapper": ReadOnlyFileBasedBuffer,
            "wsgi.input_terminated": True,
        }

    def build_response_header(self) -> bytes:
        version = self.version
        connection = self.request.headers.get("CONNECTION", "").lower()
        has_body = self.has_body
        headers = []
        content_length = date = server = None
        for name, value in self.response_headers:
            name = _response_name(name)
            if name == "Content-Length":
                if not has_body:
                    continue  # 1xx, 204 and 304 have none (RFC 9110 8.6)
                content_length = value
            elif name == "Date":
                date = value
            elif name == "Server":
                server = value
            headers.append((name, value))
        self.response_headers = headers

        if content_length is None and self.content_length is not None and has_body:
            content_length = str(self.content_length)
            headers.append(("Content-Length", content_length))
        if version == "1.0":
            if connection == "keep-alive" and content_length:
                headers.append(("Connection", "Keep-Alive"))
            else:
                self.set_close_on_finish()
        elif version == "1.1":
            if connection == "close":
                self.set_close_on_finish()
            if not content_length:
                if has_body:
                    headers.append(("Transfer-Encoding", "chunked"))
                    self.chunked_response = True
                if not self.close_on_finish:
                    self.set_close_on_finish()
        else:
            raise AssertionError("neither HTTP/1.0 or HTTP/1.1")

        ident = self.channel.server.adj.ident
        if not server:
            if ident:
                headers.append(("Server", ident))
        else:
            headers.append(("Via", ident or "waitress"))
        if not date:
            # Looked up at each call: server.py replaces it with a cached one.
            headers.append(("Date", waitress.task.build_http_date(self.start_time)))

        # A stable sort: same-named headers keep their order (RFC 9110 5.3).
        lines = [f"HTTP/{version} {self.status}"]
        lines += [f"{name}: {value}" for name, value in sorted(headers, key=_by_name)]
        lines.append("\r\n")
        return "\r\n".join(lines).encode("latin-1")
