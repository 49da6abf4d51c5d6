"""http/parser.py and http/task.py give exactly what waitress' own methods give.

Each test runs waitress' original method and ours on the same generated
input (valid and invalid) and compares everything they leave behind: the
error raised, the parser's attributes, the environ, the response bytes.

The strict parsers (``StrictRequestParser``, ``StrictStockParser``) differ from
waitress on purpose, by their refusals of smuggling framings only: the last
tests check that every difference is one of them and that each is made.
"""

from __future__ import annotations

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from waitress.adjustments import Adjustments
from waitress.parser import HTTPRequestParser, ParsingError
from waitress.task import WSGITask

from wfm_orchestrator.http.channel import LoopChannel
from wfm_orchestrator.http.parser import (
    FastRequestParser,
    StrictRequestParser,
    StrictStockParser,
)
from wfm_orchestrator.http.task import FastWSGITask

ADJ = Adjustments()

METHODS = [b"GET", b"POST", b"DELETE", b"get", b"M-SEARCH", b"", b"G\x00T"]
URIS = [b"/", b"/v1.0.0/ephemeralservice/status/a_b", b"/a/b?x=1&y=%20", b"//double/slash?q#f",
        b"/%41%2Fb%zz", b"http://host:80/p?q=1#frag", b"*", b"/p#only-fragment", b"",
        b"/sp ace", b"/caf\xc3\xa9", b"/api", b"/api/x", b"/apix"]
VERSIONS = [b" HTTP/1.1", b" HTTP/1.0", b" HTTP/2.0", b"", b" HTTP/1.x", b" http/1.1"]
NAMES = [b"Host", b"Content-Type", b"content-length", b"Content-Length", b"CONTENT-LENGTH",
         b"Transfer-Encoding", b"transfer-encoding", b"Connection", b"Expect", b"X_Under",
         b"X-Dup", b"x-dup", b"Authorization", b"Bad Name", b"", b"\xc3\xbcml", b"A" * 80,
         b"Remote-Addr", b"Content_Length"]
VALUES = [b"", b"v", b" v", b"\tv \t", b"chunked", b"gzip, chunked", b"chunked, gzip",
          b"Chunked", b" , chunked", b"\x85chunked", b"close", b"keep-alive", b"Keep-Alive",
          b"100-continue", b"100-Continue", b"12", b"0", b"-1", b"1 2", b"abc", b"a\rb",
          b"caf\xe9", b"\x7f", b"x" * 70]

header_line = st.one_of(
    st.builds(lambda n, sep, v: n + sep + v, st.sampled_from(NAMES),
              st.sampled_from([b": ", b":", b" : ", b":\t"]), st.sampled_from(VALUES)),
    st.sampled_from([b" folded continuation", b"\tfolded", b"no colon", b"bare\nlf"]),
    st.binary(max_size=20),
)
header_block = st.builds(
    lambda m, u, v, lines, lead: lead + m + b" " + u + v + b"".join(b"\r\n" + x for x in lines),
    st.sampled_from(METHODS), st.sampled_from(URIS), st.sampled_from(VERSIONS),
    st.lists(header_line, max_size=8), st.sampled_from([b"", b"\r\n", b" "]),
) | st.binary(max_size=60)

PARSER_STATE = ("first_line", "headers", "command", "version", "request_uri", "path", "query",
                "fragment", "proxy_scheme", "proxy_netloc", "url_scheme", "connection_close",
                "chunked", "content_length", "expect_continue")


def _parse(cls, header_plus: bytes):
    parser = cls(ADJ)
    try:
        parser.parse_header(header_plus)
        error = None
    except Exception as e:  # noqa: BLE001 - the errors are what is compared
        error = (type(e), e.args)
    state = {name: getattr(parser, name, None) for name in PARSER_STATE}
    state["body"] = type(parser.body_rcv).__name__
    return error, state, parser


@settings(max_examples=1500, deadline=None)
@given(header_block)
def test_parse_header_matches_waitress(header_plus):
    expected = _parse(HTTPRequestParser, header_plus)[:2]
    assert _parse(FastRequestParser, header_plus)[:2] == expected


@pytest.mark.parametrize("header_plus", [
    b"POST /v1.0.0/ephemeralservice/reserve HTTP/1.1\r\nHost: h\r\n"
    b"Content-Type: application/json\r\nContent-Length: 150",
    b"GET / HTTP/1.1\r\nX-Dup: a\r\nx-dup: b\r\nX_Dup: c",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked",
    b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 2",
    b"GET / HTTP/1.1\r\nExpect: 100-continue\r\nConnection: close",
])
def test_parse_header_matches_waitress_on_requests_we_serve(header_plus):
    expected = _parse(HTTPRequestParser, header_plus)[:2]
    assert expected[0] is None or b"gzip" in header_plus
    assert _parse(FastRequestParser, header_plus)[:2] == expected


class _Server:
    server_name = "orchestrator.example"
    effective_port = 8080
    application = None

    def __init__(self, adj: Adjustments):
        self.adj = adj


class _Channel:
    addr = ("10.0.0.7", 41234)

    def __init__(self, adj: Adjustments):
        self.server = _Server(adj)

    def check_client_disconnected(self) -> bool:
        return False


def _request(header_plus: bytes):
    error, _, parser = _parse(HTTPRequestParser, header_plus)
    return None if error else parser


def _environ(cls, channel, request) -> dict:
    environ = cls(channel, request).get_environment()
    # A body stream per call: compared by kind.
    return {**environ, "wsgi.input": type(environ["wsgi.input"]).__name__}


