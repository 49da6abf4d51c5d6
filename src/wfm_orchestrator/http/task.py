"""Building the WSGI environ and the response head: waitress' task made faster.

waitress builds every WSGI environ and response header in Python; on one
core that was a good part of what a request cost. ``FastWSGITask`` gives the
same results (the same environ and bytes, checked against waitress' own
methods by tests/unit/test_waitress_fast.py) with fewer steps:

* the parts of the environ that are the same for every request of a
  connection are built once per connection and copied;
* the capitalized names of response headers are kept in a small table;
* the Date header is formatted once a second, not once a response (in this
  class: waitress' module function is left alone).

On the event loop it also puts the loop's ``LoopRequest`` in the environ
(api/serving.py's ``LOOP`` key).
"""

from __future__ import annotations

import functools
import sys
from operator import itemgetter
from typing import Any

from waitress.buffers import ReadOnlyFileBasedBuffer
from waitress.task import ErrorTask, WSGITask, build_http_date, rename_headers

from ..api.serving import LOOP

_TABLE_SIZE = 512
_NAME_CACHED_UP_TO = 64  # bytes; longer names are not kept
_response_names: dict[str, str] = {}
_by_name = itemgetter(0)


@functools.lru_cache(maxsize=4)
def _http_date(second: int) -> str:
    return build_http_date(second)


def _response_name(name: str) -> str:
    """"content-type" -> "Content-Type", as waitress writes it."""
    canonical = _response_names.get(name)
    if canonical is None:
        canonical = "-".join([part.capitalize() for part in name.split("-")])
        if len(_response_names) < _TABLE_SIZE and len(name) <= _NAME_CACHED_UP_TO:
            _response_names[name] = canonical
    return canonical


class FastWSGITask(WSGITask):
    # Set by waitress' __init__ (untyped): declared for mypy.
    environ: dict[str, Any] | None
    response_headers: list[tuple[str, str]]

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
        loop_request = getattr(channel, "loop_request", None)
        if loop_request is not None:
            environ[LOOP] = loop_request
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
            # waitress formats it anew for every response: once a second is enough.
            headers.append(("Date", _http_date(int(self.start_time))))

        # A stable sort: same-named headers keep their order (RFC 9110 5.3).
        lines = [f"HTTP/{version} {self.status}"]
        lines += [f"{name}: {value}" for name, value in sorted(headers, key=_by_name)]
        lines.append("\r\n")
        return "\r\n".join(lines).encode("latin-1")


class ClosingErrorTask(ErrorTask):
    """waitress' error answer, saying once that it closes the connection.

    An error always closes; to an HTTP/1.0 request with ``Connection: keep-alive``,
    waitress 3.0.2 answers both ``Connection: close`` and ``Connection: Keep-Alive``,
    which a proxy may read either way (it might keep the connection for the next client).
    """

    def build_response_header(self) -> bytes:
        return super().build_response_header().replace(b"Connection: Keep-Alive\r\n", b"")