@settings(max_examples=800, deadline=None)
@given(header_block, st.sampled_from(["", "/api"]), st.integers(1, 3))
def test_environ_matches_waitress(header_plus, url_prefix, requests):
    request = _request(header_plus)
    if request is None:
        return
    channel = _Channel(Adjustments(ident="wfm-orchestrator", url_prefix=url_prefix))
    expected = _environ(WSGITask, channel, request)
    for _ in range(requests):  # the connection's part is built once, then copied
        assert _environ(FastWSGITask, channel, request) == expected
    assert expected["wsgi.errors"] is sys.stderr


RESPONSE_NAMES = ["content-type", "Content-Type", "content-length", "Content-Length",
                  "CONTENT-LENGTH", "date", "Date", "server", "Server", "x-a", "X-A",
                  "set-cookie", "www-authenticate", "x-b-c-"]
STATUSES = ["200 OK", "201 Created", "204 No Content", "304 Not Modified",
            "101 Switching Protocols", "404 Not Found", "500 Internal Server Error"]
response_headers = st.lists(st.tuples(st.sampled_from(RESPONSE_NAMES),
                                      st.sampled_from(["", "12", "0", "v", "a, b", "x" * 10])),
                            max_size=6)


def _respond(cls, channel, request, status, headers, length, ident):
    task = cls(channel, request)
    task.status, task.response_headers, task.content_length = status, list(headers), length
    task.start_time = 1_700_000_000.25
    try:
        out = task.build_response_header()
    except AssertionError as e:
        out = ("AssertionError", e.args)
    return out, task.response_headers, task.close_on_finish, task.chunked_response


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(["1.0", "1.1"]),
       st.sampled_from([None, "close", "keep-alive", "Keep-Alive", "upgrade"]),
       st.sampled_from(STATUSES), response_headers, st.sampled_from([None, 0, 17]),
       st.sampled_from(["wfm-orchestrator", ""]))
def test_response_header_matches_waitress(version, connection, status, headers, length, ident):
    head = f"GET / HTTP/{version}\r\nHost: h".encode()
    if connection is not None:
        head += f"\r\nConnection: {connection}".encode()
    request = _request(head)
    channel = _Channel(Adjustments(ident=ident))
    expected = _respond(WSGITask, channel, request, status, headers, length, ident)
    assert _respond(FastWSGITask, channel, request, status, headers, length, ident) == expected


def test_the_server_uses_them():
    assert issubclass(LoopChannel.parser_class, FastRequestParser)
    assert LoopChannel.task_class is FastWSGITask


# --- the strict parsers: waitress' results but for the deliberate refusals -------------

STRICT = (StrictRequestParser, StrictStockParser)
CL_TE = "both Content-Length and Transfer-Encoding"
TE_NOT_1_1 = ("Transfer-Encoding in a request that is not HTTP/1.1: "
              "send HTTP/1.1 for a chunked body, or Content-Length alone")


def _te_framing_ignored(waitress_result) -> bool:
    """waitress accepted the header but framed the body without its Transfer-Encoding."""
    error, state = waitress_result
    return error is None and "TRANSFER_ENCODING" in state["headers"]


@settings(max_examples=800, deadline=None)
@given(header_block)
def test_strict_parsers_differ_from_waitress_only_by_their_refusals(header_plus):
    expected = _parse(HTTPRequestParser, header_plus)[:2]
    lowered = b"\r\n" + header_plus.lower()
    both = b"\r\ncontent-length:" in lowered and b"\r\ntransfer-encoding:" in lowered
    for cls in STRICT:
        error, state, _ = _parse(cls, header_plus)
        if both:
            assert error == (ParsingError, (CL_TE,))
        elif _te_framing_ignored(expected):
            assert expected[1]["version"] != "1.1"
            assert error == (ParsingError, (TE_NOT_1_1,))
        else:
            assert (error, state) == expected


@pytest.mark.parametrize("cls", STRICT)
@pytest.mark.parametrize("header_plus", [
    b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked",
    b"POST / HTTP/1.0\r\nConnection: keep-alive\r\ntransfer-encoding: chunked",
    b"POST / HTTP/1.0\r\nTransfer-Encoding: gzip",
    b"POST / HTTP/1.0\r\nTransfer-Encoding:",
    b"POST / HTTP/2.0\r\nTransfer-Encoding: chunked",
    b"POST /\r\nTransfer-Encoding: chunked",
])
def test_transfer_encoding_outside_http_1_1_is_refused(cls, header_plus):
    """RFC 9112 6.1: waitress frames these by Content-Length, ignoring the field; we refuse."""
    assert _parse(HTTPRequestParser, header_plus)[0] is None  # the deliberate difference
    error, _, _ = _parse(cls, header_plus)
    assert error == (ParsingError, (TE_NOT_1_1,))


@pytest.mark.parametrize("cls", STRICT)
def test_the_refusal_answers_400_and_closes(cls):
    """Through received(), as the channel feeds it: a completed request with a 400 error."""
    parser = cls(ADJ)
    data = b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    parser.received(data)
    assert parser.completed
    assert parser.error is not None and parser.error.code == 400
    assert "HTTP/1.1" in parser.error.body


@pytest.mark.parametrize("cls", STRICT)
@pytest.mark.parametrize("header_plus", [
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked",
    b"POST / HTTP/1.0\r\nContent-Length: 2",
    b"GET / HTTP/1.0\r\nX-Transfer-Encoding: chunked",
])
def test_requests_we_serve_are_not_refused(cls, header_plus):
    assert _parse(cls, header_plus)[:2] == _parse(HTTPRequestParser, header_plus)[:2]
